"""Box math in the program's one coordinate convention.

Every box inside SPR is float ``(x1, y1, x2, y2)`` in pixels of the *original* image, x to the right, y down,
``x2 > x1`` and ``y2 > y1``. Model-specific text formats are converted at the edges (``spr.formats``).

Threshold convention: a prediction is correct at threshold ``t`` when ``IoU >= t`` (REC accuracy, precision /
recall). Matching for refinement and the localization score uses ``IoU > t`` where the paper says "greater than";
each caller names which it uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]


def as_array(boxes) -> np.ndarray:
    """Boxes as a float64 array of shape (N, 4); a single box becomes (1, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def area(boxes) -> np.ndarray:
    """Areas of (N, 4) boxes; degenerate boxes have area 0."""
    b = as_array(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection areas of (N, 4) and (M, 4) arrays."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def iou(a, b) -> np.ndarray:
    """The (N, M) IoU matrix between boxes ``a`` (N, 4) and ``b`` (M, 4), in [0, 1].

    Same values as ``pycocotools.mask.iou`` with ``iscrowd=0`` after converting to (x, y, w, h).
    A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    a, b = as_array(a), as_array(b)
    inter = _intersection(a, b)
    union = area(a)[:, None] + area(b)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def paired_iou(a, b) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` for two (N, 4) arrays: the diagonal of :func:`iou`, in O(N)."""
    a, b = as_array(a), as_array(b)
    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a) + area(b) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def intersection_over_area(a, b) -> np.ndarray:
    """(N, M) matrix: the fraction of each box in ``a`` that lies inside each box in ``b``."""
    a, b = as_array(a), as_array(b)
    inter = _intersection(a, b)
    a_area = area(a)[:, None]
    out = np.zeros_like(inter)
    np.divide(inter, a_area, out=out, where=a_area > 0)
    return out


def union_box(boxes) -> Box:
    """The smallest box containing all ``boxes``."""
    b = as_array(boxes)
    if len(b) == 0:
        raise ValueError("union_box of no boxes")
    return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))


def shift(box: Sequence[float], dx: float, dy: float) -> Box:
    """The box moved by (dx, dy): between a crop's coordinates and the original image's (crop origin added
    going out, subtracted going in)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)


def clip(box: Sequence[float], image_size: tuple[int, int]) -> Box:
    """Clip a box to the image ``(W, H)``."""
    w, h = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def is_valid(box: Sequence[float], image_size: tuple[int, int] | None = None) -> bool:
    """Finite, four numbers, ``x2 > x1`` and ``y2 > y1``; inside the image when ``image_size`` is given."""
    if len(box) != 4:
        return False
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])) or not (x2 > x1 and y2 > y1):
        return False
    if image_size is not None:
        w, h = image_size
        return x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h
    return True


def problem(box, image_size: tuple[int, int] | None = None) -> str | None:
    """Why a box is unusable, in words, or None when it is fine."""
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        return f"not four numbers: {box!r}"
    if len(vals) != 4:
        return f"expected 4 numbers, got {len(vals)}"
    if not all(np.isfinite(vals)):
        return f"non-finite coordinate in {vals}"
    x1, y1, x2, y2 = vals
    if not (x2 > x1 and y2 > y1):
        return f"zero or negative size (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g})"
    if image_size is not None:
        w, h = image_size
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            return f"outside the {w}x{h} image: {vals}"
    return None


def best_match(ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the column with the highest IoU and that IoU (-1 and 0 where there are no columns)."""
    n, m = ious.shape
    if m == 0:
        return np.full(n, -1, dtype=int), np.zeros(n)
    cols = ious.argmax(axis=1)
    return cols, ious[np.arange(n), cols]


def hungarian_match(ious: np.ndarray, threshold: float = 0.0) -> list[tuple[int, int, float]]:
    """One-to-one matching that maximises total IoU; keeps pairs with ``IoU >= threshold`` (and IoU > 0).

    Returns ``(row, col, iou)`` triples sorted by row.
    """
    if ious.size == 0:
        return []
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return [
        (int(r), int(c), float(ious[r, c]))
        for r, c in zip(rows, cols)
        if ious[r, c] > 0 and ious[r, c] >= threshold
    ]
