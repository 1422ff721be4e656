"""A region's image with boxes drawn on it, scaled for the page (Pillow).

Small images (the shapes world's are 112 px) are scaled *up* with nearest-neighbour sampling, so a reader sees
the pixels the model saw rather than a blur; boxes are drawn after scaling, so lines stay thin and sharp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# Colours chosen to stay distinct from each other on photos; the page's legend uses the same values.
REGION = (255, 214, 0)
REFERENCE = (0, 184, 212)
CHOSEN = (0, 200, 83)
REJECTED = (255, 23, 68)

# One colour per box of a text, in the order of its boxes: the box on the image and its phrase in the text wear
# the same colour. None is close to REGION (yellow) or REFERENCE (cyan), which are drawn on the same images.
PALETTE = [
    (230, 25, 75),  # red
    (67, 99, 216),  # blue
    (60, 180, 75),  # green
    (245, 130, 49),  # orange
    (145, 30, 180),  # purple
    (240, 50, 230),  # magenta
    (154, 99, 36),  # brown
    (0, 0, 117),  # navy
    (128, 128, 0),  # olive
    (128, 0, 0),  # maroon
    (70, 153, 144),  # teal
    (80, 80, 80),  # grey
]

DISPLAY_SIDE = 400  # the longer side of an image on the page (the issue asks for at least 320)
FULL_SIDE = 900  # the enlarged image is at least this long (small images scaled up), at most FULL_MAX
FULL_MAX = 2000


def box_colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


@dataclass
class Layer:
    boxes: list
    colour: tuple[int, int, int] = REFERENCE
    width: int = 3
    colours: list | None = None  # one colour per box, instead of ``colour``
    labels: list | None = None  # a short label per box (its number), drawn at its top-left corner


def valid_box(box) -> tuple[float, float, float, float] | None:
    """``box`` as four finite floats with x2 > x1 and y2 > y1, else None."""
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and abs(v) < 1e7 for v in (x1, y1, x2, y2)) or not (x2 > x1 and y2 > y1):
        return None
    return (x1, y1, x2, y2)


def scale_for(size: tuple[int, int], long_side: int) -> float:
    return long_side / max(size)


def full_side(size: tuple[int, int]) -> int:
    """Longer side of the enlarged image: the original's, raised to FULL_SIDE by a whole factor for small images
    (so pixels stay square blocks), lowered to FULL_MAX for huge ones."""
    longest = max(size)
    if longest >= FULL_SIDE:
        return min(longest, FULL_MAX)
    return longest * math.ceil(FULL_SIDE / longest)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


def draw_boxes(image: Image.Image, layers: list[Layer], long_side: int) -> Image.Image:
    """``image`` scaled so its longer side is ``long_side`` (up with nearest-neighbour, down with Lanczos) and
    each layer's boxes (original-image pixels) drawn on it, later layers on top. Boxes that are not four finite
    numbers with positive width and height are skipped."""
    im = image.convert("RGB")
    scale = scale_for(im.size, long_side)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    if size != im.size:
        im = im.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
    draw = ImageDraw.Draw(im)
    grow = max(1.0, long_side / DISPLAY_SIDE)  # the enlarged image gets proportionally thicker lines
    font = _font(max(10, round(12 * grow)))
    for layer in layers:
        width = max(1, round(layer.width * grow))
        for k, raw in enumerate(layer.boxes):
            box = valid_box(raw)
            if box is None:
                continue
            x1, y1, x2, y2 = (v * scale for v in box)
            colour = layer.colours[k] if layer.colours and k < len(layer.colours) else layer.colour
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
            label = layer.labels[k] if layer.labels and k < len(layer.labels) else None
            if label:
                left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font)
                tx, ty, m = max(0.0, x1), max(0.0, y1), max(2, width)
                draw.rectangle((tx, ty, tx + right - left + 2 * m, ty + bottom - top + 2 * m), fill=colour)
                draw.text((tx + m - left, ty + m - top), str(label), fill=ink(colour), font=font)
    return im


def ink(rgb) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb``."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)
