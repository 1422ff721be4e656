"""The prediction side of evaluation with a scripted model: first box, original pixels, misses counted, resume,
runs never mixed; and the real code path with a tiny model."""

from __future__ import annotations

import json

import pytest
from evaluate_fixtures import SCENES, make_captions, make_flickr, make_rec_jsonl

from spr import formats
from spr.errors import UserError
from spr.evaluate import captioning, phrase_grounding, rec
from spr.evaluate.task import evaluate
from spr.models import available_families


def run_task(module, model, data, out, adapter=None, **options) -> dict:
    """The task of ``module`` on ``data`` as `spr eval` runs it, with an adapter given in place of a model."""
    config = module.TASK.Config(model=str(model), data=str(data), out=str(out), **options)
    return evaluate(module.TASK, config, adapter=adapter)


class ScriptedAdapter:
    """Answers each prompt with a fixed text; counts what it was asked. Speaks the qwen2_vl box format."""

    fmt = "qwen2_vl"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.asked: list[str] = []

    def rec_prompt(self, expression):
        return expression

    def geometry(self, image_size):
        return {}

    def build_inputs(self, images, prompts, add_generation_prompt=True):
        assert len(images) == len(prompts)
        return {"prompts": list(prompts)}

    def generate(self, inputs, **kwargs):
        assert kwargs.get("do_sample") is False  # greedy
        self.asked.extend(inputs["prompts"])
        return [[p] for p in inputs["prompts"]]

    def decode(self, row):
        return self.answers.get(row[0], "")


def _box_text(name, k):
    size, objects = SCENES[name]
    return formats.format_box(objects[k][1], "qwen2_vl", size)


def test_rec_prediction_uses_the_first_box_in_original_pixels_and_counts_misses(tmp_path):
    data = make_rec_jsonl(tmp_path, broken_image=True)
    adapter = ScriptedAdapter(
        {
            "the red box": "it is " + _box_text("img1", 0),
            "the blue box": _box_text("img1", 0)
            + " or "
            + _box_text("img1", 1),  # first box is the wrong one
            "the green box": "I cannot see it",
            "the yellow box": _box_text("img2", 1),
        }
    )
    m = run_task(
        rec, "scripted", data, tmp_path / "run", adapter, splits=["val", "test", "testC"], batch_size=2
    )
    assert m["n"] == 5
    assert m["acc@0.5"] == pytest.approx(2 / 5) and m["acc@0.9"] == pytest.approx(2 / 5)
    assert m["parse_fail"] == pytest.approx(1 / 5) and m["image_fail"] == pytest.approx(1 / 5)
    assert m["splits"]["val"]["acc@0.5"] == pytest.approx(1 / 3)
    assert m["splits"]["test"]["acc@0.5"] == pytest.approx(1 / 2)
    assert m["splits"]["testC"]["missing"] is True
    assert any("broken.png" in p for p in m["problems"])
    assert any("split 'testC': not in the data" in p for p in m["problems"])
    preds = {
        p["id"]: p for p in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())
    }
    red = preds["img1-0"]
    assert red["status"] == "ok" and red["pred_box"] == pytest.approx(list(SCENES["img1"][1][0][1]), abs=0.1)
    assert preds["img2-0"]["status"] == "no_box" and preds["img2-0"]["pred_box"] is None
    assert preds["broken-0"]["status"] == "image_error"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {f"acc@{t}" for t in rec.THRESHOLDS} | {"mean_iou", "parse_fail", "splits"} <= set(saved)

    # a re-run resumes: nothing is asked again, the metrics are the same
    again = ScriptedAdapter(adapter.answers)
    m2 = run_task(rec, "scripted", data, tmp_path / "run", again, splits=["val", "test", "testC"])
    assert again.asked == [] and m2["acc@0.5"] == m["acc@0.5"]
    # another model's run in the same directory is refused, unless asked to overwrite
    with pytest.raises(UserError, match="written with other settings.*model: scripted -> other-model"):
        run_task(rec, "other-model", data, tmp_path / "run", again)
    run_task(rec, "other-model", data, tmp_path / "run", again, overwrite=True)
    assert len(again.asked) == 4


def test_phrase_grounding_prediction(tmp_path):
    root = make_flickr(tmp_path / "flickr")
    img1 = SCENES["img1"][1]
    adapter = ScriptedAdapter(
        {
            "A red box": _box_text("img1", 0),
            "a blue box": _box_text("img1", 0),  # wrong
            "Two boxes": formats.format_box(
                (img1[0][1][0], 8, img1[1][1][2], 60), "qwen2_vl", SCENES["img1"][0]
            ),
            "The green box": _box_text("img2", 0),
        }
    )
    m = run_task(phrase_grounding, "scripted", root, tmp_path / "run", adapter, splits=["val", "test"])
    assert m["n"] == 5
    # ANY-BOX: red, green right; "Two boxes" (the union) overlaps neither single box enough
    assert m["recall@1_any"] == pytest.approx(2 / 5)
    # MERGED-BOX: red, green, and "Two boxes" against the union of its two boxes
    assert m["recall@1_merged"] == pytest.approx(3 / 5)
    assert m["parse_fail"] == pytest.approx(1 / 5)  # "the yellow box" got no answer
    assert m["splits"]["val"]["n"] == 3 and m["splits"]["test"]["n"] == 2


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("java") is None, reason="needs java")
def test_caption_prediction_strips_boxes_and_scores(tmp_path):
    data = make_captions(tmp_path)
    answers = {}
    for size, objects in SCENES.values():
        for label, box in objects:
            prompt = captioning.region_prompt(ScriptedAdapter({}), box, size, captioning.DEFAULT_PROMPT)
            answers[prompt] = f"a {label} " + formats.format_box(box, "qwen2_vl", size)
    m = run_task(captioning, "scripted", data, tmp_path / "run", ScriptedAdapter(answers))
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert all("<|box_start|>" not in p["caption"] for p in preds)
    assert (
        m["ROUGE-L"] == pytest.approx(1.0)
        and m["CIDEr"] > 1.0
        and m["METEOR"] > 0.5
        and m["BLEU-4"] is not None
    )


FAMILIES = [
    "qwen2_vl",
    *(pytest.param(f, marks=pytest.mark.slow) for f in available_families() if f != "qwen2_vl"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_rec_with_a_tiny_model_runs_the_real_code_path(tiny_model_dir, tmp_path, family):
    data = make_rec_jsonl(tmp_path)
    m = run_task(rec, tiny_model_dir(family), data, tmp_path / "run", batch_size=3, max_new_tokens=8)
    assert m["n"] == 4 and set(m["splits"]) == {"val", "test"}
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["status"] in ("ok", "no_box") for p in preds)
    # whatever a random model writes, a record says what was read: a box, or a counted miss
    for p in preds:
        assert isinstance(p["text"], str) and (p["status"] == "ok") == (p["pred_box"] is not None)
    assert m["parse_fail"] == pytest.approx(sum(p["status"] == "no_box" for p in preds) / 4)


def test_rec_runs_in_the_dtype_asked_and_refuses_to_resume_in_another(tiny_model_dir, tmp_path, monkeypatch):
    """On a GPU a base loads in its checkpoint's fp32 and a model merged to bf16 in bf16 (seen in the GPU demo
    run): --dtype evaluates both in one precision, and a resume in another is refused."""
    import torch

    from spr import models

    loaded, load = [], models.load

    def spy(*args, **kwargs):
        adapter = load(*args, **kwargs)
        loaded.append(next(adapter.model.parameters()).dtype)
        return adapter

    monkeypatch.setattr(models, "load", spy)
    data = make_rec_jsonl(tmp_path)
    m = run_task(rec, tiny_model_dir("qwen2_vl"), data, tmp_path / "run", max_new_tokens=8, dtype="bfloat16")
    assert loaded == [torch.bfloat16] and m["n"] == 4
    with pytest.raises(UserError, match="dtype"):
        run_task(rec, tiny_model_dir("qwen2_vl"), data, tmp_path / "run", max_new_tokens=8, dtype="float32")


@pytest.mark.parametrize("semantic", [None, pytest.param("labels", marks=pytest.mark.slow)])
def test_description_boxes_are_matched_one_to_one_at_both_thresholds(tmp_path, semantic):
    from evaluate_fixtures import make_regions

    from spr import prompts
    from spr.data.jsonl import read_records
    from spr.data.records import Region
    from spr.evaluate import description

    path = make_regions(tmp_path)
    regions = read_records(path, Region)
    template = prompts.BUILTIN["region_box"]
    probe = ScriptedAdapter({})
    text_for = {r.id: prompts.render(template, r, probe.fmt, probe.geometry).text for r in regions}
    (red, red_box), (blue, blue_box) = SCENES["img1"][1]
    size = SCENES["img1"][0]
    # IoU 0.81: a hit at 0.5 and 0.75
    slightly_off = (
        blue_box[0] + 4,
        blue_box[1] + 4,
        blue_box[2],
        blue_box[3],
    )
    far_off = (blue_box[0] + 12, blue_box[1] + 12, blue_box[2], blue_box[3])  # IoU 0.49: a miss at both
    answer = (
        f"<|object_ref_start|>a {red}<|object_ref_end|>{formats.format_box(red_box, 'qwen2_vl', size)} next to "
        f"<|object_ref_start|>a {blue}<|object_ref_end|>{formats.format_box(slightly_off, 'qwen2_vl', size)} and "
        f"<|object_ref_start|>another {blue}<|object_ref_end|>{formats.format_box(far_off, 'qwen2_vl', size)}"
    )
    adapter = ScriptedAdapter({text_for["img1/r0"]: answer, text_for["img2/r0"]: "two boxes, no coordinates"})
    m = run_task(description, "scripted", path, tmp_path / "run", adapter, semantic=semantic)
    # img1: 3 predicted boxes, 2 objects, one-to-one: red and the slightly-off blue match; img2: nothing
    assert m["precision@0.5"] == pytest.approx(2 / 3) and m["recall@0.5"] == pytest.approx(2 / 4)
    assert m["precision@0.75"] == pytest.approx(2 / 3)
    assert m["f1@0.5"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["no_box"] == pytest.approx(1 / 2) and m["mean_boxes"] == pytest.approx(3 / 2)
    if semantic:  # the labels scorer (spr score's): phrases against the region's object labels
        assert m["semantic"] is not None and 0.0 < m["semantic"] <= 1.0, m["problems"]
    else:
        assert m["semantic"] is None


def test_batched_greedy_answers_equal_one_by_one(tiny_model_dir, tmp_path):
    """Left padding done right: a prompt's answer does not depend on the other prompts of its batch."""
    from evaluate_fixtures import write_images
    from PIL import Image

    from spr import models
    from spr.evaluate.generation import greedy_generate

    adapter = models.load(str(tiny_model_dir("qwen2_vl")))
    paths = write_images(tmp_path)
    images = [Image.open(paths[n]).convert("RGB") for n in ("img1", "img2", "img1")]
    prompts = [
        adapter.rec_prompt(e) for e in ("the red box", "a much longer expression about the yellow box", "x")
    ]
    batched = greedy_generate(adapter, images, prompts, 10)
    single = [greedy_generate(adapter, [im], [p], 10)[0] for im, p in zip(images, prompts)]
    assert batched == single and len(set(batched)) > 1
