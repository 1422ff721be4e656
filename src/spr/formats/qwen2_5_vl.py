"""Qwen2.5-VL: a JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "label": "..."}``, usually in a ```json fence,
in absolute pixels of the *resized model input* (not of the original image).

Geometry: ``input_size=(W', H')`` (width, height of the image the vision encoder saw) when known; otherwise it
is computed from the image size with :func:`smart_resize` (``factor`` 28, ``min_pixels`` 3136, ``max_pixels``
12845056: the released Qwen2.5-VL processors' defaults; each can be overridden).

Reading is tolerant: fenced or bare JSON, a single object instead of a list, several objects of one label,
Python-style quotes or trailing commas in an object (read field by field), text around the JSON. An output cut
off mid-object keeps every complete object and reports the cut one; objects with ``point_2d`` (points, not
boxes) are reported and skipped. Span: the ``[x1, y1, x2, y2]`` list after ``"bbox_2d":``.
"""

from __future__ import annotations

import json
import math
import re

from .base import Codec, Grounding, Parsed
from .text import NUM, number_list

FACTOR = 28
MIN_PIXELS = 56 * 56  # 3136
MAX_PIXELS = 28 * 28 * 16384  # 12845056, preprocessor_config.json of the released Qwen2.5-VL models

_BBOX_KEY = re.compile(r"""["']?bbox_2d["']?\s*:\s*(\[[^\[\]]*\])""")
_LABEL_KEY = re.compile(r"""["']label["']\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")
_POINT_KEY = re.compile(r"""["']point_2d["']""")
_LIST_OF_NUMBERS = re.compile(r"\[\s*" + NUM + r"(?:\s*,\s*" + NUM + r")*\s*,?\s*\]")


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """(height, width) of the model input: both multiples of ``factor``, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible. The same arithmetic as the Qwen2-VL/Qwen2.5-VL image processors
    (argument order and return order (height, width) as theirs)."""
    if min(height, width) <= 0:
        raise ValueError(f"image height and width must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)} "
            "(the Qwen2.5-VL processor refuses such images)"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _objects(text: str):
    """``(start, end, has_child)`` of every ``{...}`` in ``text`` (end None when it is never closed), skipping
    braces inside double-quoted strings."""
    stack: list[list] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            if stack:
                stack[-1][1] = True
            stack.append([i, False])
        elif ch == "}" and stack:
            start, has_child = stack.pop()
            yield start, i + 1, has_child
    for start, has_child in stack:
        yield start, None, has_child


class Qwen25VLCodec(Codec):
    geometry_keys = ("input_size", "min_pixels", "max_pixels", "factor")

    def resolve_geometry(self, image_size, **geometry):
        super().resolve_geometry(image_size, **geometry)
        size = geometry.get("input_size")
        if size is None:
            w, h = image_size
            opts = {"factor": FACTOR, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
            opts.update({k: v for k, v in geometry.items() if k in opts and v is not None})
            rh, rw = smart_resize(round(h), round(w), **opts)
            return {"input_size": (rw, rh)}
        try:
            iw, ih = (float(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(
                f"input_size must be (width, height) of the resized model input, got {size!r}"
            ) from None
        if not (math.isfinite(iw) and math.isfinite(ih) and iw > 0 and ih > 0):
            raise ValueError(f"input_size must be two positive numbers (width, height), got {size!r}")
        return {"input_size": (iw, ih)}

    def read(self, text, image_size, *, input_size):
        out = Parsed()
        (w, h), (iw, ih) = image_size, input_size
        found = []
        for start, end, has_child in _objects(text):
            if has_child:
                continue  # a wrapper such as {"objects": [...]}: its inner objects are read on their own
            body = text[start:end] if end is not None else text[start:]
            if end is None:
                if _BBOX_KEY.search(body) or "bbox_2d" in body:
                    out.problems.append(f"object at character {start} is cut off (truncated output), skipped")
                continue
            key = _BBOX_KEY.search(body)
            if key is None:
                if _POINT_KEY.search(body):
                    out.problems.append(f"object at character {start} has point_2d, not a box: skipped")
                elif "bbox_2d" in body:
                    out.problems.append(f"object at character {start}: cannot read its bbox_2d")
                continue
            found.append((start, body, key))
        for n, (start, body, key) in enumerate(sorted(found, key=lambda f: f[0])):
            where = f"object {n + 1}"
            vals = number_list(key.group(1)[1:-1].rstrip().rstrip(","))
            if vals is None or len(vals) != 4:
                out.problems.append(f"{where}: bbox_2d {key.group(1)!r} is not four numbers")
                continue
            box = (vals[0] / iw * w, vals[1] / ih * h, vals[2] / iw * w, vals[3] / ih * h)
            box = self.finish_box(box, image_size, out.problems, where)
            if box is None:
                continue
            out.append(Grounding(self._label(body), box, (start + key.start(1), start + key.end(1))))
        if not found and not out.problems and "bbox_2d" not in text and _LIST_OF_NUMBERS.search(text):
            out.problems.append("no bbox_2d object found; the text has bare number lists (wrong format?)")
        return out

    @staticmethod
    def _label(body: str) -> str | None:
        try:
            obj = json.loads(body)
            label = obj.get("label") if isinstance(obj, dict) else None
            if label is not None:
                return " ".join(str(label).split()) or None
        except ValueError:
            pass
        m = _LABEL_KEY.search(body)
        if m is None:
            return None
        raw = m.group(1) if m.group(1) is not None else m.group(2)
        try:
            raw = json.loads(f'"{raw}"')
        except ValueError:
            pass
        return " ".join(raw.split()) or None

    def write_box(self, box, image_size, *, input_size):
        (w, h), (iw, ih) = image_size, input_size
        vals = [box[0] / w * iw, box[1] / h * ih, box[2] / w * iw, box[3] / h * ih]
        his = [iw, ih, iw, ih]
        return json.dumps([min(max(round(v), 0), int(hi)) for v, hi in zip(vals, his)])

    def write(self, groundings, image_size, *, input_size):
        rows = []
        for g in groundings:
            row = '{"bbox_2d": ' + self.write_box(g.box, image_size, input_size=input_size)
            if g.phrase is not None:
                row += ', "label": ' + json.dumps(g.phrase, ensure_ascii=False)
            rows.append("\t" + row + "}")
        return "```json\n[\n" + ",\n".join(rows) + "\n]\n```"


CODEC = Qwen25VLCodec(
    name="qwen2_5_vl",
    description=__doc__.strip(),
    examples=['```json\n[\n\t{"bbox_2d": [161, 119, 483, 476], "label": "man"}\n]\n```'],
)
