"""Shared reader/writer for formats that write a box as a bare ``[x1, y1, x2, y2]`` after its phrase (ferret,
plain_norm, plain_pixel); each of those modules sets the number space.

Span: the whole ``[x1, y1, x2, y2]``. Phrase: the words just before the box (see :mod:`spr.formats.text`).
Bracketed lists of other lengths are reported (two numbers: a point); brackets holding words are prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Codec, Grounding, Parsed
from .text import FIRST, join_inline, number_list, plain_phrase, runs

_LIST = re.compile(r"\[([^\[\]]*)\]")


@dataclass
class BracketCodec(Codec):
    """``scale``: the number space's extent (1000 for a 0-1000 grid, 1 for 0-1 floats, None for pixels).
    ``clamp``: the largest number written (e.g. 999 on a grid whose values stop below 1000).
    ``decimals``: digits after the point when writing (0 writes integers)."""

    scale: float | None = None
    clamp: float | None = None
    decimals: int = 0

    def to_pixels(self, vals, image_size):
        if self.scale is None:
            return tuple(vals)
        w, h = image_size
        s = self.scale
        return (vals[0] / s * w, vals[1] / s * h, vals[2] / s * w, vals[3] / s * h)

    def read(self, text, image_size, **geometry):
        out = Parsed()
        prev_end, previous = 0, FIRST
        n = 0
        for m in _LIST.finditer(text):
            vals = number_list(m.group(1))
            if vals is None:
                continue  # brackets around words: prose, not a box
            n += 1
            where = f"box {n}"
            gap, prev_end = text[prev_end : m.start()], m.end()
            if len(vals) != 4:
                kind = "a point" if len(vals) == 2 else f"{len(vals)} numbers"
                out.problems.append(f"{where}: {m.group(0)!r} is {kind}, not [x1, y1, x2, y2]: skipped")
                continue
            phrase = previous = plain_phrase(gap, previous)
            box = self.finish_box(self.to_pixels(vals, image_size), image_size, out.problems, where)
            if box is not None:
                out.append(Grounding(phrase, box, (m.start(), m.end())))
        return out

    def _number(self, v: float, hi: float) -> str:
        v = min(max(v, 0.0), hi)
        if self.decimals:
            return f"{v:.{self.decimals}f}"
        return str(int(round(v)))

    def write_box(self, box, image_size, **geometry):
        w, h = image_size
        if self.scale is None:
            vals, his = box, (w, h, w, h)
        else:
            s = self.scale
            vals = (box[0] / w * s, box[1] / h * s, box[2] / w * s, box[3] / h * s)
            top = s if self.clamp is None else self.clamp
            his = (top,) * 4
        return "[" + ", ".join(self._number(v, hi) for v, hi in zip(vals, his)) + "]"

    def write(self, groundings, image_size, **geometry):
        pieces = []
        for phrase, boxes in runs(groundings):
            text = ", ".join(self.write_box(b, image_size) for b in boxes)
            pieces.append((phrase, f"{phrase} {text}" if phrase else text))
        return join_inline(pieces)
