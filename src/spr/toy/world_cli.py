"""`spr toy world`: generate the shapes world's train / val / test splits (layout: :mod:`spr.toy.dataset`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt, required
from ..options import Progress
from .world import WorldPreset

HELP = (
    "Generate the synthetic shapes world: images, COCO annotations, referring expressions, captions, splits."
)


@dataclass
class WorldCommandConfig(WorldPreset, Progress):
    """`spr toy world`. The difficulty options default to the preset's values."""

    out: str = opt(required, "directory to write (re-running with the same settings resumes)")
    seed: int = opt(0, "world seed; each split draws its scenes from its own seeds")
    train: int = opt(1000, "training scenes")
    val: int = opt(200, "validation scenes")
    test: int = opt(200, "held-out test scenes")
    size: int | None = opt(None, "image side in pixels", default_text="the preset's (112)")
    objects: list[int] | None = opt(
        None, "objects per scene: MIN MAX (at least 5 for SPR regions)", default_text="the preset's"
    )
    object_size: list[float] | None = opt(
        None, "object side as a fraction of the image side: MIN MAX", default_text="the preset's"
    )
    shapes: list[str] | None = opt(
        None, "shapes to draw (circle, square, triangle, diamond, star, ring)", default_text="the preset's"
    )
    colours: list[str] | None = opt(
        None, "colours (red, green, blue, yellow, purple, orange, cyan, black)", default_text="the preset's"
    )
    backgrounds: list[str] | None = opt(
        None, "background kinds (plain, noise, stripes)", default_text="the preset's"
    )
    max_overlap: float | None = opt(
        None, "largest shared fraction of the smaller of two boxes (0: none)", default_text="the preset's"
    )
    min_visible: float | None = opt(
        None, "smallest visible fraction of each object", default_text="the preset's"
    )
    repeat_label: float | None = opt(
        None, "chance that an object repeats a label already in the scene", default_text="the preset's"
    )
    per_object: int = opt(3, "referring expressions per referred object (1-9)")
    size_margin: float = opt(1.3, "size factor needed for 'small' / 'large'")
    relations: bool = opt(True, "relational expressions ('the circle left of ...')")
    rec_kinds: list[str] = opt(
        [], "expression kinds written to rec.jsonl (label, shape, colour, size, relation)", default_text="all"
    )
    overwrite: bool = opt(False, "replace a world in --out made with other settings")

    def __post_init__(self):
        for name in ("objects", "object_size"):
            if getattr(self, name) is not None and len(getattr(self, name)) != 2:
                raise ValueError(f"{name} takes two values, MIN MAX; got {getattr(self, name)}")


Config = WorldCommandConfig


def _listed(values):
    """Comma-separated values given as one argument ("circle,square") or several."""
    if values is None:
        return None
    return tuple(v.strip() for item in values for v in str(item).split(",") if v.strip())


def world_config(c: WorldCommandConfig):
    import dataclasses

    from .world import PRESETS, WorldConfig

    overrides = {
        "image_size": c.size, "objects": c.objects, "object_size": c.object_size, "shapes": _listed(c.shapes),
        "colours": _listed(c.colours), "backgrounds": _listed(c.backgrounds), "max_overlap": c.max_overlap,
        "min_visible": c.min_visible, "repeat_label": c.repeat_label,
    }  # fmt: skip
    base = dataclasses.asdict(PRESETS[c.preset])
    return WorldConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def run(c: WorldCommandConfig) -> int:
    from ..table import markdown_table
    from .dataset import write_world
    from .expressions import RELATIONS, ExpressionConfig

    config = world_config(c)
    expressions = ExpressionConfig(
        size_margin=c.size_margin,
        per_object=c.per_object,
        relations=RELATIONS if c.relations else (),
        rec_kinds=tuple(c.rec_kinds),
    )
    counts = {"train": c.train, "val": c.val, "test": c.test}
    manifest = write_world(c.out, c.seed, counts, config, expressions, c.overwrite, progress=not c.quiet)
    columns = ["scenes", "objects", "referred objects", "expressions", "captions", "grounded", "seconds"]
    rows = [[split, *(stats.get(k, "") for k in columns)] for split, stats in manifest["splits"].items()]
    print(markdown_table(["split", *columns], rows))
    print(f"shapes world written to {c.out} ({len(config.labels())} labels)")
    return 0
