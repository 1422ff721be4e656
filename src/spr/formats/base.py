"""What every box codec shares: the grounding type, the parse result, and the codec interface.

A codec converts between the program's boxes (float x1, y1, x2, y2 in original-image pixels) and the text one
model family writes. Parsing never raises on model output: what it cannot read goes into ``problems``.

Callers use the public methods (``parse``, ``format_box``, ``render``); they check the caller's arguments
(image size, geometry options, boxes) and raise ``ValueError`` when those are wrong, because a wrong image size
or a misspelt geometry option silently gives wrong coordinates. Subclasses implement ``read``, ``write_box`` and
``write``, and ``resolve_geometry`` when the format depends on more than the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .. import boxes as B

Box = tuple[float, float, float, float]

# What ``Codec.finish_box`` says when the box it returns is not the box the model wrote, or it returns none.
# Rewards that must not pay for a repaired box look for these words (:func:`is_repair`, spr.rewards).
NON_FINITE = "non-finite coordinate"
SWAPPED = "corners in the wrong order, swapped"
CLIPPED = "box outside the image, clipped"
ZERO_AREA = "box of zero area, dropped"
REPAIRS = (NON_FINITE, SWAPPED, CLIPPED, ZERO_AREA)


def is_repair(problem: str) -> bool:
    """Whether a parse problem (``"<where>: <what>"``, perhaps prefixed) says a box was repaired or dropped."""
    return any(f": {r}" in problem for r in REPAIRS)


@dataclass
class Grounding:
    """A phrase and its box. ``span`` is where the box's own text sits in the parsed text (start, end), so that
    refinement can replace exactly that box; it is None for groundings that were not parsed from text."""

    phrase: str | None
    box: Box
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


def location_quads(run, token, problems: list[str]) -> list[tuple[list[int], tuple[int, int]]]:
    """The location tokens of ``run`` (a regex match of consecutive tokens; ``token`` matches one, its value in
    group 1) in fours: each four's values and the characters they span. Tokens left over (fewer than four) are a
    problem."""
    locs = [
        (int(m.group(1)), run.start() + m.start(), run.start() + m.end())
        for m in token.finditer(run.group(0))
    ]
    whole = len(locs) - len(locs) % 4
    if whole < len(locs):
        problems.append(f"{len(locs) % 4} location token(s) at character {locs[whole][1]} do not make a box")
    return [([v for v, _, _ in locs[i : i + 4]], (locs[i][1], locs[i + 3][2])) for i in range(0, whole, 4)]


def check_image_size(image_size) -> tuple[float, float]:
    """``(W, H)`` as two positive finite numbers, or a ValueError that says what was passed."""
    try:
        w, h = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise ValueError(f"image_size must be two positive numbers (width, height), got {image_size!r}")
    return (w, h)


def as_grounding(g) -> Grounding:
    """A Grounding from a Grounding (or any object with .phrase and .box), a ``{"phrase", "box"}`` dict or a
    ``(phrase, box)`` pair."""
    if isinstance(g, Grounding):
        return g
    if hasattr(g, "phrase") and hasattr(g, "box"):
        return Grounding(g.phrase, tuple(g.box))
    if isinstance(g, dict):
        return Grounding(g.get("phrase"), tuple(g["box"]))
    phrase, box = g
    return Grounding(phrase, tuple(box))


@dataclass
class Codec:
    """Base class of box codecs. Subclasses set ``name`` and implement ``read``, ``write_box`` and ``write``."""

    name: str = ""
    description: str = ""
    examples: list[str] = field(default_factory=list)

    # Geometry options this format understands (beyond the image size); anything else is a caller's mistake.
    geometry_keys: ClassVar[tuple[str, ...]] = ()

    # ---- public API --------------------------------------------------------------------------------------
    def parse(self, text: str, image_size: tuple[int, int], **geometry) -> Parsed:
        """Groundings found in ``text`` (boxes in original-image pixels); never raises on model output."""
        size = check_image_size(image_size)
        geo = self.resolve_geometry(size, **geometry)
        if not isinstance(text, str):
            return Parsed([], [f"expected text, got {type(text).__name__}"])
        try:
            return self.read(text, size, **geo)
        except Exception as e:  # noqa: BLE001  a parser bug must not stop a long generation run
            return Parsed(
                [], [f"{self.name} parser failed on this text ({type(e).__name__}: {e}); please report"]
            )

    def format_box(self, box, image_size: tuple[int, int], **geometry) -> str:
        """The text of one box alone, exactly as it stands in this format (what ``Grounding.span`` points at)."""
        size = check_image_size(image_size)
        geo = self.resolve_geometry(size, **geometry)
        return self.write_box(self.checked_box(box, size), size, **geo)

    def render(self, groundings, image_size: tuple[int, int], **geometry) -> str:
        """Text in this format for groundings (Grounding, dict or (phrase, box); phrase may be None)."""
        size = check_image_size(image_size)
        geo = self.resolve_geometry(size, **geometry)
        gs = []
        for g in groundings:
            g = as_grounding(g)
            gs.append(Grounding(g.phrase, self.checked_box(g.box, size)))
        return self.write(gs, size, **geo)

    # ---- what subclasses implement -----------------------------------------------------------------------
    def resolve_geometry(self, image_size: tuple[float, float], **geometry) -> dict:
        """The geometry ``read``/``write`` need, from the caller's options; rejects options it does not know."""
        unknown = sorted(set(geometry) - set(self.geometry_keys))
        if unknown:
            known = ", ".join(self.geometry_keys) or "none"
            raise ValueError(
                f"box format {self.name!r} has no geometry option {', '.join(unknown)} (it takes: {known})"
            )
        return dict(geometry)

    def read(self, text: str, image_size: tuple[float, float], **geometry) -> Parsed:
        raise NotImplementedError

    def write_box(self, box: Box, image_size: tuple[float, float], **geometry) -> str:
        raise NotImplementedError

    def write(self, groundings: list[Grounding], image_size: tuple[float, float], **geometry) -> str:
        raise NotImplementedError

    # ---- shared helpers ----------------------------------------------------------------------------------
    def checked_box(self, box, image_size) -> Box:
        """A caller's box clipped to the image; ValueError when it is not a usable box."""
        why = B.problem(box)
        if why is None:
            clipped = B.clip(box, image_size)
            if B.is_valid(clipped):
                return clipped
            why = f"no area left inside the {image_size[0]:g}x{image_size[1]:g} image"
        raise ValueError(f"cannot write box {box!r} in format {self.name!r}: {why}")

    def finish_box(self, box, image_size, problems: list[str], where: str, slack: float = 0.0) -> Box | None:
        """A box read from model numbers becomes a checked original-pixel box, or a problem and None.

        ``slack``: how far (pixels) the format's own rounding can put a corner outside the image; such a corner
        is clipped without a problem."""
        vals = [float(v) for v in box]
        if not all(math.isfinite(v) for v in vals):
            problems.append(f"{where}: {NON_FINITE} {vals}")
            return None
        x1, y1, x2, y2 = vals
        if x2 < x1 or y2 < y1:
            problems.append(f"{where}: {SWAPPED}")
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        clipped = B.clip((x1, y1, x2, y2), image_size)
        if max(abs(a - b) for a, b in zip(clipped, (x1, y1, x2, y2))) > slack:
            problems.append(f"{where}: {CLIPPED}")
        if not B.is_valid(clipped):
            problems.append(f"{where}: {ZERO_AREA}")
            return None
        return clipped
