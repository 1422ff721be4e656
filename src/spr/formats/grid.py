"""Conversions between original-image pixels and the number spaces models write boxes in."""

from __future__ import annotations

import math


def to_grid(box, image_size, scale: float, clamp: float | None = None, mode: str = "round") -> list[int]:
    """Original pixels -> integers on a 0..scale grid (``x / W * scale``), rounded (``mode="round"``) or
    floored (``mode="floor"``), then clamped to ``0..clamp`` (default ``scale``)."""
    w, h = image_size
    vals = [box[0] / w * scale, box[1] / h * scale, box[2] / w * scale, box[3] / h * scale]
    cut = math.floor if mode == "floor" else round
    hi = int(scale if clamp is None else clamp)
    return [min(max(int(cut(v)), 0), hi) for v in vals]


def from_grid(vals, image_size, scale: float, offset: float = 0.0) -> tuple[float, float, float, float]:
    """Grid numbers -> original pixels: ``(v + offset) / scale * W`` (offset 0.5 reads a bin at its centre)."""
    w, h = image_size
    return (
        (vals[0] + offset) / scale * w,
        (vals[1] + offset) / scale * h,
        (vals[2] + offset) / scale * w,
        (vals[3] + offset) / scale * h,
    )
