"""PaliGemma: ``<locYYYY><locXXXX><locYYYY><locXXXX> label``, **y first** (y1, x1, y2, x2), 1024 location tokens
``<loc0000>``..``<loc1023>`` per axis, objects separated by `` ; ``, e.g.
``<loc0256><loc0256><loc0767><loc0767> man ; <loc0511><loc0128><loc1023><loc0512> cup``.

Scale: **1023**, as big_vision (PaliGemma's reference code) encodes and decodes boxes: its training targets are
``round(y / H * 1023)`` clipped to 0..1023 (``refcoco_mask2str`` in ``big_vision/pp/proj/paligemma/segmentation.py``)
and its evaluator reads ``loc / 1023`` (``big_vision/evaluators/proj/paligemma/transfers/segmentation.py``). So
``<loc1023>`` is the image's far edge. (Many PaliGemma demo notebooks divide by 1024; the difference is below 0.1%
of the image, but the codec follows the encoder the model was trained with.) Written ``round(y / H * 1023)``
clamped to 0..1023; read ``y = loc / 1023 * H``, ``x = loc / 1023 * W``. Segmentation tokens (``<segNNN>``) after
a box are ignored. Phrase: the label after the box, up to ``;`` or the next location token; boxes written back to
back share the label that follows the last of them. Span: the four location tokens of one box.
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed, location_quads
from .registry import register
from .text import clean_phrase

SCALE = 1023  # big_vision: round(v * 1023) to encode, loc / 1023 to decode; tokens <loc0000>..<loc1023>
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
            label = _LABEL.match(text, run.end())
            phrase = clean_phrase(_SEG.sub(" ", label.group(0))) if label else None
            for (y1, x1, y2, x2), span in location_quads(run, _LOC, out.problems):
                n += 1
                box = (x1 / SCALE * w, y1 / SCALE * h, x2 / SCALE * w, y2 / SCALE * h)
                box = self.finish_box(box, image_size, out.problems, f"box {n}")
                if box is not None:
                    out.append(Grounding(phrase, box, span))
        return out

    def write_box(self, box, image_size, **geometry):
        w, h = image_size
        x1, y1, x2, y2 = box
        vals = (y1 / h, x1 / w, y2 / h, x2 / w)
        return "".join(f"<loc{min(max(round(v * SCALE), 0), SCALE):04d}>" for v in vals)

    def write(self, groundings, image_size, **geometry):
        objs = []
        for g in groundings:
            loc = self.write_box(g.box, image_size)
            objs.append(f"{loc} {g.phrase}" if g.phrase else loc)
        return " ; ".join(objs)


CODEC = register(
    PaliGemmaCodec(
        name="paligemma",
        description=__doc__.strip(),
        examples=["<loc0256><loc0256><loc0767><loc0767> man ; <loc0511><loc0128><loc1023><loc0512> cup"],
    )
)
