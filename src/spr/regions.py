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
from typing import Literal

import numpy as np

from . import boxes as B
from .config import opt, output_settings, required
from .data.coco import AnnotatedImage, AnnotatedObject
from .data.records import Region
from .options import ImageLimit


@dataclass
class RegionConfig(ImageLimit):
    """`spr regions`: SPR query regions from COCO-style annotations."""

    annotations: str = opt(required, "COCO-style detection JSON (COCO, Objects365, LVIS)")
    images: str = opt(required, "directory the annotations' file_name entries are relative to")
    out: str = opt(required, "regions.jsonl to write (ids already there are kept: resumable)")
    seed: int = opt(0, "seed of the random seed objects (each image draws from its own generator)")
    objects_per_region: int = opt(
        5, "grow until the region holds this many selected objects (the paper: more than four)"
    )
    per_image: int = opt(
        1, "regions per image, each from a different seed object; identical regions are kept once"
    )
    min_area_fraction: float = opt(0.0, "skip regions whose box covers less than this fraction of the image")
    max_area_fraction: float = opt(1.0, "skip regions whose box covers more than this fraction of the image")
    inside_fraction: float = opt(
        0.5, "an object belongs to the region when this fraction of its area is inside"
    )
    skip_crowd: bool = opt(True, "ignore crowd annotations (iscrowd=1), whose boxes cover groups of objects")
    limit: int | None = opt(None, "stop after this many regions in all", output=False, min=1)
    on_error: Literal["skip", "stop"] = opt("skip", "bad annotation records: skip and count them, or stop")
    images_anywhere: bool = opt(
        False, "also read images whose file_name is absolute or leads out of --images (a file you made; "
        "otherwise they are skipped and counted, so that a data file cannot make spr read elsewhere)",
    )  # fmt: skip
    overwrite: bool = opt(False, "discard an existing output instead of resuming it", output=False)

    def __post_init__(self):
        if self.objects_per_region < 1 or self.per_image < 1:
            raise ValueError("objects_per_region and per_image must be at least 1")
        if not 0 <= self.min_area_fraction <= self.max_area_fraction <= 1:
            raise ValueError("need 0 <= min_area_fraction <= max_area_fraction <= 1")


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


def grow(boxes: np.ndarray, seed_index: int, target: int, inside_fraction: float = 0.5):
    """One region grown from ``seed_index``: (selected indices, region box = their union, member indices =
    every object with at least ``inside_fraction`` of its area inside the region box, the selected always)."""
    selected = grow_region(boxes, seed_index, target)
    region_box = B.union_box(boxes[selected])
    inside = B.intersection_over_area(boxes, [region_box])[:, 0] >= inside_fraction
    inside[selected] = True
    return selected, region_box, [int(i) for i in np.flatnonzero(inside)]


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
        selected, region_box, members = grow(
            boxes, seed_index, config.objects_per_region, config.inside_fraction
        )
        frac = B.area([region_box])[0] / image_area
        if not (config.min_area_fraction <= frac <= config.max_area_fraction):
            continue
        key = tuple(round(v, 3) for v in region_box)
        if key in seen_boxes:
            continue
        seen_boxes.add(key)
        members = [objects[i] for i in members]
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

HELP = "Build SPR query regions (more than four nearby objects each) from COCO-style annotations."
Config = RegionConfig


def run(config: RegionConfig) -> int:
    from tqdm import tqdm

    from .data.coco import Problems, load_coco
    from .data.guard import StageOutput
    from .data.jsonl import JsonlWriter, reorder
    from .errors import UserError
    from .table import markdown_table

    problems = Problems()
    images = load_coco(
        config.annotations, config.images, on_error=config.on_error, problems=problems,
        max_pixels=config.max_image_pixels, anywhere=config.images_anywhere,
    )  # fmt: skip
    skipped = Problems()
    total = 0
    guard = StageOutput(
        config.out,
        "regions",
        output_settings(config),
        config.overwrite,
        inputs={"annotations": config.annotations},
    )
    order: list[str] = []  # every region's id, in the order one uninterrupted run writes them
    with guard, JsonlWriter(config.out) as writer:
        for image in tqdm(images, desc="regions", unit="img", disable=None):
            if config.limit is not None and total >= config.limit:
                break
            regions, reason = regions_for_image(image, config)
            if reason:
                skipped.add(reason, f"image {image.id}")
            for region in regions:
                if config.limit is not None and total >= config.limit:
                    break
                writer.write(region)
                order.append(region.id)
                total += 1
        written, existing = writer.written, len(writer.ids) - writer.written
    # records of torn lines in the middle were written again at the end: back to their places
    if writer.repaired:
        reorder(config.out, order)
    rows = [["images read", len(images)], ["regions written", written], ["regions already present", existing]]
    rows += [[f"images skipped: {k}", v] for k, v in sorted(skipped.counts.items())]
    rows += [[f"records skipped: {k}", v] for k, v in sorted(problems.counts.items())]
    print(markdown_table(["", "count"], rows))
    for kind, examples in problems.examples.items():
        for e in examples:
            print(f"  {kind}: {e}")
    if not images:
        raise UserError(f"{config.annotations}: no usable image; every record was skipped (see above)")
    return 0
