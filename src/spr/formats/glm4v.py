"""GLM-4.1V, GLM-4.5V, GLM-4.6V (and 4.6V-Flash): ``<|begin_of_box|>[[x1,y1,x2,y2]]<|end_of_box|>``, each number
per-mille of the image width (x) or height (y) (zai-org/GLM-V README, "Grounding": "normalized by the image
width (for x) or height (for y) and scaled by 1000"), so no geometry is needed. Read as ``v / 1000 * W``;
written rounded and clamped to 0..1000.

The box tokens mark the answer, not only boxes: the same ``<|begin_of_box|>42<|end_of_box|>`` wraps a number or a
word (GLM-V's reward code, ``glmv_reward/src/glmv_reward/utils/text.py`` ``find_boxed_content``, takes whatever
stands between them). So a block counts as boxes only when it holds numbers, brackets and separators alone, and
its numbers come in fours; any other block is reported (``box tokens hold no coordinates``) and skipped.

Reading is tolerant of the bracket style, which the README says varies (``[]``, ``[[]]``, ``()``, ``<>``):
``[[x1,y1,x2,y2]]``, ``[x1,y1,x2,y2]``, ``(x1,y1,x2,y2)``, bare numbers, and several boxes in one block
(``[[..],[..]]``, as GLM answers a question with several objects: without labels). Thinking (``<think>...</think>``,
GLM-4.1V-Thinking and GLM-4.5V by default) is skipped: only text after the last ``</think>`` is read. Without
any box tokens in the answer, ``[x1, y1, x2, y2]`` lists of four numbers are read as boxes (GLM sometimes
answers a "[[x1,y1,x2,y2]]" prompt without them). An unclosed ``<|begin_of_box|>`` is reported (truncated).

Span: the four numbers' own bracket (``[x1,y1,x2,y2]`` or ``(..)``), or the block's inside when they have none;
phrase: the words before the block (at most 8, see :mod:`spr.formats.text`); boxes of one block share it.
"""

from __future__ import annotations

import re

from .base import Codec, Grounding, Parsed
from .grid import from_grid, to_grid
from .registry import register
from .text import FIRST, NUMBER, answer_start, join_inline, number_list, numbers, plain_phrase, runs

SCALE = 1000
BEGIN, END = "<|begin_of_box|>", "<|end_of_box|>"
_BLOCK = re.compile(re.escape(BEGIN) + r"(.*?)" + re.escape(END), re.S)
_GROUP = re.compile(r"[\[(<]\s*([^\[\]()<>]*?)\s*[\])>]")  # innermost bracket of any style
_COORDINATES_ONLY = re.compile(r"[\s\d.,;+\-\[\]()<>]*")
_LIST = re.compile(r"\[([^\[\]]*)\]")


class Glm4vCodec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        start, problem = answer_start(text)
        if problem:
            out.problems.append(problem)
            return out
        blocks = list(_BLOCK.finditer(text, start))
        if blocks:
            self._read_blocks(text, start, blocks, image_size, out)
        elif BEGIN not in text[start:]:
            self._read_bare(text, start, image_size, out)
        unclosed = text.count(BEGIN, start) - len(blocks)
        if unclosed > 0:
            out.problems.append(f"{unclosed} {BEGIN} without a readable {END} (truncated?)")
        return out

    def _read_blocks(self, text, start, blocks, image_size, out: Parsed) -> None:
        prev_end, previous, n = start, FIRST, 0
        for b, m in enumerate(blocks):
            body, lo = m.group(1), m.start(1)
            phrase = plain_phrase(text[prev_end : m.start()], previous)
            prev_end, previous = m.end(), phrase
            vals = numbers(body)
            if not vals or not _COORDINATES_ONLY.fullmatch(body) or len(vals) % 4:
                out.problems.append(
                    f"block {b + 1}: box tokens hold no coordinates ({body.strip()[:40]!r}): skipped"
                )
                continue
            groups = [g for g in _GROUP.finditer(body) if numbers(g.group(1))]
            if groups and all(len(numbers(g.group(1))) == 4 for g in groups):
                items = [(numbers(g.group(1)), lo + g.start(), lo + g.end()) for g in groups]
            else:  # bare numbers, or one bracket around all of them: in fours, each spanning its own numbers
                nums = list(NUMBER.finditer(body))
                items = [
                    (
                        [float(x.group()) for x in nums[i : i + 4]],
                        lo + nums[i].start(),
                        lo + nums[i + 3].end(),
                    )
                    for i in range(0, len(nums), 4)
                ]
            for vals4, s, e in items:
                n += 1
                box = self.finish_box(
                    from_grid(vals4, image_size, SCALE), image_size, out.problems, f"box {n}"
                )
                if box is not None:
                    out.append(Grounding(phrase, box, (s, e)))

    def _read_bare(self, text, start, image_size, out: Parsed) -> None:
        prev_end, previous, n = start, FIRST, 0
        for m in _LIST.finditer(text, start):
            vals = number_list(m.group(1))
            if vals is None or len(vals) != 4:
                continue  # prose, or not a box
            n += 1
            phrase = previous = plain_phrase(text[prev_end : m.start()], previous)
            prev_end = m.end()
            box = self.finish_box(from_grid(vals, image_size, SCALE), image_size, out.problems, f"box {n}")
            if box is not None:
                out.append(Grounding(phrase, box, (m.start(), m.end())))

    def write_box(self, box, image_size, **geometry):
        return "[" + ",".join(str(v) for v in to_grid(box, image_size, SCALE)) + "]"

    def write(self, groundings, image_size, **geometry):
        pieces = []
        for phrase, boxes in runs(groundings):
            block = BEGIN + "[" + ",".join(self.write_box(b, image_size) for b in boxes) + "]" + END
            pieces.append((phrase, f"{phrase} {block}" if phrase else block))
        return join_inline(pieces)


CODEC = register(
    Glm4vCodec(
        name="glm4v",
        description=__doc__.strip(),
        examples=["The man <|begin_of_box|>[[250,250,750,1000]]<|end_of_box|> holds a cup."],
    )
)
