"""What every box codec shares: the grounding type, the parse result, and the codec interface.

A codec converts between the program's boxes (float x1, y1, x2, y2 in original-image pixels) and the text one
model family writes. Parsing never raises on model output: what it cannot read goes into ``problems``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import boxes as B


@dataclass
class Grounding:
    """A phrase and its box. ``span`` is where the box's own text sits in the parsed text (start, end), so that
    refinement can replace exactly that box; it is None for groundings that were not parsed from text."""

    phrase: str | None
    box: tuple[float, float, float, float]
    span: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {
            "phrase": self.phrase,
            "box": [float(v) for v in self.box],
            "span": list(self.span) if self.span else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Grounding:
        span = d.get("span")
        return cls(d.get("phrase"), tuple(float(v) for v in d["box"]), tuple(span) if span else None)


class Parsed(list):
    """A list of :class:`Grounding` with ``problems``: one message per piece of text that could not be read."""

    def __init__(self, groundings=(), problems=None):
        super().__init__(groundings)
        self.problems: list[str] = list(problems or [])


@dataclass
class Codec:
    """Base class of box codecs. Subclasses set ``name`` and implement ``parse`` and ``format_box``."""

    name: str = ""
    description: str = ""
    examples: list[str] = field(default_factory=list)

    def parse(self, text: str, image_size: tuple[int, int], **geometry) -> Parsed:
        raise NotImplementedError

    def format_box(self, box, image_size: tuple[int, int], **geometry) -> str:
        """The text of one box alone, as it stands in this format (what ``span`` points at)."""
        raise NotImplementedError

    def render(self, groundings, image_size: tuple[int, int], **geometry) -> str:
        """Text in this format for a list of groundings (phrase may be None)."""
        raise NotImplementedError

    # Shared helper: a box read from model numbers becomes a checked original-pixel box, or a problem.
    def finish_box(
        self, box, image_size, problems: list[str], where: str
    ) -> tuple[float, float, float, float] | None:
        vals = [float(v) for v in box]
        if not all(math.isfinite(v) for v in vals):
            problems.append(f"{where}: non-finite coordinate {vals}")
            return None
        x1, y1, x2, y2 = vals
        if x2 < x1 or y2 < y1:
            problems.append(f"{where}: corners in the wrong order, swapped")
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        clipped = B.clip((x1, y1, x2, y2), image_size)
        if clipped != (x1, y1, x2, y2):
            problems.append(f"{where}: box outside the image, clipped")
        if not B.is_valid(clipped):
            problems.append(f"{where}: box of zero area, dropped")
            return None
        return clipped
