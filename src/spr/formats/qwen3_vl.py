"""Qwen3-VL and Qwen3.5: a JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "label": "..."}``, usually in a ```json
fence, on a relative 0-1000 grid of the image (Qwen2.5-VL's pixels of the resized input were dropped), so no
geometry is needed: the pixel budget changes what the model sees, not the numbers' meaning.

Scale: a number ``v`` is ``v / 1000`` of the width (x) or height (y), as the authors' own evaluator reads it
(QwenLM/Qwen3-VL ``evaluation/ODinW-13/run_odinw.py``, relative mode: ``bbox / 1000 * [w, h, w, h]``); a 1000
is read as the edge without a problem. Written numbers are rounded and stop at 999, the largest value the
models write (Alibaba's documentation gives the range as 0-999), so an answer SPR writes for training is one
the model could have written; a box touching the right or bottom edge then reads back 0.1% short of it.

Reading is Qwen2.5-VL's (:mod:`spr.formats.qwen2_5_vl`): fenced or bare JSON, one object or a list, Python
quotes, an output cut off mid-object (complete objects kept, the cut one reported), ``point_2d`` objects
reported and skipped, bare ``[x1, y1, x2, y2]`` lists or ``<answer>`` blocks for REC answers. Thinking models
(Qwen3.5 thinks by default) write ``<think>...</think>`` first: only the text after the last ``</think>`` is
read, and an unclosed ``<think>`` is reported with no boxes. Span: the ``[x1, y1, x2, y2]`` list.
"""

from __future__ import annotations

import json

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid
from .qwen2_5_vl import Qwen25VLCodec
from .registry import register
from .text import answer_start

SCALE = 1000
CLAMP = 999


class Qwen3VLCodec(Qwen25VLCodec):
    geometry_keys = ()

    def resolve_geometry(self, image_size, **geometry):
        return Codec.resolve_geometry(self, image_size, **geometry)

    def read(self, text, image_size, **geometry):
        start, problem = answer_start(text)
        if problem:
            return Parsed([], [problem])
        found = super().read(text[start:], image_size, input_size=None)
        shifted = [Grounding(g.phrase, g.box, (g.span[0] + start, g.span[1] + start)) for g in found]
        return Parsed(shifted, found.problems)

    @staticmethod
    def _to_pixels(vals, image_size, input_size):
        return from_grid(vals, image_size, SCALE)

    def write_box(self, box, image_size, **geometry):
        return json.dumps(to_grid(box, image_size, SCALE, clamp=CLAMP))

    def write(self, groundings, image_size, **geometry):
        return super().write(groundings, image_size, input_size=None)


CODEC = register(
    Qwen3VLCodec(
        name="qwen3_vl",
        description=__doc__.strip(),
        examples=['```json\n[\n\t{"bbox_2d": [252, 248, 755, 991], "label": "man"}\n]\n```'],
    )
)
