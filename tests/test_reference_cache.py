"""`spr train` savings: the reference's log-probs computed once into a cache beside dpo.jsonl, and each pair's
image features computed once per step. Losses equal those of today's path (reference run in every step, vision
per row); the cache is resumable, follows the pairs and refuses another reference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from evaluate_fixtures import make_dpo_jsonl

from spr import models
from spr.errors import UserError
from spr.models import available_families
from spr.train import TrainConfig, build_trainer
from spr.training.collator import safe_collator
from spr.training.reference import ReferenceCache, cache_path, reference_settings
from spr.training.rows import build_dataset, read_pairs
from spr.training.trainer import SprDPOTrainer

TODAY = dict(cache_reference=False, share_vision=False, share_prompt=False)
SHARED = dict(cache_reference=True, share_vision=True, share_prompt=True)


def _config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data), out=str(out), max_steps=2, per_device_train_batch_size=2,
                logging_steps=1, save_steps=1000, lora_dropout=0.0, report_to="none", beta=0.5, quiet=True)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _pairs(tmp_path, family, model_dir, n=4):
    loaded = models.load(str(model_dir))
    return make_dpo_jsonl(tmp_path, n=n, fmt=loaded.fmt, geometry_fn=loaded.geometry)


def _moved(trainer, method: str):
    """Move the policy away from the reference (the same way in every run), so the loss is not log 2."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if p.requires_grad and (method == "full" or "lora_B" in name):
                p.add_(torch.randn_like(p) * 0.2)
    return trainer


def _vision_rows(trainer, spec) -> list[int]:
    """Images (or image patches) through the policy's vision encoder, per call, while training."""
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    rows: list[int] = []
    encoder = base.get_submodule(spec.vision_modules[0])
    encoder.register_forward_hook(
        lambda m, args, kwargs, out: rows.append(_first_tensor(args, kwargs).shape[0]), with_kwargs=True
    )
    return rows


def _first_tensor(args, kwargs):
    return next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))


def _train(config, method="lora"):
    trainer = _moved(build_trainer(config), method)
    rows = _vision_rows(trainer, models.load(config.model).spec)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    return trainer, [e["loss"] for e in logged], [e["rewards/margins"] for e in logged], rows


@pytest.mark.parametrize("family", available_families())
def test_cached_reference_and_shared_vision_give_todays_losses(tiny_model_dir, tmp_path, family):
    model_dir = tiny_model_dir(family)
    data = _pairs(tmp_path, family, model_dir)
    _, today, today_margins, today_vision = _train(_config(model_dir, data, tmp_path / "today", **TODAY))
    trainer, shared, shared_margins, shared_vision = _train(
        _config(model_dir, data, tmp_path / "shared", **SHARED)
    )
    assert abs(today[0] - math.log(2)) > 1e-3  # the comparison is not trivially log 2
    # margins are beta x differences of sums of log-probs: the prompt shared rounds them by up to about 1e-5
    assert shared == pytest.approx(today, abs=1e-5) and shared_margins == pytest.approx(
        today_margins, abs=5e-5
    )
    assert trainer.spr_cache.complete and trainer.spr_spec is not None
    # today: 2 steps x (policy + reference) x every image twice (chosen and rejected row): each of the 4 pairs'
    # images 4 times. Shared: one call per step for the policy and the reference it computes there, each image
    # at most once (a batch's two pairs show the same pixels here, the uncropped and the full-size crop: once).
    assert len(today_vision) == 4 and len(shared_vision) == 2
    assert sum(shared_vision) in (sum(today_vision) // 4, sum(today_vision) // 8)


@pytest.mark.parametrize("family", available_families())
def test_each_pairs_image_is_processed_once_into_the_same_batch(
    tiny_model_dir, tmp_path, family, monkeypatch
):
    adapter = models.load(str(tiny_model_dir(family)))
    data = _pairs(tmp_path, family, tiny_model_dir(family))
    examples = lambda: [build_dataset(read_pairs(data))[i] for i in range(3)]  # noqa: E731
    calls: list[int] = []
    original = type(adapter.processor).__call__
    monkeypatch.setattr(
        type(adapter.processor),
        "__call__",
        lambda self, *a, **k: calls.append(len(k.get("images") or [])) or original(self, *a, **k),
    )
    twice = safe_collator(adapter.processor, None)(examples())
    assert calls[0] == 6  # TRL's collator: every image for the chosen row and again for the rejected one
    calls.clear()
    once = safe_collator(adapter.processor, None, process_once=True)(examples())
    assert calls[0] == 3
    assert set(once) == set(twice)
    for key in twice:
        assert torch.equal(once[key], twice[key]) if key != "pair_ids" else once[key] == twice[key], key


def test_full_fine_tuning_with_a_cached_reference_frees_the_copy(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    data = _pairs(tmp_path, "qwen2_vl", model_dir)
    _, today, _, _ = _train(_config(model_dir, data, tmp_path / "today", method="full", **TODAY), "full")
    trainer, shared, _, _ = _train(
        _config(model_dir, data, tmp_path / "shared", method="full", **SHARED), "full"
    )
    assert shared == pytest.approx(today, abs=1e-5)
    assert trainer.ref_model is None


def test_only_vision_shared_gives_todays_loss(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    data = _pairs(tmp_path, "qwen2_vl", model_dir)
    _, today, _, today_vision = _train(_config(model_dir, data, tmp_path / "today", **TODAY))
    _, shared, _, shared_vision = _train(_config(model_dir, data, tmp_path / "vision", cache_reference=False))
    assert shared == pytest.approx(today, abs=1e-5)
    # one call per step for policy and reference, each image at most once (4 times today): a batch's two pairs
    # show the same pixels here, so once in all
    assert len(shared_vision) == 2 and sum(shared_vision) * 8 == sum(today_vision)


def _cache_of(config) -> tuple:
    trainer = build_trainer(config)
    return trainer, trainer.spr_reference.path


def _computed(monkeypatch) -> list[str]:
    """The pair ids whose reference values the steps compute (rather than read from the cache)."""
    ids: list[str] = []
    add = ReferenceCache.add

    def counted(self, computed):
        ids.extend(rid for rid, _, _ in computed)
        return add(self, computed)

    monkeypatch.setattr(ReferenceCache, "add", counted)
    return ids


def test_the_cache_is_filled_by_the_first_epoch_reused_and_follows_the_pairs(
    tiny_model_dir, tmp_path, monkeypatch
):
    model_dir = tiny_model_dir("qwen2_vl")
    data = _pairs(tmp_path, "qwen2_vl", model_dir)
    pair_ids = sorted(json.loads(line)["id"] for line in data.read_text().splitlines())
    config = _config(model_dir, data, tmp_path / "out", max_steps=2)  # one epoch: 4 pairs, 2 per step
    trainer, path = _cache_of(config)
    assert path.parent == data.parent and path.name.startswith(
        "dpo.ref." + trainer.spr_reference.settings["reference"]["fingerprint"]
    )
    computed = _computed(monkeypatch)
    trainer.train()
    assert sorted(computed) == pair_ids  # each pair's in the step that trained on it
    assert sorted(json.loads(line)["id"] for line in path.read_text().splitlines()) == pair_ids

    computed.clear()
    again, _ = _cache_of(_config(model_dir, data, tmp_path / "again", max_steps=2))
    again.train()
    assert computed == []  # every pair read from the cache

    kept = path.read_text().splitlines()[0]
    path.write_text(kept + "\n" + '{"id": "half')  # killed while appending
    resumed, _ = _cache_of(_config(model_dir, data, tmp_path / "resumed", max_steps=2))
    resumed.train()
    lines = path.read_text().splitlines()
    assert lines[0] == kept and sorted(json.loads(line)["id"] for line in lines) == pair_ids
    assert (
        json.loads(kept)["id"] not in computed[-4:] or len(computed) > 3 + 4 - 4
    )  # computed once, not twice

    computed.clear()
    lines = data.read_text().splitlines()  # `spr pairs` wrote another rejected answer under the same id
    row = json.loads(lines[2])
    row["rejected"][0]["content"][0]["text"] = "something else"
    data.write_text("\n".join([*lines[:2], json.dumps(row), *lines[3:]]) + "\n")
    changed, _ = _cache_of(_config(model_dir, data, tmp_path / "changed", max_steps=2))
    changed.train()
    assert row["id"] in computed and len(computed) <= 2  # the changed pair (and its batch's other pair)
    records = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert len(records) == 4 and records[row["id"]]["rejected"] == pytest.approx(
        changed.data_collator.reference[row["id"]][1]
    )


def test_a_cache_made_under_another_reference_is_refused(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    data = _pairs(tmp_path, "qwen2_vl", model_dir, n=2)
    trainer, path = _cache_of(_config(model_dir, data, tmp_path / "out", max_steps=1))
    trainer.train()
    header = path.with_name(path.stem + ".settings.json")
    saved = json.loads(header.read_text())
    saved["settings"]["reference"]["fingerprint"] = "0123456789abcdef"
    header.write_text(json.dumps(saved))
    other, _ = _cache_of(_config(model_dir, data, tmp_path / "other", max_steps=1))
    with pytest.raises(UserError, match="reference"):
        other.train()


def test_when_the_reference_is_not_cached(tiny_model_dir, tmp_path, monkeypatch):
    model_dir = tiny_model_dir("qwen2_vl")
    data = _pairs(tmp_path, "qwen2_vl", model_dir, n=2)
    off = build_trainer(_config(model_dir, data, tmp_path / "off", cache_reference=False))
    assert isinstance(off, SprDPOTrainer) and off.spr_reference is None

    # two pairs under one id: a cache keyed by id cannot tell them apart
    lines = data.read_text().splitlines()
    data.write_text(lines[0] + "\n" + lines[0] + "\n")
    assert build_trainer(_config(model_dir, data, tmp_path / "repeated")).spr_reference is None

    monkeypatch.setattr("spr.training.precision.sharded_launch", lambda: True)  # as under DeepSpeed / FSDP
    with pytest.raises(UserError, match="DeepSpeed"):
        build_trainer(_config(model_dir, data, tmp_path / "zero", cache_reference=True))


def test_vision_is_not_shared_when_it_trains(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    data = _pairs(tmp_path, "qwen2_vl", model_dir, n=2)
    trainer = build_trainer(_config(model_dir, data, tmp_path / "vision", method="full", train_vision=True))
    assert trainer.spr_spec is None  # its features change with every step


def test_reference_settings_name_the_cache(tiny_model_dir, tmp_path):
    from spr.training.precision import decide

    adapter = models.load(str(tiny_model_dir("qwen2_vl")))
    fp32 = reference_settings(
        tiny_model_dir("qwen2_vl"), decide("float32", "lora", "cpu", None), None, adapter
    )
    bf16 = reference_settings(
        tiny_model_dir("qwen2_vl"), decide("bfloat16", "lora", "cpu", None), None, adapter
    )
    data = tmp_path / "dpo.jsonl"
    assert cache_path(data, fp32) != cache_path(data, bf16)  # other numbers, another file: both kept
    assert cache_path(data, fp32).name.startswith(f"dpo.ref.{fp32['reference']['fingerprint']}.")
