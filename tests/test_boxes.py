"""Box math: IoU identical to pycocotools', helpers on known cases, and the IoU >= t threshold convention."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from spr import boxes as B


def to_xywh(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 500, size=(n, 2))
    wh = rng.uniform(0, 200, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    # degenerate ones: zero width, zero height, a point, and corners in the wrong order
    k = n // 8
    boxes[:k, 2] = boxes[:k, 0]
    boxes[k : 2 * k, 3] = boxes[k : 2 * k, 1]
    boxes[2 * k : 3 * k, 2:] = boxes[2 * k : 3 * k, :2]
    boxes[3 * k : 4 * k] = boxes[3 * k : 4 * k][:, [2, 3, 0, 1]]
    # exact duplicates and integer grids, where ties and touching edges happen
    boxes[4 * k : 5 * k] = np.round(boxes[4 * k : 5 * k] / 50) * 50
    return rng.permutation(boxes)


def test_iou_equals_pycocotools_including_degenerate_boxes():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 300), random_boxes(rng, 200)
    b[:20] = a[:20]  # identical pairs
    ours = B.iou(a, b)
    theirs = coco_mask.iou(to_xywh(a), to_xywh(b), np.zeros(len(b), dtype=np.uint8))
    assert ours.shape == (300, 200)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert (ours >= 0).all() and (ours <= 1).all()
    assert np.allclose(np.diag(B.iou(a[:20], a[:20]))[B.area(a[:20]) > 0], 1.0)


def test_iou_shapes_and_empty_inputs():
    assert B.iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert B.iou([0, 0, 2, 2], [[0, 0, 1, 1], [1, 1, 2, 2]]).tolist() == [[0.25, 0.25]]
    with pytest.raises(ValueError, match="shape"):
        B.iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_union_clip_validity_on_known_boxes():
    assert B.union_box([[10, 20, 30, 40], [5, 25, 15, 60]]) == (5.0, 20.0, 30.0, 60.0)
    with pytest.raises(ValueError):
        B.union_box([])
    assert B.clip((-10, 20, 700, 500), (640, 480)) == (0.0, 20.0, 640.0, 480.0)
    assert B.is_valid((0, 0, 1, 1))
    assert not B.is_valid((0, 0, 0, 1))  # zero width
    assert not B.is_valid((0, 5, 1, 5))  # zero height
    assert not B.is_valid((2, 0, 1, 1))  # corners swapped
    assert not B.is_valid((0, 0, float("nan"), 1))
    assert not B.is_valid((0, 0, float("inf"), 1))
    assert not B.is_valid((0, 0, 1))
    assert B.is_valid((0, 0, 640, 480), (640, 480))
    assert not B.is_valid((0, 0, 641, 480), (640, 480))
    assert B.problem((0, 0, 641, 480), (640, 480)).startswith("outside")
    assert B.area([[0, 0, 2, 3], [5, 5, 1, 1]]).tolist() == [6.0, 0.0]


def test_hungarian_match_maximises_total_iou_where_greedy_would_not():
    ious = np.array([[0.9, 0.8], [0.85, 0.1]])
    # greedy takes (0, 0) = 0.9 and is left with 0.1; the optimum pairs 0.8 + 0.85
    assert B.hungarian_match(ious) == [(0, 1, 0.8), (1, 0, 0.85)]
    assert B.hungarian_match(ious, threshold=0.85) == [(1, 0, 0.85)]  # IoU >= t is kept
    assert B.hungarian_match(np.zeros((2, 2))) == []  # no overlap, no pair
    assert B.hungarian_match(np.zeros((0, 3))) == []
    cols, best = B.best_match(ious)
    assert cols.tolist() == [0, 0] and best.tolist() == [0.9, 0.85]


def test_threshold_convention_counts_iou_equal_to_t():
    ious = B.iou([[0, 0, 2, 1]], [[0, 0, 1, 1]])
    assert ious[0, 0] == 0.5
    assert B.hungarian_match(ious, threshold=0.5) == [(0, 0, 0.5)]
    assert B.hungarian_match(ious, threshold=0.5000001) == []
