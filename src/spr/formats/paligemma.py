"""PaliGemma: ``<locYYYY><locXXXX><locYYYY><locXXXX> label``, **y first** (y1, x1, y2, x2), 1024 bins per axis,
objects separated by `` ; ``, e.g. ``<loc0256><loc0256><loc0768><loc0768> man ; <loc0512><loc0128><loc1023><loc0512> cup``.

Read as big_vision's PaliGemma parser does: ``y = loc / 1024 * H``, ``x = loc / 1024 * W``; written as
``round(x / W * 1024)`` clamped to 0..1023. Segmentation tokens (``<segNNN>``) after a box are ignored.
Phrase: the label after the box, up to ``;`` or the next location token; boxes written back to back share the
label that follows the last of them. Span: the four location tokens of one box.
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .text import clean_phrase

BINS = 1024
_RUN = re.compile(r"(?:<loc\d{1,9}>\s*)*<loc\d{1,9}>")
_LOC = re.compile(r"<loc(\d{1,9})>")
_LABEL = re.compile(r"[^;]*?(?=<loc\d|;|$)", re.S)
_SEG = re.compile(r"<seg\d{1,9}>")


class PaliGemmaCodec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        w, h = image_size
        n = 0
        for run in _RUN.finditer(text):
            locs = [
                (int(m.group(1)), run.start() + m.start(), run.start() + m.end())
                for m in _LOC.finditer(run.group(0))
            ]
            label = _LABEL.match(text, run.end())
            phrase = clean_phrase(_SEG.sub(" ", label.group(0))) if label else None
            whole = len(locs) - len(locs) % 4
            if whole < len(locs):
                out.problems.append(
                    f"{len(locs) % 4} location token(s) at character {locs[whole][1]} do not make a box"
                )
            for i in range(0, whole, 4):
                n += 1
                quad = locs[i : i + 4]
                y1, x1, y2, x2 = (v for v, _, _ in quad)
                box = (x1 / BINS * w, y1 / BINS * h, x2 / BINS * w, y2 / BINS * h)
                box = self.finish_box(box, image_size, out.problems, f"box {n}")
                if box is not None:
                    out.append(Grounding(phrase, box, (quad[0][1], quad[3][2])))
        return out

    def write_box(self, box, image_size, **geometry):
        w, h = image_size
        x1, y1, x2, y2 = box
        vals = (y1 / h, x1 / w, y2 / h, x2 / w)
        return "".join(f"<loc{min(max(round(v * BINS), 0), BINS - 1):04d}>" for v in vals)

    def write(self, groundings, image_size, **geometry):
        objs = []
        for g in groundings:
            loc = self.write_box(g.box, image_size)
            objs.append(f"{loc} {g.phrase}" if g.phrase else loc)
        return " ; ".join(objs)


CODEC = PaliGemmaCodec(
    name="paligemma",
    description=__doc__.strip(),
    examples=["<loc0256><loc0256><loc0768><loc0768> man ; <loc0512><loc0128><loc1023><loc0512> cup"],
)
