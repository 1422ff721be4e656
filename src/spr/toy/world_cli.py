"""`spr toy world`: generate the shapes world's train / val / test splits (layout: :mod:`spr.toy.dataset`)."""

from __future__ import annotations

import dataclasses

HELP = (
    "Generate the synthetic shapes world: images, COCO annotations, referring expressions, captions, splits."
)


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_arguments(p) -> None:
    from .world import BACKGROUNDS, COLOURS, PRESETS, SHAPES

    p.add_argument(
        "--out", required=True, help="directory to write (re-running with the same settings resumes)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="world seed; each split draws its scenes from its own seeds"
    )
    p.add_argument("--train", type=int, default=1000, help="training scenes")
    p.add_argument("--val", type=int, default=200, help="validation scenes")
    p.add_argument("--test", type=int, default=200, help="held-out test scenes")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="difficulty preset; the options below override it",
    )
    g = p.add_argument_group("difficulty (default: the preset's value)")
    g.add_argument("--size", type=int, help="image side in pixels (default 112)")
    g.add_argument(
        "--objects",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="objects per scene (at least 5 for SPR regions)",
    )
    g.add_argument(
        "--object-size",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="object side as a fraction of the image side",
    )
    g.add_argument("--shapes", type=_names, help=f"comma-separated, from {','.join(SHAPES)}")
    g.add_argument("--colours", type=_names, help=f"comma-separated, from {','.join(COLOURS)}")
    g.add_argument("--backgrounds", type=_names, help=f"comma-separated, from {','.join(BACKGROUNDS)}")
    g.add_argument(
        "--max-overlap", type=float, help="largest shared fraction of the smaller of two boxes (0: none)"
    )
    g.add_argument("--min-visible", type=float, help="smallest visible fraction of each object")
    g.add_argument(
        "--repeat-label", type=float, help="chance that an object repeats a label already in the scene"
    )
    e = p.add_argument_group("referring expressions")
    e.add_argument("--per-object", type=int, default=3, help="expressions per referred object (1-9)")
    e.add_argument("--size-margin", type=float, default=1.3, help="size factor needed for 'small' / 'large'")
    e.add_argument(
        "--no-relations", action="store_true", help="no relational expressions ('the circle left of ...')"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a world in --out made with other settings"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args):
    from .world import PRESETS, WorldConfig

    overrides = {
        "image_size": args.size, "objects": args.objects, "object_size": args.object_size, "shapes": args.shapes,
        "colours": args.colours, "backgrounds": args.backgrounds, "max_overlap": args.max_overlap,
        "min_visible": args.min_visible, "repeat_label": args.repeat_label,
    }  # fmt: skip
    base = dataclasses.asdict(PRESETS[args.preset])
    return WorldConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def run(args) -> int:
    from ..table import markdown_table
    from .dataset import write_world
    from .expressions import RELATIONS, ExpressionConfig

    config = config_from_args(args)
    expressions = ExpressionConfig(
        size_margin=args.size_margin,
        per_object=args.per_object,
        relations=() if args.no_relations else RELATIONS,
    )
    counts = {"train": args.train, "val": args.val, "test": args.test}
    manifest = write_world(
        args.out, args.seed, counts, config, expressions, args.overwrite, progress=not args.quiet
    )
    columns = ["scenes", "objects", "referred objects", "expressions", "captions", "grounded", "seconds"]
    rows = [[split, *(stats.get(c, "") for c in columns)] for split, stats in manifest["splits"].items()]
    print(markdown_table(["split", *columns], rows))
    print(f"shapes world written to {args.out} ({len(config.labels())} labels)")
    return 0
