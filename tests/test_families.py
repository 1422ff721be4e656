"""The families researchers ground with now (Qwen3-VL, Qwen3.5, GLM-4.xV): their geometry, their thinking, and the
pixel budget that generate, train and eval share. Every other stage runs on them through the per-family tests
(test_models, test_generate, test_shared_prefill, test_train, test_reference_cache, test_grpo, test_merge,
test_evaluate_predict, test_pipeline)."""

from __future__ import annotations

import json

import pytest
from evaluate_fixtures import make_dpo_jsonl, make_rec_jsonl
from PIL import Image
from scoring_fixtures import draw_image, fixture_region

from spr import formats, models
from spr.cli import main
from spr.data.jsonl import read_records, write_jsonl
from spr.data.records import Candidate
from spr.formats.qwen2_5_vl import smart_resize

NEW = ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "glm4v", "glm4v_moe", "glm46v"]


def test_the_new_families_are_registered_with_their_transformers_classes():
    import transformers

    for name in NEW:
        spec = models.get_family(name)
        assert spec.model_types == (name,)
        assert getattr(transformers, spec.model_class) and getattr(transformers, spec.processor_class)
        # transformers' own mapping agrees: the model_type's image-text-to-text class is the spec's
        mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        assert mapping[name] == spec.model_class
    assert {models.get_family(n).default_fmt for n in NEW} == {"qwen3_vl", "glm4v"}


def test_the_family_registry_imports_nothing_of_the_tiny_builders():
    """One direction only: spr.models.tiny reads the specs; the specs do not know the tiny side (issue 25)."""
    import ast
    from pathlib import Path

    from spr.models import families, tiny

    tree = ast.parse(Path(families.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import) for a in n.names
    ]
    assert not any("tiny" in name for name in imported)
    assert all(tiny.BUILDERS.get(n) or models.get_family(n).tiny for n in models.available_families())


@pytest.mark.parametrize("family,px", [("qwen3_vl", 32), ("qwen3_5_moe", 32), ("glm4v", 28), ("glm46v", 28)])
def test_a_visual_token_covers_the_checkpoints_own_patch_times_merge(tiny_model_dir, family, px):
    """Qwen3-VL's patch 16 comes from the saved preprocessor config, not the shared class's default of 14."""
    adapter = models.load(tiny_model_dir(family))
    budget = adapter.pixel_budget()
    config = json.loads((tiny_model_dir(family) / "processor_config.json").read_text())["image_processor"]
    assert config["patch_size"] * config["merge_size"] == px
    assert config["size"] == {"shortest_edge": budget["min_pixels"], "longest_edge": budget["max_pixels"]}
    inputs = adapter.build_inputs([Image.new("RGB", (640, 480))], ["hi"])
    _, gh, gw = inputs["image_grid_thw"][0].tolist()
    if family.startswith("glm"):  # GLM's resize counts an image's two temporal patches against the budget
        from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize as glm_resize

        h, w = glm_resize(2, 480, 640, temporal_factor=2, factor=px, **budget)
    else:
        h, w = smart_resize(480, 640, factor=px, **budget)
    assert (gw * px // 2, gh * px // 2) == (w, h)
    assert int((inputs["input_ids"] == adapter.processor.image_token_id).sum()) == (w // px) * (h // px)
    assert adapter.geometry((640, 480)) == {}  # relative formats: the budget does not change the numbers


def test_qwen3_5_thinks_in_its_prompt_and_its_answer_is_read_after_the_thinking(tiny_model_dir):
    adapter = models.load(tiny_model_dir("qwen3_5"))
    assert adapter.chat_text("Where is the cup?").endswith("<|im_start|>assistant\n<think>\n")
    answer = 'The cup is left.\n</think>\n\n```json\n[{"bbox_2d": [100, 500, 200, 750], "label": "cup"}]\n```'
    ids = adapter.tokenizer.encode(answer, add_special_tokens=False) + [adapter.eos_token_id]
    text = adapter.decode(ids)
    parsed = formats.parse(text, adapter.fmt, (640, 480))
    assert parsed.problems == [] and [g.phrase for g in parsed] == ["cup"]
    assert parsed[0].box == pytest.approx((64.0, 240.0, 128.0, 360.0))
    # a conversation with that answer starts with the prompt: preference training sees prompt + answer
    full = adapter.processor.apply_chat_template(
        adapter.messages("Where is the cup?", answer=answer), tokenize=False
    )
    assert full.startswith(adapter.chat_text("Where is the cup?")) and "The cup is left.\n</think>" in full


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_vl", "glm4v"])
def test_generate_train_and_eval_refuse_data_made_under_another_budget(
    tiny_model_dir, tmp_path, capsys, family
):
    model = tiny_model_dir(family)
    default = models.load(str(model)).pixel_budget()
    budget = {"min_pixels": default["min_pixels"], "max_pixels": default["max_pixels"] // 2}
    flags = ["--max-pixels", str(budget["max_pixels"])]

    # generate records the run's budget with every candidate
    write_jsonl(tmp_path / "regions.jsonl", [fixture_region(draw_image(tmp_path / "scene.png"))])
    assert main(["generate", "--model", str(model), "--regions", str(tmp_path / "regions.jsonl"), "--out",
                 str(tmp_path / "c.jsonl"), "--samples", "1", "--max-new-tokens", "4", "--prompts", "region_box",
                 *flags]) == 0  # fmt: skip
    assert [c.pixel_budget for c in read_records(tmp_path / "c.jsonl", Candidate)] == [budget]

    # DPO rows made under that budget: train refuses them under the checkpoint's own, trains under the run's
    data = make_dpo_jsonl(tmp_path / "pairs", n=2, fmt=models.get_family(family).default_fmt)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:
        row["geometry"] = {
            "format": models.get_family(family).default_fmt,
            "pixel_budget": budget,
            "codec": {},
        }
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = ["train", "--model", str(model), "--data", str(data), "--max-steps", "1",
             "--per-device-train-batch-size", "1"]  # fmt: skip
    assert main([*train, "--out", str(tmp_path / "wrong")]) == 2
    assert f"made under pixel budget {budget}" in capsys.readouterr().err
    assert main([*train, "--out", str(tmp_path / "adapter"), *flags]) == 0

    # eval records the budget; resuming under the checkpoint's is refused
    evaluate = ["eval", "rec", "--model", str(model), "--data", str(make_rec_jsonl(tmp_path / "rec")), "--out",
                str(tmp_path / "eval"), "--max-new-tokens", "4"]  # fmt: skip
    assert main([*evaluate, *flags]) == 0
    assert main(evaluate) == 2
    assert f"max_pixels: {budget['max_pixels']} -> null" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5", "glm4v_moe"])
def test_spr_run_two_rounds(coco, tiny_model_dir, tmp_path, family):
    """Round 2 generates with round 1's merged model (a directory of the same class, processor and template)."""
    import yaml

    annotations, images = coco
    config = {
        "model": str(tiny_model_dir(family)),
        "rounds": 2,
        "regions": {"annotations": str(annotations), "images": str(images), "per_image": 1, "limit": 1},
        "generate": {"samples": 2, "max_new_tokens": 8, "prompts": "region_box"},
        "score": {"semantic": "labels"},
        "train": {"max_steps": 1, "per_device_train_batch_size": 1, "learning_rate": 1e-3},
        "eval": {"rec": {"data": str(make_rec_jsonl(tmp_path / "rec")), "max_new_tokens": 4}},
        "report": False,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 0
    merged = tmp_path / "run" / "round-1" / "model"
    assert json.loads((merged / "config.json").read_text())["model_type"] == family
    generate = yaml.safe_load((tmp_path / "run" / "round-2" / "generate.yaml").read_text())
    assert generate["model"] == str(merged)
    round2 = list(read_records(tmp_path / "run" / "round-2" / "candidates.jsonl", Candidate))
    assert round2 and {c.fmt for c in round2} == {models.get_family(family).default_fmt}
    assert (tmp_path / "run" / "round-2" / "eval" / "rec" / "predictions.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_5", "glm46v"])
def test_every_eval_task_runs(tiny_model_dir, tmp_path, family):
    """REC runs for every family in test_evaluate_predict; here the tasks that read boxes, on a thinking Qwen and
    a GLM. Captioning reads no boxes and runs the same generation path (test_evaluate_e2e; its metrics take 30 s
    to load)."""
    from evaluate_fixtures import make_flickr, make_regions

    common = ["--model", str(tiny_model_dir(family)), "--max-new-tokens", "6", "--batch-size", "4"]
    runs = {
        "grounding": ["grounding", "--data", str(make_flickr(tmp_path / "flickr"))],
        "description": ["description", "--data", str(make_regions(tmp_path / "regions"))],
    }
    for name, args in runs.items():
        out = tmp_path / "eval" / name
        assert main(["eval", *args, *common, "--out", str(out)]) == 0, name
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n"] > 0 and (out / "predictions.jsonl").exists(), name


@pytest.mark.parametrize("family", NEW)
def test_lora_with_the_default_options_wraps_linear_layers_only(family):
    """GLM-4.5V: PEFT turns gate/up/down_proj targets of glm4v_moe into its fused experts' parameters, which refuse
    LoRA dropout (the default 0.05): the family trains attention only."""
    import torch
    from peft import get_peft_model

    from spr.models.tiny import make_tiny
    from spr.train import TrainConfig
    from spr.training.parts import lora_config

    model, _ = make_tiny(family)
    spec = models.get_family(family)
    peft_model = get_peft_model(model, lora_config(TrainConfig(model="m", data="d", out="o"), model, spec))
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert wrapped and all(
        isinstance(peft_model.get_submodule(n).base_layer, torch.nn.Linear) for n in wrapped
    )
