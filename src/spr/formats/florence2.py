"""Florence-2: ``phrase<loc_x1><loc_y1><loc_x2><loc_y2>`` with 1000 bins per axis, e.g.
``a man<loc_250><loc_250><loc_750><loc_999>a cup<loc_500><loc_500><loc_875><loc_750>``.

Quantized as Florence-2's post-processor does: ``bin = floor(x / W * 1000)`` clamped to 0..999, read back at the
bin centre ``(bin + 0.5) / 1000 * W`` (kept as floats). Several boxes of one phrase follow it directly
(``dogs<loc_..>x8``). Phrase: all text since the previous location token, without ``<s>``/``</s>``/``<pad>``
and task tokens (as the post-processor reads it) and
surrounding commas. Span: the four location tokens of one box.
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed, location_quads
from .grid import from_grid, to_grid
from .registry import register
from .text import clean_phrase

BINS = 1000
_RUN = re.compile(r"(?:<loc_\d{1,9}>\s*)*<loc_\d{1,9}>")
_LOC = re.compile(r"<loc_(\d{1,9})>")


class Florence2Codec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        prev_end = 0
        n = 0
        for run in _RUN.finditer(text):
            phrase = clean_phrase(text[prev_end : run.start()].strip(" \t\r\n,;"))
            prev_end = run.end()
            for vals, span in location_quads(run, _LOC, out.problems):
                n += 1
                box = from_grid(vals, image_size, BINS, offset=0.5)
                box = self.finish_box(box, image_size, out.problems, f"box {n}")
                if box is not None:
                    out.append(Grounding(phrase, box, span))
        return out

    def write_box(self, box, image_size, **geometry):
        return "".join(f"<loc_{v}>" for v in to_grid(box, image_size, BINS, clamp=BINS - 1, mode="floor"))

    def write(self, groundings, image_size, **geometry):
        out = ""
        last = object()
        for g in groundings:
            # a phrase written once covers the boxes that follow it; a box without phrase needs a break
            if g.phrase != last or g.phrase is None:
                out += g.phrase or ("" if not out else ", ")
            out += self.write_box(g.box, image_size)
            last = g.phrase
        return out


CODEC = register(
    Florence2Codec(
        name="florence2",
        description=__doc__.strip(),
        examples=["a man<loc_250><loc_250><loc_750><loc_999>a cup<loc_500><loc_500><loc_875><loc_750>"],
    )
)
