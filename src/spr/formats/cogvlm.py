"""CogVLM: ``phrase[[x0,y0,x1,y1]]`` with three-digit integers on a 000-999 grid of the image (``x / W * 1000``),
e.g. ``A man[[250,250,750,999]] holding a cup[[500,500,875,750]]``. Several boxes of one phrase share one double
bracket, separated by ``;`` *inside* it: ``toy houses[[052,697,174,892;526,763,636,952]]``, as CogVLM writes them
and as its own parsers read them (every ``[[...]]`` group, split on ``;``, in ``utils/utils/grounding_parser.py``;
a ``[[..];[..]]`` group leaves ``]``/``[`` on its parts, which those parsers drop). ``[[..];[..]]`` is still
read, and spaces after ``;`` (``[[052,697,174,892; 526,763,636,952]]``, the CogVLM paper's grounded caption).

Written rounded, clamped to 0..999 and zero-padded to three digits; read as ``v / 1000 * W``. Span: the four
numbers of one box (``250,250,750,999``, without brackets or ``;``), so replacing it keeps the group valid;
``format_box`` writes exactly those numbers. Phrase: the words just before the group (at most 8; see
:mod:`spr.formats.text`).
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid
from .registry import register
from .text import FIRST, join_inline, number_list, plain_phrase, runs

SCALE = 1000
# [[ ... ]] whose inside holds numbers, commas, spaces and ';' (or '];[', an older rendering) between boxes
_GROUP = re.compile(r"\[\[((?:[^\[\]]|\]\s*;\s*\[)*)\]\]")
_PART = re.compile(r"[^\[\];]+")


class CogVLMCodec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        prev_end, previous = 0, FIRST
        n = 0
        for g in _GROUP.finditer(text):
            phrase = plain_phrase(text[prev_end : g.start()], previous)
            prev_end, previous = g.end(), phrase
            for p in _PART.finditer(g.group(1)):
                raw = p.group(0)
                if not raw.strip():
                    continue
                n += 1
                where = f"box {n}"
                vals = number_list(raw)
                if vals is None or len(vals) != 4:
                    out.problems.append(f"{where}: {raw.strip()!r} is not four numbers: skipped")
                    continue
                box = self.finish_box(from_grid(vals, image_size, SCALE), image_size, out.problems, where)
                if box is None:
                    continue
                start = g.start(1) + p.start() + len(raw) - len(raw.lstrip())
                end = g.start(1) + p.end() - (len(raw) - len(raw.rstrip()))
                out.append(Grounding(phrase, box, (start, end)))
        return out

    def write_box(self, box, image_size, **geometry):
        return ",".join(f"{v:03d}" for v in to_grid(box, image_size, SCALE, clamp=999))

    def write(self, groundings, image_size, **geometry):
        pieces = []
        for phrase, boxes in runs(groundings):
            group = "[[" + ";".join(self.write_box(b, image_size) for b in boxes) + "]]"
            pieces.append((phrase, f"{phrase}{group}" if phrase else group))
        return join_inline(pieces)


CODEC = register(
    CogVLMCodec(
        name="cogvlm",
        description=__doc__.strip(),
        examples=["A man[[250,250,750,999]] holding a cup[[500,500,875,750]]"],
    )
)
