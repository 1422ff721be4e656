"""Ferret: ``phrase [x1, y1, x2, y2]`` with integers on a 1000 grid of the image (``x / W * 1000``), e.g.
``A man [120, 50, 480, 990] holding a cup [450, 300, 560, 420]``.

Written rounded and clamped to 0..999 (Ferret's grid stops below 1000); read as ``v / 1000 * W``.
Span: the whole ``[x1, y1, x2, y2]``. Phrase: the words just before the box since the previous box or clause
punctuation (at most 8; see :mod:`spr.formats.text`); boxes separated only by commas or "and" share a phrase.
"""

from .bracket import BracketCodec
from .registry import register

CODEC = register(
    BracketCodec(
        name="ferret",
        description=__doc__.strip(),
        examples=["A man [120, 50, 480, 990] holding a cup [450, 300, 560, 420]."],
        scale=1000,
        clamp=999,
    )
)
