"""SPR query regions: grow a region from a random object by merging the nearest object until it holds more
than four objects.

Choices the paper leaves open, made here:
- *Nearest*: the gap between the current region box and the object's box (0 when they touch or overlap), ties
  broken by the distance between their centres. The region box after each merge is the union of the selected
  boxes.
- *Objects of a region*: every annotated object with at least half of its area inside the region box
  (``inside_fraction``); the selected objects are always inside.
- Determinism: each image draws from its own generator seeded by (seed, image id), so the regions of an image do
  not change when other images are added, removed or skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from . import boxes as B
from .data.coco import AnnotatedImage, AnnotatedObject
from .data.records import Region


@dataclass
class RegionConfig:
    objects_per_region: int = 5
    """Grow until the region holds at least this many selected objects (the paper: more than four)."""
    per_image: int = 1
    """Regions per image, each from a different seed object; identical regions are kept once."""
    min_area_fraction: float = 0.0
    """Skip regions whose box covers less than this fraction of the image."""
    max_area_fraction: float = 1.0
    """Skip regions whose box covers more than this fraction of the image."""
    inside_fraction: float = 0.5
    """An object belongs to the region when at least this fraction of its area lies inside the region box."""
    skip_crowd: bool = True
    """Ignore crowd annotations (iscrowd=1), whose boxes cover groups rather than objects."""
    seed: int = 0


def _gap(region: tuple[float, float, float, float], boxes: np.ndarray) -> np.ndarray:
    dx = np.maximum(0.0, np.maximum(boxes[:, 0] - region[2], region[0] - boxes[:, 2]))
    dy = np.maximum(0.0, np.maximum(boxes[:, 1] - region[3], region[1] - boxes[:, 3]))
    return np.hypot(dx, dy)


def _centre_distance(region, boxes: np.ndarray) -> np.ndarray:
    cx, cy = (region[0] + region[2]) / 2, (region[1] + region[3]) / 2
    return np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - cx, (boxes[:, 1] + boxes[:, 3]) / 2 - cy)


def grow_region(boxes: np.ndarray, seed_index: int, target: int) -> list[int]:
    """Indices of the objects selected by growing from ``seed_index`` until ``target`` are selected."""
    selected = [seed_index]
    region = tuple(boxes[seed_index])
    while len(selected) < min(target, len(boxes)):
        rest = np.array([i for i in range(len(boxes)) if i not in selected])
        order = np.lexsort((_centre_distance(region, boxes[rest]), _gap(region, boxes[rest])))
        selected.append(int(rest[order[0]]))
        region = B.union_box(boxes[selected])
    return selected


def regions_for_image(image: AnnotatedImage, config: RegionConfig) -> tuple[list[Region], str | None]:
    """The regions of one image, or ([], reason) when it has none."""
    objects: list[AnnotatedObject] = [o for o in image.objects if not (config.skip_crowd and o.iscrowd)]
    if len(objects) < config.objects_per_region:
        return [], f"fewer than {config.objects_per_region} objects"
    boxes = np.array([o.box for o in objects], dtype=np.float64)
    rng = random.Random(f"{config.seed}:{image.id}")
    seeds = list(range(len(objects)))
    rng.shuffle(seeds)
    image_area = float(image.size[0] * image.size[1])
    regions: list[Region] = []
    seen_boxes: set = set()
    reason = "no region within the area bounds"
    for seed_index in seeds:
        if len(regions) >= config.per_image:
            break
        selected = grow_region(boxes, seed_index, config.objects_per_region)
        region_box = B.union_box(boxes[selected])
        frac = B.area([region_box])[0] / image_area
        if not (config.min_area_fraction <= frac <= config.max_area_fraction):
            continue
        key = tuple(round(v, 3) for v in region_box)
        if key in seen_boxes:
            continue
        seen_boxes.add(key)
        inside = B.intersection_over_area(boxes, [region_box])[:, 0] >= config.inside_fraction
        inside[selected] = True
        members = [objects[i] for i in np.flatnonzero(inside)]
        regions.append(
            Region(
                id=f"{image.id}-{len(regions)}",
                image=str(image.path),
                image_size=list(image.size),
                region_box=[float(v) for v in region_box],
                objects=[{"label": o.label, "box": [float(v) for v in o.box]} for o in members],
                source=f"image={image.id};seed_object={objects[seed_index].annotation_id}",
                image_id=image.id,
            )
        )
    return regions, (None if regions else reason)


# ---------------------------------------------------------------------------------------------- CLI

HELP = "Build SPR query regions (more than four nearby objects) from COCO-style annotations."


def add_arguments(p) -> None:
    p.add_argument("--annotations", required=True, help="COCO-style detection JSON (COCO, Objects365, LVIS)")
    p.add_argument("--images", required=True, help="directory the annotations' file_name entries are relative to")
    p.add_argument("--out", required=True, help="regions.jsonl to write (existing ids are kept: resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-image", type=int, default=1, help="regions per image")
    p.add_argument("--objects", type=int, default=5, help="objects per region (the paper: more than four)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many regions in all")
    p.add_argument("--min-area", type=float, default=0.0, help="minimum region area as a fraction of the image")
    p.add_argument("--max-area", type=float, default=1.0, help="maximum region area as a fraction of the image")
    p.add_argument("--include-crowd", action="store_true", help="use crowd annotations as objects too")
    p.add_argument("--on-error", choices=["skip", "stop"], default="skip", help="bad annotation records: skip and count, or stop")


def run(args) -> int:
    from tqdm import tqdm

    from .data.coco import Problems, load_coco
    from .data.jsonl import JsonlWriter
    from .table import markdown_table

    config = RegionConfig(
        objects_per_region=args.objects,
        per_image=args.per_image,
        min_area_fraction=args.min_area,
        max_area_fraction=args.max_area,
        skip_crowd=not args.include_crowd,
        seed=args.seed,
    )
    problems = Problems()
    images = load_coco(args.annotations, args.images, on_error=args.on_error, problems=problems)
    skipped: Problems = Problems()
    total = 0
    with JsonlWriter(args.out) as writer:
        for image in tqdm(images, desc="regions", unit="img"):
            if args.limit is not None and total >= args.limit:
                break
            regions, reason = regions_for_image(image, config)
            if reason:
                skipped.add(reason, f"image {image.id}")
            for region in regions:
                if args.limit is not None and total >= args.limit:
                    break
                writer.write(region)
                total += 1
        written, existing = writer.written, len(writer.ids) - writer.written
    rows = [["images read", len(images)], ["regions written", written], ["regions already present", existing]]
    rows += [[f"images skipped: {k}", v] for k, v in sorted(skipped.counts.items())]
    rows += [[f"records skipped: {k}", v] for k, v in sorted(problems.counts.items())]
    print(markdown_table(["", "count"], rows))
    for kind, examples in problems.examples.items():
        for e in examples:
            print(f"  {kind}: {e}")
    return 0
