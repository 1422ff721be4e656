"""Plain pixel boxes: ``phrase [x1, y1, x2, y2]`` in pixels of the original image, e.g.
``a man [160, 120, 480, 480]``.

Written as integers (rounded); read as is (decimals accepted). Span: the whole ``[x1, y1, x2, y2]``. Phrase:
the words just before the box (at most 8; see :mod:`spr.formats.text`).
"""

from .bracket import BracketCodec
from .registry import register

CODEC = register(
    BracketCodec(
        name="plain_pixel",
        description=__doc__.strip(),
        examples=["a man [160, 120, 480, 480], a cup [320, 240, 560, 360]"],
        scale=None,
    )
)
