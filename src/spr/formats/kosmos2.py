"""Kosmos-2: ``<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>``: a box is the
pair (upper-left patch, lower-right patch) on a 32x32 grid of the image. Several boxes of one phrase share the
object, separated by ``</delimiter_of_multi_objects/>``.

Converted exactly as transformers' Kosmos-2 processor does (``coordinate_to_patch_index`` /
``patch_index_to_coordinate`` in ``transformers.models.kosmos2.processing_kosmos2``): written as
``ul = floor(x1 * 32)``, ``lr = ceil(x2 * 32 - 1)`` per axis on normalized coordinates; read back at the
patch centres, or at the patch edges when both corners share a row or a column. Quantization is coarse
(1/32 of the image). Span: the two ``<patch_index_NNNN>`` tokens of one box, so replacing them keeps the
object valid. Phrase: the last ``<phrase>...</phrase>`` before the object (leading spaces stripped).
"""

from __future__ import annotations

import math
import re

from .base import Codec, Grounding, Parsed
from .registry import register
from .text import FIRST, join_inline, runs, tagged_phrase

PATCHES = 32  # per side: 1024 patch index tokens
_DELIM = "</delimiter_of_multi_objects/>"
_OBJECT = re.compile(
    r"<object>((?:\s*(?:<patch_index_\d{1,9}>|</delimiter_of_multi_objects/>))*)\s*(</object>)?"
)
_PATCH = re.compile(r"<patch_index_(\d{1,9})>")
_PHRASE = re.compile(r"<phrase>([^<]*)</phrase>")


def patch_index_to_coordinate(ul_idx: int, lr_idx: int, num_patches_per_side: int = PATCHES):
    """Normalized (x1, y1, x2, y2) of a patch pair, as transformers' Kosmos-2 processor computes it."""
    cell = 1.0 / num_patches_per_side
    ul_x, ul_y = ul_idx % num_patches_per_side, ul_idx // num_patches_per_side
    lr_x, lr_y = lr_idx % num_patches_per_side, lr_idx // num_patches_per_side
    if ul_idx == lr_idx or ul_x == lr_x or ul_y == lr_y:
        return ul_x * cell, ul_y * cell, lr_x * cell + cell, lr_y * cell + cell
    return ul_x * cell + cell / 2, ul_y * cell + cell / 2, lr_x * cell + cell / 2, lr_y * cell + cell / 2


def coordinate_to_patch_index(bbox, num_patches_per_side: int = PATCHES) -> tuple[int, int]:
    """Patch pair of a normalized box, as transformers' Kosmos-2 processor computes it, with the corners kept
    on the grid (a corner on the image's far edge stays in the last patch)."""
    x1, y1, x2, y2 = bbox
    top = num_patches_per_side - 1
    ul_x = min(max(math.floor(x1 * num_patches_per_side), 0), top)
    ul_y = min(max(math.floor(y1 * num_patches_per_side), 0), top)
    lr_x = min(max(math.ceil(x2 * num_patches_per_side - 1), ul_x), top)
    lr_y = min(max(math.ceil(y2 * num_patches_per_side - 1), ul_y), top)
    return ul_y * num_patches_per_side + ul_x, lr_y * num_patches_per_side + lr_x


class Kosmos2Codec(Codec):
    def read(self, text, image_size, **geometry):
        out = Parsed()
        w, h = image_size
        prev_end, previous = 0, FIRST
        n = 0
        for obj in _OBJECT.finditer(text):
            phrase = tagged_phrase(text[prev_end : obj.start()], _PHRASE, previous)
            prev_end, previous = obj.end(), phrase
            if obj.group(2) is None:
                out.problems.append(f"<object> at character {obj.start()} is not closed (truncated?)")
            base = obj.start(1)
            for piece, piece_start in _split(obj.group(1), base):
                n += 1
                where = f"box {n}"
                patches = [
                    (int(m.group(1)), piece_start + m.start(), piece_start + m.end())
                    for m in _PATCH.finditer(piece)
                ]
                if len(patches) != 2:
                    out.problems.append(f"{where}: expected 2 patch indices, found {len(patches)}: skipped")
                    continue
                (ul, start, _), (lr, _, end) = patches
                if max(ul, lr) >= PATCHES * PATCHES:
                    out.problems.append(f"{where}: patch index beyond the {PATCHES}x{PATCHES} grid: skipped")
                    continue
                x1, y1, x2, y2 = patch_index_to_coordinate(ul, lr)
                box = self.finish_box((x1 * w, y1 * h, x2 * w, y2 * h), image_size, out.problems, where)
                if box is not None:
                    out.append(Grounding(phrase, box, (start, end)))
        unopened = text.count("<patch_index_") - sum(
            len(_PATCH.findall(o.group(1))) for o in _OBJECT.finditer(text)
        )
        if unopened > 0:
            out.problems.append(f"{unopened} patch index token(s) outside <object>...</object>: skipped")
        return out

    def write_box(self, box, image_size, **geometry):
        w, h = image_size
        ul, lr = coordinate_to_patch_index((box[0] / w, box[1] / h, box[2] / w, box[3] / h))
        return f"<patch_index_{ul:04d}><patch_index_{lr:04d}>"

    def write(self, groundings, image_size, **geometry):
        parts = []
        for phrase, boxes in runs(groundings):
            ref = f"<phrase>{phrase}</phrase>" if phrase else ""
            inner = _DELIM.join(self.write_box(b, image_size) for b in boxes)
            parts.append((phrase, f"{ref}<object>{inner}</object>"))
        return join_inline(parts)


def _split(body: str, base: int):
    """The pieces of an object's body between delimiters, each as (text, absolute start)."""
    start = 0
    while True:
        i = body.find(_DELIM, start)
        piece = body[start:] if i < 0 else body[start:i]
        if piece.strip():
            yield piece, base + start
        if i < 0:
            return
        start = i + len(_DELIM)


CODEC = register(
    Kosmos2Codec(
        name="kosmos2",
        description=__doc__.strip(),
        examples=[
            "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>"
        ],
    )
)
