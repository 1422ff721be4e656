"""InternVL: ``<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>``, integers on a 0-1000 grid of the image.

Several boxes of one phrase share one group: ``<box>[[x1, y1, x2, y2], [x1, y1, x2, y2]]</box>``.
Span: the inner ``[x1, y1, x2, y2]`` of one box (brackets included), so replacing it keeps the group valid.

Reading is tolerant: spacing, a single bracket ``<box>[x1, y1, x2, y2]</box>``, bare numbers in the group, and
boxes without ``<box>`` tags, as InternVL often answers a REC question (``[[x1, y1, x2, y2]]`` alone, or after
``<ref>..</ref>``): InternVL's own RefCOCO evaluator (``internvl_chat/eval/refcoco/evaluate_grounding.py``)
reads the first four-number bracket (one or two brackets deep) anywhere in the answer and divides by 1000.
Outside ``<box>`` a double-bracket group ``[[..], [..]]`` is always read; a single bracket ``[x1, y1, x2, y2]``
only when it holds exactly four numbers (other bracketed lists are prose). Phrase: the last ``<ref>..</ref>``
before the group (None without one).
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid
from .registry import register
from .text import FIRST, join_inline, number_list, numbers, runs, tagged_phrase

SCALE = 1000
_INNER = re.compile(r"\[([^\[\]]*)\]")
_REF = re.compile(r"<ref>([^<]*)</ref>")
# a <box> group, else a bare double-bracket group [[..], [..]], else a bare single list [..]
_ANY = re.compile(
    r"<box>(?P<box>[^<]*)</box>"
    r"|(?P<bare>\[\s*(?:\[[^\[\]]*\]\s*(?:,\s*)?)+\])"
    r"|\[(?P<single>[^\[\]]*)\]"
)


class InternVLCodec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        prev_end, previous = 0, FIRST
        n = 0
        boxed = 0
        for g in _ANY.finditer(text):
            if g.group("box") is not None:
                boxed += 1
                key = "box"
                inner = list(_INNER.finditer(g.group("box")))
                if inner:
                    items = [(m.group(1), g.start(key) + m.start(), g.start(key) + m.end()) for m in inner]
                else:  # no brackets at all: the group's numbers are one box
                    items = [(g.group(key), g.start(key), g.end(key))]
            elif g.group("bare") is not None:
                key = "bare"
                inner = list(_INNER.finditer(g.group(key)))
                items = [(m.group(1), g.start(key) + m.start(), g.start(key) + m.end()) for m in inner]
            else:
                vals = number_list(g.group("single"))
                if vals is None or len(vals) != 4:
                    continue  # a bracket of words or of other lists of numbers: prose, not a box
                inner = True
                items = [(g.group("single"), g.start(), g.end())]
            phrase = tagged_phrase(text[prev_end : g.start()], _REF, previous)
            prev_end, previous = g.end(), phrase
            for body, start, end in items:
                if not body.strip(" ,"):
                    continue  # an empty [] (e.g. left where a box was removed) holds no box
                n += 1
                where = f"box {n}"
                vals = number_list(body)
                if vals is None and not inner:
                    vals = numbers(body)
                if vals is None or len(vals) != 4:
                    out.problems.append(
                        f"{where}: expected [x1, y1, x2, y2], cannot read {text[start:end]!r}"
                    )
                    continue
                box = self.finish_box(from_grid(vals, image_size, SCALE), image_size, out.problems, where)
                if box is not None:
                    out.append(Grounding(phrase, box, (start, end)))
        unclosed = text.count("<box>") - boxed
        if unclosed > 0:
            out.problems.append(f"{unclosed} <box> without a readable </box> (truncated?)")
        return out

    def write_box(self, box, image_size, **geometry):
        x1, y1, x2, y2 = to_grid(box, image_size, SCALE)
        return f"[{x1}, {y1}, {x2}, {y2}]"

    def write(self, groundings, image_size, **geometry):
        parts = []
        for phrase, boxes in runs(groundings):
            ref = f"<ref>{phrase}</ref>" if phrase else ""
            inner = ", ".join(self.write_box(b, image_size) for b in boxes)
            parts.append((phrase, f"{ref}<box>[{inner}]</box>"))
        return join_inline(parts)


CODEC = register(
    InternVLCodec(
        name="internvl",
        description=__doc__.strip(),
        examples=["<ref>a man</ref><box>[[250, 250, 750, 1000]]</box>"],
    )
)
