"""The reference set a description's boxes are compared with: the region's annotated objects, optionally plus
the boxes an open-vocabulary detector finds for the phrases the region's descriptions mention.

Merging detections (``merge_detections``): a detected box counts for the region only when at least
``inside_fraction`` of its area lies inside the region box (the same rule that makes an annotated object part of
a region); detections are taken by decreasing detector score, and one whose IoU with an annotation or with a
detection already kept is at least ``dedup_iou`` is a duplicate and dropped (annotations always win).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .. import boxes as B
from ..data.records import Region
from ..data.summary import Count, Counters

COUNTS = Counters(
    {"reference box unusable": Count("annotated object boxes that could not serve as references", "box")}
)


@dataclass
class Detection:
    label: str
    box: tuple[float, float, float, float]
    score: float = 1.0


@dataclass
class ReferenceSet:
    boxes: np.ndarray  # (R, 4) original-image pixels
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # "annotation" or "detector"

    def __len__(self) -> int:
        return len(self.boxes)


def region_references(region: Region, problems: Counter | None = None) -> ReferenceSet:
    """The region's annotated objects as references; unusable boxes are dropped and counted."""
    boxes, labels = [], []
    size = tuple(region.image_size) if region.image_size else None
    for obj in region.objects or []:
        box = obj.get("box") if isinstance(obj, dict) else None
        why = B.problem(box) if box is not None else "no box"
        if why is None and size is not None:
            clipped = B.clip(box, size)
            why = None if B.is_valid(clipped) else "outside the image"
            box = clipped
        if why is not None:
            if problems is not None:
                problems["reference box unusable"] += 1
            continue
        boxes.append([float(v) for v in box])
        labels.append(str(obj.get("label", "")))
    return ReferenceSet(B.as_array(boxes), labels, ["annotation"] * len(labels))


def merge_detections(
    references: ReferenceSet,
    detections: list[Detection],
    region_box,
    dedup_iou: float = 0.5,
    inside_fraction: float = 0.5,
) -> ReferenceSet:
    """``references`` plus the detections that belong to the region and duplicate nothing (module docstring)."""
    boxes = [list(b) for b in references.boxes]
    labels, sources = list(references.labels), list(references.sources)
    for det in sorted(detections, key=lambda d: -d.score):
        if B.problem(det.box) is not None:
            continue
        if B.intersection_over_area([det.box], [region_box])[0, 0] < inside_fraction:
            continue
        if boxes and B.iou([det.box], boxes).max() >= dedup_iou:
            continue
        boxes.append([float(v) for v in det.box])
        labels.append(det.label)
        sources.append("detector")
    return ReferenceSet(B.as_array(boxes), labels, sources)
