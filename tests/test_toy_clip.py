"""The shapes world's tiny CLIP: a normal model directory that learns the world's labels and serves the scorer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spr.errors import UserError
from spr.toy.clip_recipe import (
    ClipRecipeConfig,
    TinyClipShape,
    build_clip,
    contrastive_loss,
    exact_crop,
    train_clip,
)
from spr.toy.world import PRESETS, make_scene

EASY = PRESETS["easy"]
SHORT = ClipRecipeConfig(scenes=120, steps=80, batch_size=48, eval_scenes=30, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "model"
    return out, train_clip(out, EASY, world_seed=0, config=SHORT, progress=False)


def test_loss_treats_views_with_the_same_caption_as_positives():
    captions = torch.eye(3)
    views = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])  # two views of caption 0
    right = contrastive_loss(views, captions, torch.tensor([0, 0, 1, 2]), torch.tensor(20.0))
    wrong = contrastive_loss(views, captions, torch.tensor([1, 0, 2, 0]), torch.tensor(20.0))
    # the optimum: each view certain of its caption; caption 0 shares its probability between its two views
    assert right == pytest.approx(math.log(2) / 6, abs=1e-3)
    assert wrong > 5


def test_built_model_is_a_normal_clip_directory(tmp_path):
    from transformers import AutoModel, AutoProcessor

    from spr.models.clip import load_clip

    out = build_clip(tmp_path / "m", EASY, TinyClipShape(hidden_size=32, layers=1, heads=2))
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert type(AutoModel.from_pretrained(out, local_files_only=True)).__name__ == "CLIPModel"
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    scene = make_scene(EASY, 0)
    batch = processor(
        text=["a red circle", "two green squares"], images=[scene.image], padding=True, return_tensors="pt"
    )
    assert batch["pixel_values"].shape[-1] == 64
    encoder = load_clip(out)
    # every word of the world is one token, so captions stay short
    assert encoder.count_tokens("a yellow triangle") == 5
    assert encoder.encode_images([scene.image.crop(exact_crop(scene.objects[0].box))]).shape == (1, 64)


@pytest.mark.slow
def test_short_training_beats_chance_clearly_and_records_itself(trained):
    out, record = trained
    before, after = record["accuracy_before"], record["accuracy_after"]
    chance = after["chance"]
    assert chance == pytest.approx(1 / 12)
    assert after["crop"] > max(3 * chance, before["crop"] + 0.2), record
    assert after["crop colour"] > 0.8
    saved = json.loads((out / "training.json").read_text())
    assert saved["accuracy_after"] == after and len(saved["loss_curve"]) == SHORT.steps
    assert saved["loss_curve"][-1] < saved["loss_curve"][0]


@pytest.mark.slow
def test_the_clip_scorer_prefers_the_right_label(trained):
    from spr.data.records import Region
    from spr.scoring.semantic import ClipScorer, SemanticItem

    out, _ = trained
    scorer = ClipScorer(str(out))
    wins = total = 0
    for k in range(10):
        scene = make_scene(EASY, f"0:test:{k}")
        for o in scene.objects[:3]:
            region = Region(id=f"{k}", image="", image_size=[112, 112], region_box=list(o.box), objects=[])
            state = scorer.prepare(region, scene.image, None)
            wrong_colour = next(c for c in EASY.colours if c != o.colour)
            right, wrong = scorer.score(state, [SemanticItem(f"a {o.colour} {o.shape}"),
                                                SemanticItem(f"a {wrong_colour} {o.shape}")])  # fmt: skip
            wins += right > wrong
            total += 1
    assert wins / total > 0.8


@pytest.mark.slow
def test_rerun_reuses_the_model_and_other_settings_stop(trained, tmp_path):
    out, record = trained
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert train_clip(out, EASY, world_seed=0, config=SHORT, progress=False) == record
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings"):
        train_clip(out, EASY, world_seed=1, config=SHORT, progress=False)
    interrupted, small = (
        tmp_path / "interrupted",
        ClipRecipeConfig(scenes=4, steps=2, batch_size=8, eval_scenes=2),
    )
    train_clip(interrupted, EASY, config=small, progress=False)
    (interrupted / "training.json").unlink()  # killed before its last file
    record = train_clip(interrupted, EASY, config=small, progress=False)
    assert len(record["loss_curve"]) == 2  # started clean
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(UserError, match="no settings header"):  # not a directory this recipe wrote
        train_clip(tmp_path / "junk", EASY, config=SHORT, progress=False)
