"""MiniGPT-v2: ``<p>phrase</p> {<x1><y1><x2><y2>}`` with integers on a 0-100 grid of the image
(``x / W * 100``), e.g. ``<p>a man</p> {<25><25><75><100>}``. Several boxes of one phrase are joined by
``<delim>``: ``<p>dogs</p> {<10><50><20><75>}<delim>{<30><50><40><75>}``.

Written rounded and clamped to 0..100; read as ``v / 100 * W``. Span: one ``{<x1><y1><x2><y2>}`` with its
braces. Phrase: the last ``<p>...</p>`` before the box.
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid
from .registry import register
from .text import FIRST, NUMBER, join_inline, runs, tagged_phrase

SCALE = 100
# a brace group of angle-bracketed items: {<12><30><45><80>}; items that are not numbers are reported
_BOX = re.compile(r"\{((?:\s*<[^<>{}]{0,40}>)+)\s*\}")
_ITEM = re.compile(r"<([^<>]*)>")
_PHRASE = re.compile(r"<p>([^<]*)</p>")


class MiniGPTv2Codec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        prev_end, previous = 0, FIRST
        for i, m in enumerate(_BOX.finditer(text)):
            where = f"box {i + 1}"
            phrase = tagged_phrase(text[prev_end : m.start()], _PHRASE, previous)
            prev_end, previous = m.end(), phrase
            items = [s.strip() for s in _ITEM.findall(m.group(1))]
            if len(items) != 4 or not all(NUMBER.fullmatch(s) for s in items):
                out.problems.append(f"{where}: expected {{<x1><y1><x2><y2>}}, cannot read {m.group(0)!r}")
                continue
            vals = [float(s) for s in items]
            box = self.finish_box(from_grid(vals, image_size, SCALE), image_size, out.problems, where)
            if box is not None:
                out.append(Grounding(phrase, box, (m.start(), m.end())))
        return out

    def write_box(self, box, image_size, **geometry):
        return "{" + "".join(f"<{v}>" for v in to_grid(box, image_size, SCALE)) + "}"

    def write(self, groundings, image_size, **geometry):
        parts = []
        for phrase, boxes in runs(groundings):
            ref = f"<p>{phrase}</p> " if phrase else ""
            parts.append((phrase, ref + "<delim>".join(self.write_box(b, image_size) for b in boxes)))
        return join_inline(parts)


CODEC = register(
    MiniGPTv2Codec(
        name="minigpt_v2",
        description=__doc__.strip(),
        examples=["<p>a man</p> {<25><25><75><100>} holding <p>a cup</p> {<50><50><87><75>}"],
    )
)
