"""Shikra: ``phrase[0.xxx,0.xxx,0.xxx,0.xxx]``, relative coordinates with 3 decimals of the image *padded to a
square* with the original centred, as Shikra's expand2square preprocessing does: the square's side is
L = max(W, H) and the short side is shifted by pad = (L - short) // 2. Several boxes of one phrase share one
bracket, joined by ``;``: ``two dogs[0.100,0.500,0.200,0.600;0.300,0.500,0.400,0.600]``.

Read as ``x = v * L - pad_x``, ``y = v * L - pad_y``. Span: the four numbers of one box inside the bracket,
without brackets or ``;`` (so replacing it keeps the group valid); ``format_box`` writes exactly those four
numbers. Phrase: the words just before the bracket (at most 8; see :mod:`spr.formats.text`).
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .registry import register
from .text import FIRST, join_inline, number_list, plain_phrase, runs

_GROUP = re.compile(r"\[([^\[\]]*)\]")
_PART = re.compile(r"[^;]+")


def square_padding(image_size) -> tuple[float, float, float]:
    """(side L, pad_x, pad_y) of Shikra's expand2square."""
    w, h = image_size
    side = max(w, h)
    return side, (side - w) // 2, (side - h) // 2


class ShikraCodec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        side, px, py = square_padding(image_size)
        prev_end, previous = 0, FIRST
        n = 0
        for g in _GROUP.finditer(text):
            parts = [
                (p, g.start(1) + p.start(), g.start(1) + p.end())
                for p in _PART.finditer(g.group(1))
                if p.group(0).strip()
            ]
            lists = [number_list(p.group(0)) for p, _, _ in parts]
            if all(v is None for v in lists):
                continue  # brackets around words: prose, not boxes
            phrase = plain_phrase(text[prev_end : g.start()], previous)
            prev_end, previous = g.end(), phrase
            for (part, start, end), vals in zip(parts, lists):
                n += 1
                where = f"box {n}"
                if vals is None or len(vals) != 4:
                    out.problems.append(f"{where}: {part.group(0).strip()!r} is not four numbers: skipped")
                    continue
                box = (vals[0] * side - px, vals[1] * side - py, vals[2] * side - px, vals[3] * side - py)
                # 3 decimals of the padded side can land a corner up to half a step outside the image
                box = self.finish_box(box, image_size, out.problems, where, slack=side * 0.0005 + 1e-9)
                if box is None:
                    continue
                # the span excludes spaces around the numbers
                lead = len(part.group(0)) - len(part.group(0).lstrip())
                trail = len(part.group(0)) - len(part.group(0).rstrip())
                out.append(Grounding(phrase, box, (start + lead, end - trail)))
        return out

    def write_box(self, box, image_size, **geometry):
        side, px, py = square_padding(image_size)
        vals = ((box[0] + px) / side, (box[1] + py) / side, (box[2] + px) / side, (box[3] + py) / side)
        return ",".join(f"{min(max(v, 0.0), 1.0):.3f}" for v in vals)

    def write(self, groundings, image_size, **geometry):
        pieces = []
        for phrase, boxes in runs(groundings):
            group = "[" + ";".join(self.write_box(b, image_size) for b in boxes) + "]"
            pieces.append((phrase, f"{phrase}{group}" if phrase else group))
        return join_inline(pieces)


CODEC = register(
    ShikraCodec(
        name="shikra",
        description=__doc__.strip(),
        examples=["A man[0.250,0.250,0.750,0.875] holding a cup[0.500,0.375,0.875,0.625]."],
    )
)
