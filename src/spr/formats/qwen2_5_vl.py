"""Qwen2.5-VL: a JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "label": "..."}``, usually in a ```json fence,
in absolute pixels of the *resized model input* (not of the original image).

Geometry (required: the pixel budget changes the coordinates, so there is no default): ``input_size=(W', H')``,
the width and height of the image the vision encoder saw (``ModelAdapter.geometry(image_size)`` reads it from
the processor: ``image_grid_thw`` x patch size), or both ``min_pixels`` and ``max_pixels``, the run's processor
budget, from which :func:`smart_resize` computes it (``factor`` 28 = patch 14 x merge 2, overridable). Without
either, ``parse``/``format_box``/``render`` raise ValueError saying what to pass.

Reading is tolerant: fenced or bare JSON, a single object instead of a list, several objects of one label,
Python-style quotes or trailing commas in an object (read field by field), text around the JSON. An output cut
off mid-object keeps every complete object and reports the cut one; objects with ``point_2d`` (points, not
boxes) are reported and skipped. Span: the ``[x1, y1, x2, y2]`` list after ``"bbox_2d":``.

REC answers without ``bbox_2d`` are read too, in the same pixels of the resized input: a bare
``[x1, y1, x2, y2]``, or one inside ``<answer>...</answer>`` as VLM-R1's REC prompt asks
(``<answer>[x1, y1, x2, y2]</answer>``; its evaluator takes the four integers in the answer and scales them by
the original / input size). When an ``<answer>`` block is present only the lists inside it count (the
reasoning before it may quote coordinates). Span: the whole ``[x1, y1, x2, y2]``; phrase: the ``label`` of a JSON
object holding the list, else None. Bracketed lists of other lengths there are reported.
"""

from __future__ import annotations

import json
import math
import re

from .base import Codec, Grounding, Parsed
from .registry import register
from .text import number_list

FACTOR = 28  # patch size 14 x spatial merge 2: a property of the architecture, not of the run
# preprocessor_config.json of the released Qwen2.5-VL checkpoints, for callers that mean exactly these; the
# codec never falls back to them (a run's processor may have another budget).
RELEASED_MIN_PIXELS = 56 * 56  # 3136
RELEASED_MAX_PIXELS = 28 * 28 * 16384  # 12845056

_BBOX_KEY = re.compile(r"""["']?bbox_2d["']?\s*:\s*(\[[^\[\]]*\])""")
_LABEL_KEY = re.compile(r"""["']label["']\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")
_POINT_KEY = re.compile(r"""["']point_2d["']""")
_LIST = re.compile(r"\[([^\[\]]*)\]")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_NEEDS_GEOMETRY = (
    "box format 'qwen2_5_vl' writes pixels of the resized model input, which depend on the run's processor: "
    "pass input_size=(W', H') (the resized input, e.g. ModelAdapter.geometry(image_size)) or both min_pixels "
    "and max_pixels (the processor's pixel budget)"
)


def smart_resize(
    height: int, width: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> tuple[int, int]:
    """(height, width) of the model input: both multiples of ``factor``, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible. The same arithmetic as the Qwen2-VL/Qwen2.5-VL image processors
    (argument order and return order (height, width) as theirs); the pixel budget has no default here."""
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


def _positive_int(name: str, value) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if v <= 0 or v != value:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return v


class Qwen25VLCodec(Codec):
    geometry_keys = ("input_size", "min_pixels", "max_pixels", "factor")

    def resolve_geometry(self, image_size, **geometry):
        super().resolve_geometry(image_size, **geometry)
        size = geometry.get("input_size")
        if size is None:
            missing = [k for k in ("min_pixels", "max_pixels") if geometry.get(k) is None]
            if missing:
                raise ValueError(f"{_NEEDS_GEOMETRY}; missing: {', '.join(missing)}")
            budget = {k: _positive_int(k, geometry[k]) for k in ("min_pixels", "max_pixels")}
            if budget["min_pixels"] > budget["max_pixels"]:
                raise ValueError(
                    f"min_pixels must not exceed max_pixels, got {budget['min_pixels']} and {budget['max_pixels']}"
                )
            factor = (
                _positive_int("factor", geometry["factor"]) if geometry.get("factor") is not None else FACTOR
            )
            w, h = image_size
            rh, rw = smart_resize(round(h), round(w), factor=factor, **budget)
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
        found = []
        closed = []  # (start, end, body) of every complete object, for the labels of bare lists
        for start, end, has_child in _objects(text):
            body = text[start:end] if end is not None else text[start:]
            if end is not None:
                closed.append((start, end, body))
            if has_child:
                continue  # a wrapper such as {"objects": [...]}: its inner objects are read on their own
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
            box = self.finish_box(
                self._to_pixels(vals, image_size, input_size), image_size, out.problems, where
            )
            if box is None:
                continue
            out.append(Grounding(self._label(body), box, (start + key.start(1), start + key.end(1))))
        if not found and "bbox_2d" not in text:
            self._read_bare_lists(text, image_size, input_size, closed, out)
        return out

    def _read_bare_lists(self, text, image_size, input_size, closed, out: Parsed) -> None:
        """REC answers without bbox_2d: ``[x1, y1, x2, y2]`` lists, inside ``<answer>`` blocks when there are any."""
        answers = list(_ANSWER.finditer(text))
        regions = [(m.start(1), m.end(1)) for m in answers] or [(0, len(text))]
        n = 0
        for lo, hi in regions:
            for m in _LIST.finditer(text, lo, hi):
                vals = number_list(m.group(1))
                if vals is None:
                    continue  # brackets around words: prose
                n += 1
                where = f"box {n}"
                if len(vals) != 4:
                    kind = "a point" if len(vals) == 2 else f"{len(vals)} numbers"
                    out.problems.append(f"{where}: {m.group(0)!r} is {kind}, not [x1, y1, x2, y2]: skipped")
                    continue
                box = self.finish_box(
                    self._to_pixels(vals, image_size, input_size), image_size, out.problems, where
                )
                if box is None:
                    continue
                holders = [c for c in closed if c[0] < m.start() and m.end() <= c[1]]
                label = self._label(max(holders)[2]) if holders else None
                out.append(Grounding(label, box, (m.start(), m.end())))

    @staticmethod
    def _to_pixels(vals, image_size, input_size):
        (w, h), (iw, ih) = image_size, input_size
        return (vals[0] / iw * w, vals[1] / ih * h, vals[2] / iw * w, vals[3] / ih * h)

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


CODEC = register(
    Qwen25VLCodec(
        name="qwen2_5_vl",
        description=__doc__.strip(),
        examples=['```json\n[\n\t{"bbox_2d": [161, 119, 483, 476], "label": "man"}\n]\n```'],
    )
)
