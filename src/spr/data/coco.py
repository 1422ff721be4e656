"""Reader for COCO-style detection annotations (COCO, Objects365 and LVIS share the layout).

Boxes come in as COCO ``[x, y, w, h]`` and leave as SPR's ``(x1, y1, x2, y2)`` original-image pixels.
Every problem names the file and the record and says what is wrong. With ``on_error="skip"`` bad records are
skipped and counted; with ``on_error="stop"`` the first one raises :class:`~spr.errors.UserError`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .files import inside, is_key, read_json
from .images import DEFAULT_MAX_PIXELS, ImageProblem, image_size


@dataclass
class AnnotatedObject:
    label: str
    box: tuple[float, float, float, float]
    category_id: int
    annotation_id: int | str
    iscrowd: bool = False


@dataclass
class AnnotatedImage:
    id: int | str
    path: Path
    size: tuple[int, int]  # (W, H)
    objects: list[AnnotatedObject] = field(default_factory=list)


@dataclass
class Problems:
    """Counts of problems by kind, with the first few messages of each kind kept for the summary."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    keep: int = 3

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < self.keep:
            ex.append(message)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def total(self) -> int:
        return sum(self.counts.values())


def _load_json(path: Path) -> dict:
    data = read_json(path, "a COCO-style annotation file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise UserError(
            f"{path}: missing or not a list: {', '.join(missing)} (is this a COCO-style detection file?)"
        )
    return data


def load_coco(
    annotations: str | Path,
    images_dir: str | Path,
    *,
    on_error: str = "skip",
    check_images: bool = True,
    problems: Problems | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    anywhere: bool = False,
) -> list[AnnotatedImage]:
    """Read a COCO-style file; returns the images with their valid objects, in file order.

    Checked: unreadable JSON, missing or unreadable image files, image sizes, boxes outside the image (clipped
    when partly outside, skipped when nothing is left), zero-area boxes, unknown category ids, duplicate image or
    annotation ids, records missing fields. A ``file_name`` that is absolute or leads out of ``images_dir`` is
    skipped and counted unless ``anywhere``.
    """
    if on_error not in ("skip", "stop"):
        raise ValueError("on_error must be 'skip' or 'stop'")
    # absolute, so that later stages find the images from any working directory
    ann_path, images_dir = Path(annotations), Path(images_dir).resolve()
    problems = problems if problems is not None else Problems()
    data = _load_json(ann_path)

    def report(kind: str, message: str) -> None:
        message = f"{ann_path}: {message}"
        if on_error == "stop":
            raise UserError(message)
        problems.add(kind, message)

    categories: dict = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            report("bad category", f"categories[{i}]: needs 'id' and 'name'")
            continue
        if not is_key(c["id"]):
            report("bad category", f"categories[{i}]: id must be a number or a string, got {_short(c['id'])}")
            continue
        categories[c["id"]] = str(c["name"])

    images: dict = {}
    for i, rec in enumerate(data["images"]):
        if not isinstance(rec, dict) or "id" not in rec or "file_name" not in rec:
            report("bad image record", f"images[{i}]: needs 'id' and 'file_name'")
            continue
        if not is_key(rec["id"]):
            report(
                "bad image record", f"images[{i}]: id must be a number or a string, got {_short(rec['id'])}"
            )
            continue
        if rec["id"] in images:
            report("duplicate image id", f"images[{i}]: duplicate image id {rec['id']!r}")
            continue
        path = inside(images_dir, rec["file_name"])
        if path is None and anywhere and isinstance(rec["file_name"], str) and "\0" not in rec["file_name"]:
            path = (images_dir / rec["file_name"]).resolve()
        if path is None:
            report("image outside --images", f"images[{i}]: file_name {_short(rec['file_name'])} is not a "
                   f"relative path inside {images_dir}")  # fmt: skip
            continue
        size = (rec.get("width"), rec.get("height"))
        if check_images:
            try:
                actual = image_size(path, max_pixels)  # the header only: regions need no pixels
            except ImageProblem as e:
                kind = {"image missing": "missing image file", "image too large": "image too large"}.get(
                    e.kind, "unreadable image"
                )
                report(kind, f"image {rec['id']!r}: {e.detail}")
                continue
            if None not in size and tuple(size) != actual:
                report(
                    "size mismatch",
                    f"image {rec['id']!r}: annotated {size[0]}x{size[1]} but {path} is {actual[0]}x{actual[1]}; using the file's size",
                )
            size = actual
        if not all(isinstance(v, int | float) and v > 0 for v in size):
            report("bad image record", f"image {rec['id']!r}: no valid width/height")
            continue
        images[rec["id"]] = AnnotatedImage(rec["id"], path, (int(size[0]), int(size[1])))

    listed = {
        r.get("id") for r in data["images"] if isinstance(r, dict) and is_key(r.get("id"))
    }  # skipped too
    seen_ann: set = set()
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not {"id", "image_id", "category_id", "bbox"} <= a.keys():
            report("bad annotation", f"annotations[{i}]: needs 'id', 'image_id', 'category_id' and 'bbox'")
            continue
        if not all(is_key(a[k]) for k in ("id", "image_id", "category_id")):
            report(
                "bad annotation", f"annotations[{i}]: id, image_id and category_id must be numbers or strings"
            )
            continue
        where = f"annotation {a['id']!r} (image {a['image_id']!r})"
        if a["id"] in seen_ann:
            report("duplicate annotation id", f"{where}: duplicate annotation id")
            continue
        seen_ann.add(a["id"])
        img = images.get(a["image_id"])
        if img is None:
            if a["image_id"] not in listed:
                report("unknown image id", f"{where}: image id not in 'images'")
            continue  # the image itself was skipped and reported already
        if a["category_id"] not in categories:
            report("unknown category id", f"{where}: unknown category id {a['category_id']!r}")
            continue
        box = _to_xyxy(a["bbox"])
        if box is None:
            report("bad box", f"{where}: bbox must be four finite numbers [x, y, w, h], got {a['bbox']!r}")
            continue
        w, h = img.size
        clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(w)), min(box[3], float(h)))
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            kind = "zero-area box" if not (box[2] > box[0] and box[3] > box[1]) else "box outside the image"
            report(kind, f"{where}: {kind} {a['bbox']!r} in a {w}x{h} image")
            continue
        if clipped != box:
            problems.add(
                "box clipped to the image",
                f"{ann_path}: {where}: {a['bbox']!r} reaches outside the {w}x{h} image",
            )
        img.objects.append(
            AnnotatedObject(
                categories[a["category_id"]], clipped, a["category_id"], a["id"], bool(a.get("iscrowd", 0))
            )
        )
    return list(images.values())


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _to_xyxy(bbox) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    return (x, y, x + w, y + h)
