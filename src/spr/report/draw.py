"""Thumbnails of a region's image with boxes drawn on them (Pillow)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

# Colours chosen to stay distinct from each other on photos; the page's legend uses the same values.
REGION = (255, 214, 0)
REFERENCE = (0, 184, 212)
CHOSEN = (0, 200, 83)
REJECTED = (255, 23, 68)


@dataclass
class Layer:
    boxes: list
    colour: tuple[int, int, int]
    width: int = 3


def thumbnail_with_boxes(image: Image.Image, layers: list[Layer], max_side: int = 480) -> Image.Image:
    """``image`` scaled so its longer side is at most ``max_side``, with each layer's boxes (original-image
    pixels) drawn on it, later layers on top. Boxes that are not four finite numbers are skipped."""
    im = image.convert("RGB")
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    for layer in layers:
        for box in layer.boxes:
            try:
                x1, y1, x2, y2 = (float(v) * scale for v in box)
            except (TypeError, ValueError):
                continue
            if not all(abs(v) < 1e7 for v in (x1, y1, x2, y2)) or not (x2 > x1 and y2 > y1):
                continue
            draw.rectangle((x1, y1, x2, y2), outline=layer.colour, width=layer.width)
    return im
