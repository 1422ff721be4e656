"""The numbers papers report: acc@0.95, the 0.5:0.95 mean, Ref-L4's size buckets (checked against its evaluator's
definition), misses counted; and the paired bootstrap interval of `spr eval compare` (its coverage on synthetic
data with a known difference, and the table it adds to)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from spr import boxes as B
from spr.evaluate import bootstrap, compare, description, phrase_grounding, rec


def _pred(pid, gt, pred, split="val", status=None):
    return {
        "id": pid,
        "split": split,
        "gt_box": list(gt),
        "pred_box": None if pred is None else list(pred),
        "status": status or ("ok" if pred is not None else "no_box"),
    }


# ------------------------------------------------------------------------------------------- metrics


def test_new_rec_metrics_against_hand_computation():
    small, medium, large = (0, 0, 10, 10), (0, 0, 200, 200), (0, 0, 300, 300)
    preds = [
        _pred("exact", small, small),  # IoU 1: a hit at every threshold
        _pred("half", small, (0, 0, 10, 5)),  # IoU 0.5 exactly: a hit at 0.5 only (IoU >= t)
        _pred("shifted", medium, (40, 0, 240, 200)),  # IoU 160*200 / (240*200) = 2/3
        _pred("tight", large, (0, 0, 300, 291)),  # IoU 0.97
        _pred("nobox", medium, None),  # the answer held no box: a miss, counted
        _pred("noimage", large, None, status="image_error"),
    ]
    m = rec.TASK.aggregate(preds, rec.RecConfig())
    n = 6
    assert m["acc@0.5"] == pytest.approx(4 / n)
    assert m["acc@0.75"] == pytest.approx(2 / n) and m["acc@0.95"] == pytest.approx(2 / n)
    # per-sample share of the thresholds 0.5, 0.55, ..., 0.95 met: 1, 1/10, 4/10 (0.5 .. 0.65), 1, 0, 0
    assert m["acc@0.5:0.95"] == pytest.approx((1 + 0.1 + 0.4 + 1 + 0 + 0) / n)
    assert m["acc@0.5:0.95"] == pytest.approx(np.mean([m[f"acc@{t}"] for t in rec.COCO_THRESHOLDS[::2]] + [
        float(np.mean([(iou >= t) for iou in (1, 0.5, 2 / 3, 0.97, 0, 0)])) for t in rec.COCO_THRESHOLDS[1::2]
    ]))  # fmt: skip
    assert m["mean_iou"] == pytest.approx((1 + 0.5 + 2 / 3 + 0.97) / n)
    assert (m["n_small"], m["n_medium"], m["n_large"]) == (2, 2, 2)
    assert m["acc@0.5_small"] == 1.0 and m["acc@0.5_medium"] == 0.5 and m["acc@0.5_large"] == 0.5
    assert m["acc@0.5:0.95_small"] == pytest.approx((1 + 0.1) / 2)
    assert m["acc@0.5:0.95_medium"] == pytest.approx(0.4 / 2) and m["acc@0.5:0.95_large"] == pytest.approx(
        1 / 2
    )
    assert m["parse_fail"] == pytest.approx(1 / n) and m["image_fail"] == pytest.approx(1 / n)
    assert m["problems"] == ["1 answer(s) held no readable box (counted as misses)"]
    # a bucket without samples has no accuracy (None, not 0)
    only_small = rec.TASK.aggregate(preds[:2], rec.RecConfig())
    assert only_small["acc@0.5_large"] is None and only_small["n_large"] == 0
    # every new metric is declared, with its direction
    declared = {x.name: x.higher_is_better for x in rec.TASK.metrics}
    for key in ("acc@0.95", "acc@0.5:0.95", "acc@0.5_small", "acc@0.5:0.95_large"):
        assert declared[key] is True
    assert declared["parse_fail"] is False and "IoU >= t" in rec.TASK.caption


def _refl4_bucket(box_xywh, small_size_th=128, large_size_th=256):
    """Ref-L4's evaluator (ref_l4/evaluation.py): obj_size = sqrt(w * h); < small: small; <= large: medium."""
    obj_size = math.sqrt(box_xywh[2] * box_xywh[3])
    if obj_size < small_size_th:
        return "small"
    if obj_size <= large_size_th:
        return "medium"
    return "large"


def test_size_buckets_follow_ref_l4s_definition():
    edges = [
        (128, 128),
        (127.99, 128),
        (128, 127.99),
        (256, 256),
        (256, 256.01),
        (64, 256),
        (512, 128),
        (1, 16385),
    ]
    rng = np.random.default_rng(0)
    wh = [*edges, *map(tuple, rng.uniform(1, 600, size=(2000, 2)))]
    for w, h in wh:
        box = (10.0, 20.0, 10.0 + w, 20.0 + h)
        assert rec.size_of(box) == _refl4_bucket([10, 20, w, h]), (w, h)
    assert [rec.size_of((0, 0, w, h)) for w, h in edges[:5]] == [
        "medium",
        "small",
        "small",
        "medium",
        "large",
    ]


def test_accuracies_equal_ref_l4s_evaluator_on_continuous_ious():
    """Ref-L4 counts IoU > t; we count IoU >= t. With IoUs that never equal a threshold they agree exactly."""
    rng = np.random.default_rng(1)
    n = 3000
    xy = rng.uniform(0, 500, size=(n, 2))
    gt = np.concatenate([xy, xy + rng.uniform(20, 400, size=(n, 2))], axis=1)
    wh = np.tile(gt[:, 2:] - gt[:, :2], 2)
    pred = gt + rng.normal(0, 1, size=(n, 4)) * wh / 10
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
    iou = B.paired_iou(pred, gt)
    m = rec.TASK.aggregate([_pred(str(i), gt[i], pred[i]) for i in range(n)], rec.RecConfig())
    ths = [i / 100 for i in range(50, 100, 5)]  # Ref-L4's ann_level_macc_ths
    assert m["acc@0.5:0.95"] == pytest.approx(np.mean([(iou > th).sum() / n for th in ths]))
    for t in (0.5, 0.75, 0.9):
        assert m[f"acc@{t}"] == pytest.approx((iou > t).sum() / n)
    sizes = np.array([_refl4_bucket([*g[:2], *(g[2:] - g[:2])]) for g in gt])
    for s in rec.SIZES:
        sel = iou[sizes == s]
        assert m[f"acc@0.5_{s}"] == pytest.approx((sel > 0.5).mean())
        assert m[f"acc@0.5:0.95_{s}"] == pytest.approx(np.mean([(sel > th).mean() for th in ths]))
    assert 0 < m["acc@0.95"] < m["acc@0.5"] < 1


# ------------------------------------------------------------------------------------------ bootstrap


def _synthetic_pair(rng, n, p_a, p_b, agree=0.8):
    """Paired hits with P(A) = p_a, P(B) = p_b exactly (so the true B - A is p_b - p_a), correlated through a
    shared uniform as two runs of similar models are."""
    u = rng.uniform(size=n)
    v = np.where(rng.uniform(size=n) < agree, u, rng.uniform(size=n))
    return (u < p_a).astype(float), (v < p_b).astype(float)


def test_bootstrap_interval_covers_a_known_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(12345)
    true_delta = 0.70 - 0.65
    covered, widths = 0, []
    start = time.perf_counter()
    datasets = 200
    for k in range(datasets):
        a, b = _synthetic_pair(rng, 500, 0.65, 0.70)
        ones = np.ones_like(a)
        delta, lo, hi = bootstrap.paired_bootstrap(a, ones, b, ones, resamples=1000, seed=k)
        assert delta == pytest.approx(b.mean() - a.mean()) and lo <= delta <= hi
        covered += lo <= true_delta <= hi
        widths.append(hi - lo)
    elapsed = time.perf_counter() - start
    coverage = covered / datasets
    print(f"coverage {coverage:.3f}, mean width {np.mean(widths):.4f}, {elapsed:.2f} s")
    assert 0.90 <= coverage <= 0.99  # (its speed is a benchmark's business, not a unit test's: no time bound)
    # pairing is what keeps the interval narrow: the unpaired binomial standard error is far larger
    unpaired_se = math.sqrt(0.65 * 0.35 / 500 + 0.70 * 0.30 / 500)
    assert np.mean(widths) < 2 * 1.96 * unpaired_se * 0.8


def test_bootstrap_on_identical_runs_and_on_groups():
    a = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    ones = np.ones(6)
    delta, lo, hi = bootstrap.paired_bootstrap(a, ones, a, ones, resamples=200)
    assert (delta, lo, hi) == (0.0, 0.0, 0.0)
    # several metrics at once, a group's ratio with its own denominator, deterministic for a seed
    mask = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    b = np.array([1, 1, 1, 1, 0, 0], dtype=float)
    num_a, den_a = np.stack([a, a * mask], 1), np.stack([ones, mask], 1)
    num_b, den_b = np.stack([b, b * mask], 1), np.stack([ones, mask], 1)
    d1 = bootstrap.paired_bootstrap(num_a, den_a, num_b, den_b, resamples=300, seed=3)
    d2 = bootstrap.paired_bootstrap(num_a, den_a, num_b, den_b, resamples=300, seed=3)
    np.testing.assert_array_equal(np.array(d1), np.array(d2))
    assert d1[0] == pytest.approx([0.0, 1 / 3])


# -------------------------------------------------------------------------------------------- compare


def _run(tmp_path, name, records, task=rec.TASK, config=None):
    d = tmp_path / name
    d.mkdir()
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = task.aggregate(records, config or rec.RecConfig())
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_compare_adds_a_paired_interval_from_the_predictions(tmp_path):
    rng = np.random.default_rng(7)
    gt = (0.0, 0.0, 100.0, 100.0)
    hit, miss = (0.0, 0.0, 100.0, 95.0), (60.0, 60.0, 160.0, 160.0)
    hits_a, hits_b = _synthetic_pair(rng, 400, 0.6, 0.8)
    split = ["val" if i % 2 else "test" for i in range(400)]
    base = [_pred(str(i), gt, hit if h else miss, split[i]) for i, h in enumerate(hits_a)]
    spr = [_pred(str(i), gt, hit if h else miss, split[i]) for i, h in enumerate(hits_b)]
    spr[0] = _pred("0", gt, None, split[0])  # a parse failure counts as a miss on B's side too
    a, b = _run(tmp_path, "base", base), _run(tmp_path, "spr", spr[::-1])  # pairing is by id, not by order
    table = compare.compare_paths(a, b, resamples=500)
    lines = table.splitlines()
    assert lines[0] == "| metric | base | spr | delta | 95% CI | better |"
    row = next(x for x in lines if x.startswith("| acc@0.5 |")).split(" | ")
    lo, hi = (float(v) for v in row[4].strip("[]").split(", "))
    delta = float(row[3])
    assert lo < delta < hi and lo > 0 and row[5].strip(" |") == "spr"  # a real difference: no (n.s.)
    assert any(x.startswith("| val/acc@0.5 | ") and "[" in x for x in lines)
    assert any(x.startswith("| acc@0.5_small | ") and "[" in x for x in lines)  # 100 x 100 px: small
    assert not any(x.startswith("| acc@0.5_medium | ") for x in lines)  # no medium referent: no number
    assert "| n | 400 | 400 | +0 | | |" in lines
    assert any("paired bootstrap of B - A over the 400 samples" in x for x in lines)

    # the same run twice: a zero interval; a small difference on few samples: within noise
    same = compare.compare_paths(a, a, resamples=200)
    assert "| acc@0.5 |" in same and "[+0.0000, +0.0000]" in same
    few_a = [_pred(str(i), gt, hit if i % 2 else miss) for i in range(20)]
    few_b = [_pred(str(i), gt, hit if (i % 2 or i == 0) else miss) for i in range(20)]  # one more hit of 20
    table = compare.compare_paths(_run(tmp_path, "a20", few_a), _run(tmp_path, "b20", few_b), resamples=500)
    row = next(x for x in table.splitlines() if x.startswith("| acc@0.5 |"))
    assert row.endswith("| b20 (n.s.) |")


def test_compare_intervals_for_grounding_and_description_match_their_metrics(tmp_path):
    a_box, b_box = (0, 0, 10, 10), (20, 0, 30, 10)
    g = [
        {
            "id": "1",
            "split": "test",
            "gt_boxes": [a_box, b_box],
            "pred_box": a_box,
            "status": "ok",
            "phrase_type": ["people"],
        },  # noqa: E501
        {"id": "2", "split": "test", "gt_boxes": [a_box], "pred_box": None, "status": "no_box"},
    ]
    cols = compare.grouped_columns("grounding", g)
    m = phrase_grounding.TASK.aggregate(g, phrase_grounding.GroundingConfig())
    for k in ("recall@1_any", "test/recall@1_merged", "type:people/recall@1_any", "parse_fail"):
        num, den = cols[k]
        assert num.sum() / den.sum() == pytest.approx(compare.flatten(m)[k]), k

    regions = [
        {
            "id": "r1",
            "split": "all",
            "pred_boxes": [a_box, (0, 0, 10, 9), (50, 50, 60, 60)],
            "ref_boxes": [a_box, b_box],
            "status": "ok",
        },  # noqa: E501
        {"id": "r2", "split": "all", "pred_boxes": [], "ref_boxes": [b_box], "status": "no_box"},
    ]
    cols = compare.sample_columns("description", regions)
    m = description.TASK.group_metrics(regions)
    for k in ("precision@0.5", "recall@0.5", "f1@0.5", "f1@0.75", "mean_boxes", "no_box"):
        num, den = cols[k]
        assert num.sum() / den.sum() == pytest.approx(m[k]), k
    assert "semantic" in cols and cols["semantic"][1].sum() == 0  # not scored: no interval

    # description runs compare with an interval per region resample
    d = description.DescriptionConfig()
    ra = _run(tmp_path, "da", regions, description.TASK, d)
    rb = _run(tmp_path, "db", [{**regions[0], "pred_boxes": [a_box, b_box]}, regions[1]], description.TASK, d)
    table = compare.compare_paths(ra, rb, resamples=200)
    assert next(x for x in table.splitlines() if x.startswith("| f1@0.5 |")).count("[") == 1


def test_rec_box_errors_show_a_systematic_bias_and_ignore_misses():
    """A model whose boxes are 2 px too wide and 1 px too high on every side shows +4 / +2 px; a miss (IoU < 0.5)
    and an answer without a box do not enter the means."""
    gt = [10.0, 10.0, 40.0, 40.0]
    preds = [
        {"gt_box": gt, "pred_box": [8.0, 9.0, 42.0, 41.0], "status": "ok"},
        {
            "gt_box": gt,
            "pred_box": [9.0, 10.0, 43.0, 42.0],
            "status": "ok",
        },  # +4 wide, +2 high, shifted +1 / +1
        {"gt_box": gt, "pred_box": [60.0, 60.0, 90.0, 90.0], "status": "ok"},  # a miss
        {"gt_box": gt, "pred_box": None, "status": "no_box"},
    ]
    m = rec.TASK.aggregate(preds, rec.RecConfig())
    assert m["width_error"] == pytest.approx(4.0) and m["height_error"] == pytest.approx(2.0)
    assert m["centre_dx"] == pytest.approx(0.5) and m["centre_dy"] == pytest.approx(0.5)
    declared = {x.name: x.higher_is_better for x in rec.TASK.metrics}
    assert declared["width_error"] is None  # a signed error has no better direction: compare names no winner
