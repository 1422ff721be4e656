"""The shapes world: seeded scenes of coloured shapes on plain or textured backgrounds.

A scene is a square RGB image and its objects; each object has a shape, a colour, and a tight box (float
``x1, y1, x2, y2`` pixels, the shape's full geometric extent, drawn with anti-aliasing). Its label, the COCO
category name, is ``"<colour> <shape>"`` (``"red circle"``).

Every scene is drawn from its own generator seeded by a string (``make_scene(config, "0:train:17")``), so a
scene does not change when other scenes are added or the counts of a split change, and the same seed gives the
same pixels on every machine (Python's ``random`` and numpy's PCG64, no global state).

Overlap is allowed but bounded: the boxes of two objects may share at most ``max_overlap`` of the smaller box,
and every object keeps at least ``min_visible`` of its own pixels visible after later objects are drawn on top.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from ..config import OptionGroup, opt
from ..errors import UserError

# Saturated, well separated hues; backgrounds stay light and neutral so that colour names are never in doubt.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 65),
    "blue": (40, 80, 215),
    "yellow": (235, 195, 25),
    "purple": (135, 55, 185),
    "orange": (240, 125, 20),
    "cyan": (30, 180, 200),
    "black": (35, 35, 35),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring")
BACKGROUNDS = ("plain", "noise", "stripes")
SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: smooth edges, boxes match the pixels


@dataclass
class WorldConfig:
    """How hard the world is. Sizes are fractions of the image side, so they scale with ``image_size``."""

    image_size: int = 112
    """Side of the square images in pixels."""
    objects: tuple[int, int] = (5, 8)
    """Objects per scene, min and max (inclusive). At least 5 so that SPR regions (more than four objects) exist."""
    object_size: tuple[float, float] = (0.12, 0.3)
    """Side of an object's box as a fraction of the image side, min and max."""
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
    """Shapes to draw; any of circle, square, triangle, diamond, star, ring."""
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
    """Colours to draw; any of red, green, blue, yellow, purple, orange, cyan, black."""
    backgrounds: tuple[str, ...] = BACKGROUNDS
    """Background kinds, drawn uniformly: plain (one light tone), noise (blotchy grain), stripes."""
    max_overlap: float = 0.2
    """Two objects' boxes may share at most this fraction of the smaller box (0 = no overlap)."""
    min_visible: float = 0.75
    """Every object keeps at least this fraction of its pixels visible."""
    repeat_label: float = 0.2
    """Chance that a new object repeats a label already in the scene (then size or relations tell them apart)."""
    colour_jitter: int = 15
    """Each object's colour varies by up to this much per RGB channel."""

    def __post_init__(self) -> None:
        self.objects = tuple(int(v) for v in self.objects)
        self.object_size = tuple(float(v) for v in self.object_size)
        self.shapes, self.colours, self.backgrounds = (
            tuple(self.shapes),
            tuple(self.colours),
            tuple(self.backgrounds),
        )
        self.validate()

    def validate(self) -> None:
        def bad(msg: str):
            raise UserError(f"shapes world: {msg}")

        if self.image_size < 32:
            bad(f"image_size must be at least 32 pixels, got {self.image_size}")
        lo, hi = self.objects
        if not 1 <= lo <= hi <= 99:
            bad(f"objects must be 1 <= min <= max <= 99, got {lo}..{hi}")
        smin, smax = self.object_size
        if not 0 < smin <= smax <= 0.9:
            bad(
                f"object_size must be 0 < min <= max <= 0.9 (fractions of the image side), got {smin}..{smax}"
            )
        if smin * self.image_size < 6:
            bad(
                f"objects of {smin * self.image_size:.1f} px are too small to recognise; raise object_size or image_size"
            )
        for name, chosen, known in (
            ("shape", self.shapes, SHAPES),
            ("colour", self.colours, tuple(COLOURS)),
            ("background", self.backgrounds, BACKGROUNDS),
        ):
            unknown = [v for v in chosen if v not in known]
            if unknown or not chosen:
                bad(f"unknown or no {name}(s) {unknown or '[]'}; choose from {', '.join(known)}")
            if len(set(chosen)) != len(chosen):
                bad(f"{name}s listed twice: {list(chosen)}")
        if not 0 <= self.max_overlap < 1:
            bad(f"max_overlap must be in [0, 1), got {self.max_overlap}")
        if not 0 < self.min_visible <= 1:
            bad(f"min_visible must be in (0, 1], got {self.min_visible}")
        if not 0 <= self.repeat_label <= 1:
            bad(f"repeat_label must be in [0, 1], got {self.repeat_label}")

    def labels(self) -> list[str]:
        """Every label of this world, colour-major: the COCO categories in id order."""
        return [f"{c} {s}" for c in self.colours for s in self.shapes]

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


PRESETS: dict[str, WorldConfig] = {
    "easy": WorldConfig(
        objects=(5, 5),
        object_size=(0.2, 0.3),
        shapes=("circle", "square", "triangle"),
        colours=("red", "green", "blue", "yellow"),
        backgrounds=("plain",),
        max_overlap=0.0,
        repeat_label=0.2,
    ),
    "default": WorldConfig(),
    "hard": WorldConfig(
        objects=(7, 10),
        object_size=(0.08, 0.25),
        shapes=SHAPES,
        colours=tuple(COLOURS),
        max_overlap=0.3,
        min_visible=0.6,
        repeat_label=0.4,
    ),
}


@dataclass
class WorldPreset(OptionGroup):
    preset: Literal["easy", "default", "hard"] = opt(
        "default",
        "shapes-world difficulty preset (the world options given, or a world directory, override it)",
    )


@dataclass
class SceneObject:
    shape: str
    colour: str
    box: tuple[float, float, float, float]
    rgb: tuple[int, int, int] = (0, 0, 0)
    visible: float = 1.0  # fraction of the object's pixels not covered by objects drawn later

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    seed: str
    size: tuple[int, int]  # (W, H)
    background: str
    objects: list[SceneObject] = field(default_factory=list)
    image: Image.Image | None = None


# ------------------------------------------------------------------------------------------- geometry


def _outline(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape with box side ``s`` centred on (cx, cy); circles and rings are 64-gons."""
    r = s / 2
    if shape in ("circle", "ring"):
        return [
            (cx + r * math.cos(2 * math.pi * k / 64), cy + r * math.sin(2 * math.pi * k / 64))
            for k in range(64)
        ]
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":  # five points; the inner radius keeps the arms thick enough to read at small sizes
        r /= math.cos(math.pi / 10)  # the star's box is as wide as the other shapes' boxes
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        # the star's points reach lower than its top is high: centre its box vertically
        ys = [p[1] for p in pts]
        shift = cy - (min(ys) + max(ys)) / 2
        return [(x, y + shift) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _extent(points) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _draw(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, s: float, fill, k: float, hole=None
) -> None:
    """Draw a shape scaled by ``k``; a ring's hole is filled with ``hole`` (or left out of a mask with 0)."""
    r = s / 2
    if shape in ("circle", "ring"):
        draw.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fill)
        if shape == "ring":
            ri = r * 0.55
            draw.ellipse([(cx - ri) * k, (cy - ri) * k, (cx + ri) * k, (cy + ri) * k], fill=hole)
        return
    draw.polygon([(x * k, y * k) for x, y in _outline(shape, cx, cy, s)], fill=fill)


# ----------------------------------------------------------------------------------------- backgrounds


def _background(kind: str, size: int, rng: random.Random, nrng: np.random.Generator) -> np.ndarray:
    """A light, low-contrast, neutral background as uint8 (H, W, 3)."""
    base = np.array([rng.randint(205, 245)] * 3, dtype=np.float32) + np.array(
        [rng.uniform(-8, 8) for _ in range(3)], dtype=np.float32
    )
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "noise":
        coarse = nrng.normal(0, 10, (size // 8 + 1, size // 8 + 1)).astype(np.float32)
        blotches = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
        img += blotches[..., None] + nrng.normal(0, 5, (size, size, 1)).astype(np.float32)
    elif kind == "stripes":
        period = rng.randint(6, 16)
        angle = rng.choice((0.0, 45.0, 90.0, 135.0))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        t = xx * math.cos(math.radians(angle)) + yy * math.sin(math.radians(angle))
        img -= (((t // (period / 2)) % 2) * rng.uniform(10, 22))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- scenes


def _overlap_ok(box, placed: list[SceneObject], max_overlap: float) -> bool:
    for o in placed:
        b = o.box
        w = min(box[2], b[2]) - max(box[0], b[0])
        h = min(box[3], b[3]) - max(box[1], b[1])
        if w <= 0 or h <= 0:
            continue
        smaller = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
        if max_overlap == 0 or w * h > max_overlap * smaller:
            return False
    return True


def _mask(shape: str, cx: float, cy: float, s: float, size: int) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    _draw(ImageDraw.Draw(m), shape, cx, cy, s, fill=1, k=1.0, hole=0)
    return np.asarray(m, dtype=bool)


def _choose_label(config: WorldConfig, placed: list[SceneObject], rng: random.Random) -> tuple[str, str]:
    if placed and rng.random() < config.repeat_label:
        o = rng.choice(placed)
        return o.shape, o.colour
    return rng.choice(config.shapes), rng.choice(config.colours)


def _try_layout(config: WorldConfig, rng: random.Random, n: int, tries_per_object: int = 60):
    """Place up to ``n`` objects; returns the placed objects with their (cx, cy, s) and masks."""
    size = config.image_size
    placed: list[SceneObject] = []
    params: list[tuple[float, float, float]] = []
    masks: list[np.ndarray] = []
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the topmost object at each pixel
    for _ in range(n):
        shape, colour = _choose_label(config, placed, rng)
        for _ in range(tries_per_object):
            s = rng.uniform(*config.object_size) * size
            cx, cy = rng.uniform(1, size - 1), rng.uniform(1, size - 1)
            box = _extent(_outline(shape, cx, cy, s))
            if box[0] < 1 or box[1] < 1 or box[2] > size - 1 or box[3] > size - 1:
                continue
            if not _overlap_ok(box, placed, config.max_overlap):
                continue
            mask = _mask(shape, cx, cy, s, size)
            if not mask.any():
                continue
            new_owner = owner.copy()
            new_owner[mask] = len(placed)
            visible = [float((new_owner[m] == i).mean()) for i, m in enumerate(masks)]
            if any(v < config.min_visible for v in visible):
                continue
            owner = new_owner
            for o, v in zip(placed, visible):
                o.visible = v
            placed.append(SceneObject(shape, colour, tuple(float(v) for v in box)))
            params.append((cx, cy, s))
            masks.append(mask)
            break
    return placed, params


def make_scene(config: WorldConfig, seed: str | int, render: bool = True) -> Scene:
    """The scene of ``seed``: the same seed always gives the same objects and pixels."""
    rng = random.Random(f"shapes-world:{seed}")
    size = config.image_size
    for _ in range(50):
        n = rng.randint(*config.objects)
        placed, params = _try_layout(config, rng, n)
        if len(placed) == n:
            break
    else:
        raise UserError(
            f"shapes world: could not fit {config.objects[0]}-{config.objects[1]} objects of "
            f"{config.object_size[0]:g}-{config.object_size[1]:g} of a {size} px image (seed {seed!r}); "
            "use fewer or smaller objects, or allow more overlap"
        )
    for o in placed:
        o.rgb = tuple(
            int(np.clip(c + rng.randint(-config.colour_jitter, config.colour_jitter), 0, 255))
            for c in COLOURS[o.colour]
        )
    kind = rng.choice(config.backgrounds)
    scene = Scene(seed=str(seed), size=(size, size), background=kind, objects=placed)
    nrng = np.random.default_rng(rng.getrandbits(64))
    bg = _background(kind, size, rng, nrng)
    if render:
        k = SUPERSAMPLE
        big = Image.fromarray(bg).resize((size * k, size * k), Image.NEAREST)
        for o, (cx, cy, s) in zip(placed, params):
            mask = Image.new("L", big.size, 0)  # pasting through a mask leaves a ring's hole untouched
            _draw(ImageDraw.Draw(mask), o.shape, cx, cy, s, fill=255, k=k, hole=0)
            big.paste(o.rgb, mask=mask)
        scene.image = big.resize((size, size), Image.BOX)
    return scene
