"""Do the evaluation images also appear among a training run's region images?

Ref-L4 and HC-RefLoCo draw their images from Objects365, and SPR's training regions may come from Objects365
too; RefCOCO's images are COCO train2014 images, which COCO 2017 train renames. An image seen in training makes
an evaluation number optimistic, so the runner checks (``--train-regions``, a run's ``regions.jsonl``):

- **by file name**: the base name, lower-cased; COCO names are reduced to their image number, so
  ``COCO_train2014_000000380440.jpg``, refer's ``COCO_train2014_000000380440_491042.jpg`` and 2017's
  ``000000380440.jpg`` are one image;
- **by content**: the sha256 of the file bytes, computed only for files whose size equals the size of some
  file on the other side (a byte-identical copy has the same size), so the check stays fast.

Files that cannot be read are left out of the content check. The result is a list of warnings (counts and a
few examples) and a summary dict.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from spr.data.jsonl import iter_jsonl
from spr.errors import UserError

_COCO = re.compile(r"^(?:coco_(?:train|val)20\d\d_)?(\d{12})(?:_\d+)?\.(?:jpg|jpeg|png)$")


def image_key(name: str) -> str:
    """The name two copies of one image share: base name, lower-cased; COCO names -> ``coco:<number>``."""
    base = os.path.basename(str(name).replace("\\", "/")).lower()
    m = _COCO.match(base)
    return f"coco:{m.group(1)}" if m else base


def training_images(regions: str | Path) -> list[str]:
    """The distinct image paths of a regions.jsonl, resolved like the stages resolve them (as given, else
    relative to the file's directory)."""
    path = Path(regions)
    if not path.is_file():
        raise UserError(f"{path}: no such file (--train-regions takes a run's regions.jsonl)")
    seen: dict[str, None] = {}
    for row in iter_jsonl(path, skip_bad=True):
        image = row.get("image")
        if isinstance(image, str) and image:
            seen.setdefault(image, None)
    out = []
    for image in seen:
        p = Path(image)
        out.append(str(p if p.is_absolute() or p.exists() else path.parent / p))
    return out


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def check(samples: list, regions: str | Path) -> tuple[list[str], dict]:
    """(warnings, summary) for evaluation ``samples`` (with ``image`` and optionally ``file_name``) against the
    images of the training ``regions`` file."""
    train = training_images(regions)
    eval_images: dict[str, list] = {}
    for s in samples:
        eval_images.setdefault(str(s.image), []).append(s)
    names = {p: image_key(getattr(group[0], "file_name", None) or p) for p, group in eval_images.items()}
    train_names: dict[str, str] = {}
    for p in train:
        train_names.setdefault(image_key(p), p)
    by_name = sorted(p for p, key in names.items() if key in train_names)

    eval_sizes = {p: _size(p) for p in eval_images}
    train_sizes = {p: _size(p) for p in train}
    common = {s for s in eval_sizes.values() if s is not None} & {
        s for s in train_sizes.values() if s is not None
    }
    train_hashes: dict[str, str] = {}
    for p, size in train_sizes.items():
        if size in common and (h := _sha256(p)):
            train_hashes.setdefault(h, p)
    by_content = []
    for p, size in eval_sizes.items():
        if size in common and (h := _sha256(p)) and h in train_hashes:
            by_content.append((p, train_hashes[h]))
    by_content.sort()

    summary = {
        "train_regions": str(regions),
        "train_images": len(train),
        "eval_images": len(eval_images),
        "by_name": len(by_name),
        "by_name_samples": sum(len(eval_images[p]) for p in by_name),
        "by_content": len(by_content),
        "by_content_samples": sum(len(eval_images[p]) for p, _ in by_content),
        "hashed": sum(1 for s in eval_sizes.values() if s in common) + sum(1 for s in train_sizes.values() if s in common),
    }  # fmt: skip
    warnings = []
    if by_name:
        examples = ", ".join(os.path.basename(p) if not getattr(eval_images[p][0], "file_name", None)
                             else str(eval_images[p][0].file_name) for p in by_name[:3])  # fmt: skip
        warnings.append(
            f"train/eval overlap by file name: {len(by_name)} of {len(eval_images)} evaluation images "
            f"({summary['by_name_samples']} of {len(samples)} samples) have the name of one of the {len(train)} "
            f"training images of {regions} (e.g. {examples})"
        )
    if by_content:
        examples = ", ".join(f"{os.path.basename(e)} = {os.path.basename(t)}" for e, t in by_content[:3])
        warnings.append(
            f"train/eval overlap by content: {len(by_content)} of {len(eval_images)} evaluation images "
            f"({summary['by_content_samples']} of {len(samples)} samples) are byte-identical (sha256) to training "
            f"images of {regions} (e.g. {examples})"
        )
    return warnings, summary
