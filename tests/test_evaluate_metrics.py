"""Evaluation metrics: REC accuracy at IoU thresholds (checked against pycocotools), phrase grounding protocols,
caption metrics, and comparing runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from spr import boxes as B
from spr.evaluate import compare, phrase_grounding, rec


def _pred(pid, gt, pred, split="val", status=None):
    return {
        "id": pid,
        "split": split,
        "gt_box": list(gt),
        "pred_box": None if pred is None else list(pred),
        "status": status or ("ok" if pred is not None else "no_box"),
    }


def test_rec_metrics_thresholds_are_inclusive_and_misses_count():
    gt = (0, 0, 10, 10)
    preds = [
        _pred("exact", gt, gt),  # IoU 1
        _pred("half", gt, (0, 0, 10, 5)),  # IoU exactly 0.5 -> correct at 0.5 (IoU >= t)
        _pred("shifted", gt, (2, 0, 12, 10)),  # IoU 80/120 = 0.667
        _pred("nobox", gt, None),  # no box in the answer: a miss
        _pred("noimage", gt, None, split="test", status="image_error"),
    ]
    m = rec.TASK.aggregate(preds, rec.RecConfig(splits=["val", "test", "testC"]))
    assert m["n"] == 5
    assert m["acc@0.5"] == pytest.approx(3 / 5)
    assert m["acc@0.6"] == pytest.approx(2 / 5)
    assert m["acc@0.7"] == pytest.approx(1 / 5)
    assert m["acc@0.9"] == pytest.approx(1 / 5)
    assert m["mean_iou"] == pytest.approx((1 + 0.5 + 80 / 120) / 5)
    assert m["parse_fail"] == pytest.approx(1 / 5) and m["image_fail"] == pytest.approx(1 / 5)
    assert m["center_acc"] == pytest.approx(3 / 5)
    assert m["splits"]["val"]["n"] == 4 and m["splits"]["val"]["acc@0.5"] == pytest.approx(3 / 4)
    assert m["splits"]["test"]["acc@0.5"] == 0.0
    assert m["splits"]["testC"] == {**m["splits"]["testC"], "n": 0, "missing": True}


def test_rec_iou_and_accuracy_agree_with_pycocotools():
    rng = np.random.default_rng(0)
    n = 2000
    xy = rng.uniform(0, 400, size=(n, 2))
    gt = np.concatenate([xy, xy + rng.uniform(5, 200, size=(n, 2))], axis=1)
    wh = np.tile(gt[:, 2:] - gt[:, :2], 2)
    pred = gt + rng.normal(0, 1, size=(n, 4)) * wh / 8
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)

    def xywh(b):
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)

    coco_iou = np.array(
        [mask_utils.iou(xywh(pred[i : i + 1]), xywh(gt[i : i + 1]), [0])[0, 0] for i in range(n)]
    )
    ours = B.paired_iou(pred, gt)
    np.testing.assert_allclose(ours, coco_iou, atol=1e-9)

    m = rec.TASK.aggregate([_pred(str(i), gt[i], pred[i]) for i in range(n)], rec.RecConfig())
    for t in rec.THRESHOLDS:
        assert m[f"acc@{t}"] == pytest.approx(float(np.mean(coco_iou >= t)))
    assert m["mean_iou"] == pytest.approx(float(coco_iou.mean()))
    assert (
        0.0 < m["acc@0.9"] < m["acc@0.7"] < m["acc@0.5"] < 1.0
    )  # the noise level gives a spread over thresholds


def test_grounding_any_box_and_merged_box_differ_as_the_protocols_say():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    preds = [
        # hits one of two boxes: correct under ANY-BOX, not under MERGED-BOX (union is 30 wide)
        {
            "id": "1",
            "split": "test",
            "gt_boxes": [a, b],
            "pred_box": a,
            "status": "ok",
            "phrase_type": ["people"],
        },
        # covers the union: correct under MERGED-BOX only
        {"id": "2", "split": "test", "gt_boxes": [a, b], "pred_box": (0, 0, 30, 10), "status": "ok"},
        {"id": "3", "split": "test", "gt_boxes": [a], "pred_box": None, "status": "no_box"},
    ]
    m = phrase_grounding.TASK.aggregate(preds, phrase_grounding.GroundingConfig(splits=["test", "val"]))
    assert m["recall@1_any"] == pytest.approx(1 / 3)
    assert m["recall@1_merged"] == pytest.approx(1 / 3)
    assert m["parse_fail"] == pytest.approx(1 / 3)
    assert m["types"]["people"]["recall@1_any"] == 1.0 and m["types"]["people"]["recall@1_merged"] == 0.0
    assert m["splits"]["val"]["missing"] is True


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need java")
def test_caption_metrics_rank_a_good_caption_above_a_bad_one():
    from spr.evaluate.captioning import caption_metrics

    refs = {"1": ["a red box on the left", "the red square"], "2": ["a blue box", "blue square on the right"]}
    good, good_problems = caption_metrics(refs, {"1": "a red box on the left", "2": "a blue box"})
    bad, _ = caption_metrics(refs, {"1": "a green circle", "2": ""})
    assert good_problems == []
    for key in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert good[key] is not None and bad[key] is not None, key
        assert good[key] > bad[key], key
    assert good["ROUGE-L"] == pytest.approx(1.0)


def test_caption_python_tokenizer_matches_ptb_punctuation_rules():
    from spr.evaluate.captioning import _python_tokenize

    assert _python_tokenize({"a": ["A red box, on the LEFT."]}) == {"a": ["a red box on the left"]}


def test_compare_puts_runs_side_by_side_with_deltas(tmp_path):
    base = {
        "task": "rec",
        "acc@0.5": 0.5,
        "mean_iou": 0.4,
        "n": 10,
        "splits": {"val": {"acc@0.5": 0.6, "n": 5}},
    }
    spr = {
        "task": "rec",
        "acc@0.5": 0.75,
        "mean_iou": 0.45,
        "n": 10,
        "splits": {"val": {"acc@0.5": 0.5, "n": 5}},
    }
    for name, m in (("base", base), ("spr", spr)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    table = compare.compare_paths(tmp_path / "base", tmp_path / "spr" / "metrics.json")
    lines = table.splitlines()
    assert lines[0] == "| metric | base | spr | delta | better |"
    assert "| acc@0.5 | 0.5000 | 0.7500 | +0.2500 | spr |" in lines  # higher is better (the task says)
    assert "| val/acc@0.5 | 0.6000 | 0.5000 | -0.1000 | base |" in lines
    assert "| mean_iou | 0.4000 | 0.4500 | +0.0500 | spr |" in lines


def test_compare_refuses_different_tasks(tmp_path):
    from spr.errors import UserError

    (tmp_path / "a.json").write_text(json.dumps({"task": "rec"}))
    (tmp_path / "b.json").write_text(json.dumps({"task": "caption"}))
    with pytest.raises(UserError, match="nothing to compare"):
        compare.compare_paths(tmp_path / "a.json", tmp_path / "b.json")
