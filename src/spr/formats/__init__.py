"""Box-format codecs: one per model family's way of writing boxes, one registry.

>>> from spr import formats
>>> g = formats.parse("<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>",
...                   "qwen2_vl", image_size=(640, 480))
>>> g[0].phrase, g[0].box
('a dog', (64.0, 96.0, 320.0, 384.0))
"""

from __future__ import annotations

from .base import Codec, Grounding, Parsed
from .registry import available, get, register


def parse(text: str, fmt: str, image_size: tuple[int, int], **geometry) -> Parsed:
    """Groundings (phrase, box in original-image pixels) found in ``text``; never raises on model output."""
    if not isinstance(text, str):
        return Parsed([], [f"expected text, got {type(text).__name__}"])
    return get(fmt).parse(text, tuple(image_size), **geometry)


def render(groundings, fmt: str, image_size: tuple[int, int], **geometry) -> str:
    """Text in format ``fmt`` for ``groundings`` (Grounding objects, ``{"phrase", "box"}`` dicts or
    ``(phrase, box)`` pairs)."""
    return get(fmt).render(groundings, tuple(image_size), **geometry)


def format_box(box, fmt: str, image_size: tuple[int, int], **geometry) -> str:
    return get(fmt).format_box(box, tuple(image_size), **geometry)


from . import codecs as _codecs  # noqa: E402,F401  (imports every codec module; each registers itself)

__all__ = ["Codec", "Grounding", "Parsed", "available", "format_box", "get", "parse", "register", "render"]
