"""Qwen2-VL: ``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
integers on a 0-1000 grid of the image (independent of the resized input).

Several boxes of one phrase follow its reference one after the other. Span: the whole
``<|box_start|>...<|box_end|>``. Reading is tolerant: any four numbers between the box tokens are a box.
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid
from .registry import register
from .text import FIRST, join_inline, numbers, runs, tagged_phrase

SCALE = 1000
_BOX = re.compile(r"<\|box_start\|>([^<]*)<\|box_end\|>")
_REF = re.compile(r"<\|object_ref_start\|>([^<]*)<\|object_ref_end\|>")


class Qwen2VLCodec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        prev_end, previous = 0, FIRST
        for i, m in enumerate(_BOX.finditer(text)):
            where = f"box {i + 1}"
            vals = numbers(m.group(1))
            phrase = tagged_phrase(text[prev_end : m.start()], _REF, previous)
            prev_end, previous = m.end(), phrase
            if len(vals) != 4:
                out.problems.append(f"{where}: expected 4 numbers, cannot read {m.group(0)!r}")
                continue
            box = self.finish_box(from_grid(vals, image_size, SCALE), image_size, out.problems, where)
            if box is None:
                continue
            out.append(Grounding(phrase, box, (m.start(), m.end())))
        unclosed = text.count("<|box_start|>") - len(_BOX.findall(text))
        if unclosed > 0:
            out.problems.append(f"{unclosed} <|box_start|> without a readable <|box_end|> (truncated?)")
        return out

    def write_box(self, box, image_size, **geometry):
        x1, y1, x2, y2 = to_grid(box, image_size, SCALE)
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"

    def write(self, groundings, image_size, **geometry):
        parts = []
        for phrase, boxes in runs(groundings):
            ref = f"<|object_ref_start|>{phrase}<|object_ref_end|>" if phrase else ""
            parts.append((phrase, ref + "".join(self.write_box(b, image_size) for b in boxes)))
        return join_inline(parts)


CODEC = register(
    Qwen2VLCodec(
        name="qwen2_vl",
        description=__doc__.strip(),
        examples=["<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"],
    )
)
