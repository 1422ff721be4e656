"""The prediction side of evaluation with a scripted model: first box, original pixels, misses counted, resume,
runs never mixed; and the real code path with a tiny model."""

from __future__ import annotations

import json

import pytest
from evaluate_fixtures import SCENES, make_captions, make_flickr, make_rec_jsonl

from spr import formats
from spr.errors import UserError
from spr.evaluate import captioning, phrase_grounding, rec


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
    m = rec.evaluate(
        "scripted", data, tmp_path / "run", splits=["val", "test", "testC"], adapter=adapter, batch_size=2
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
    m2 = rec.evaluate("scripted", data, tmp_path / "run", splits=["val", "test", "testC"], adapter=again)
    assert again.asked == [] and m2["acc@0.5"] == m["acc@0.5"]
    # another model's run in the same directory is refused, unless asked to overwrite
    with pytest.raises(UserError, match="another evaluation run"):
        rec.evaluate("other-model", data, tmp_path / "run", adapter=again)
    rec.evaluate("other-model", data, tmp_path / "run", adapter=again, overwrite=True)
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
    m = phrase_grounding.evaluate("scripted", root, tmp_path / "run", adapter=adapter, splits=["val", "test"])
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
            prompt = captioning.region_prompt(ScriptedAdapter({}), box, size)
            answers[prompt] = f"a {label} " + formats.format_box(box, "qwen2_vl", size)
    m = captioning.evaluate("scripted", data, tmp_path / "run", adapter=ScriptedAdapter(answers))
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
    *(pytest.param(f, marks=pytest.mark.slow) for f in ("qwen2_5_vl", "llava", "idefics3", "internvl")),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_rec_with_a_tiny_model_runs_the_real_code_path(tiny_model_dir, tmp_path, family):
    data = make_rec_jsonl(tmp_path)
    m = rec.evaluate(tiny_model_dir(family), data, tmp_path / "run", batch_size=3, max_new_tokens=8)
    assert m["n"] == 4 and set(m["splits"]) == {"val", "test"}
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["status"] in ("ok", "no_box") for p in preds)
    # whatever a random model writes, a record says what was read: a box, or a counted miss
    for p in preds:
        assert isinstance(p["text"], str) and (p["status"] == "ok") == (p["pred_box"] is not None)
    assert m["parse_fail"] == pytest.approx(sum(p["status"] == "no_box" for p in preds) / 4)
