"""Conversions between original-image pixels and the number spaces models write boxes in."""

from __future__ import annotations


def to_grid(box, image_size, scale: float, clamp: float | None = None) -> list[int]:
    """Original pixels -> integers on a 0..scale grid (x / W * scale, rounded), optionally clamped."""
    w, h = image_size
    vals = [box[0] / w * scale, box[1] / h * scale, box[2] / w * scale, box[3] / h * scale]
    out = [int(round(v)) for v in vals]
    hi = scale if clamp is None else clamp
    return [min(max(v, 0), int(hi)) for v in out]


def from_grid(vals, image_size, scale: float) -> tuple[float, float, float, float]:
    """Grid numbers -> original pixels."""
    w, h = image_size
    return (vals[0] / scale * w, vals[1] / scale * h, vals[2] / scale * w, vals[3] / scale * h)
