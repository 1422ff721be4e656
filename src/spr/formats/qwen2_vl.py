"""Qwen2-VL: ``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
integers on a 0-1000 grid of the image (independent of the resized input)."""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid

SCALE = 1000
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.S)
_PAIR = re.compile(r"\(" + _NUM + "," + _NUM + r"\)")
_REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>\s*$", re.S)


class Qwen2VLCodec(Codec):
    def parse(self, text, image_size, **geometry):
        out = Parsed()
        for i, m in enumerate(_BOX.finditer(text)):
            where = f"box {i + 1}"
            pairs = _PAIR.findall(m.group(1))
            if len(pairs) != 2:
                out.problems.append(f"{where}: cannot read {m.group(0)!r}")
                continue
            vals = [float(v) for p in pairs for v in p]
            box = self.finish_box(from_grid(vals, image_size, SCALE), image_size, out.problems, where)
            if box is None:
                continue
            ref = _REF.search(text[: m.start()])
            phrase = ref.group(1).strip() if ref else None
            out.append(Grounding(phrase or None, box, (m.start(), m.end())))
        if "<|box_start|>" in text and text.count("<|box_start|>") != text.count("<|box_end|>"):
            out.problems.append("unclosed <|box_start|>")
        return out

    def format_box(self, box, image_size, **geometry):
        x1, y1, x2, y2 = to_grid(box, image_size, SCALE)
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"

    def render(self, groundings, image_size, **geometry):
        parts = []
        for g in groundings:
            ref = f"<|object_ref_start|>{g.phrase}<|object_ref_end|>" if g.phrase else ""
            parts.append(ref + self.format_box(g.box, image_size))
        return " ".join(parts)


CODEC = Qwen2VLCodec(name="qwen2_vl", description=__doc__.strip())
