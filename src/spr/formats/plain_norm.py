"""Plain normalized boxes: ``phrase [x1, y1, x2, y2]`` with floats in 0-1 of the image (``x / W``), as
LLaVA-1.5-style models write them, e.g. ``a man [0.25, 0.25, 0.75, 1.0]``.

Written with 3 decimals; read as ``v * W``. Span: the whole ``[x1, y1, x2, y2]``. Phrase: the words just
before the box (at most 8; see :mod:`spr.formats.text`).
"""

from .bracket import BracketCodec
from .registry import register

CODEC = register(
    BracketCodec(
        name="plain_norm",
        description=__doc__.strip(),
        examples=["a man [0.25, 0.25, 0.75, 1.0] and a cup [0.5, 0.5, 0.875, 0.75]"],
        scale=1,
        decimals=3,
    )
)
