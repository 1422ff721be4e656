"""Readers for the evaluation data layouts. Every box comes out as float (x1, y1, x2, y2) in original pixels.

- Referring expressions, simple JSONL: one object per line
  ``{"id", "image", "expression", "box": [x1, y1, x2, y2], "split"}``.
- Referring expressions, the RefCOCO "refer" layout: ``refs(unc).p`` (a pickle, loaded with
  :mod:`spr.evaluate.safe_pickle`) beside ``instances.json`` (COCO boxes ``[x, y, w, h]``); one sample per
  sentence.
- Region captions, JSONL: ``{"id", "image", "box": [..], "captions": [str, ...], "split"}``.

Records that cannot be used (missing fields, degenerate boxes, unknown annotation ids) are skipped and reported
into ``problems`` with the file and record named; readers raise :class:`~spr.errors.UserError` only when the
file itself cannot be read.

Relative image paths are taken relative to the working directory when that file exists, otherwise relative to
the data file's directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from spr import boxes as B
from spr.data.jsonl import iter_jsonl
from spr.errors import UserError

from . import safe_pickle

Box = tuple[float, float, float, float]


@dataclass
class RecSample:
    """One referring expression and the box of its referent."""

    id: str
    image: str
    expression: str
    box: Box
    split: str = "all"


@dataclass
class CaptionSample:
    """One region and its reference captions."""

    id: str
    image: str
    box: Box
    captions: list[str] = field(default_factory=list)
    split: str = "all"


def resolve_image(image: str, base_dir: Path) -> str:
    """``image`` as given when it exists (absolute or relative to the working directory), else relative to
    ``base_dir`` (the data file's directory)."""
    p = Path(image)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(base_dir / p)


def _box(value, where: str, problems: list[str]) -> Box | None:
    why = B.problem(value) if isinstance(value, list | tuple) else f"not a list of four numbers: {value!r}"
    if why:
        problems.append(f"{where}: unusable box: {why}; skipped")
        return None
    return tuple(float(v) for v in value)


def _wanted(split: str, splits) -> bool:
    return not splits or split in splits


def _jsonl_rows(path: Path, required: tuple[str, ...], splits, problems: list[str]):
    """(index, where, row, split) for each record of a JSONL layout that has the ``required`` fields and a
    wanted split; records missing fields are reported into ``problems`` and skipped."""
    try:
        rows = list(iter_jsonl(path, skip_bad=True, problems=problems))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    for i, row in enumerate(rows, start=1):
        where = f"{path}: record {i} (id {row.get('id', '?')!r})"
        missing = [k for k in required if k not in row]
        if missing:
            problems.append(f"{where}: missing field(s) {', '.join(missing)}; skipped")
            continue
        split = str(row.get("split") or "all")
        if _wanted(split, splits):
            yield i, where, row, split


def read_rec_jsonl(path: str | Path, splits=None, problems: list[str] | None = None) -> list[RecSample]:
    """Referring expressions from the simple JSONL layout, filtered to ``splits`` when given."""
    path = Path(path)
    problems = problems if problems is not None else []
    out: list[RecSample] = []
    for i, where, row, split in _jsonl_rows(path, ("image", "expression", "box"), splits, problems):
        box = _box(row["box"], where, problems)
        if box is None:
            continue
        out.append(
            RecSample(
                id=str(row.get("id", f"{path.stem}:{i}")),
                image=resolve_image(str(row["image"]), path.parent),
                expression=str(row["expression"]),
                box=box,
                split=split,
            )
        )
    return out


def _find_refs_file(path: Path, split_by: str | None) -> Path:
    if path.is_file():
        return path
    if split_by:
        refs = path / f"refs({split_by}).p"
        if not refs.exists():
            raise UserError(f"{path}: no refs({split_by}).p here")
        return refs
    found = sorted(path.glob("refs(*).p"))
    if not found:
        raise UserError(f"{path}: no refs(<split_by>).p file (the RefCOCO 'refer' layout) in this directory")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(
            f"{path}: several refs files ({names}); choose one with --split-by (e.g. unc, umd, google)"
        )
    return found[0]


def read_refer(
    path: str | Path,
    images_dir: str | Path | None = None,
    split_by: str | None = None,
    splits=None,
    problems: list[str] | None = None,
) -> list[RecSample]:
    """Referring expressions from the RefCOCO / RefCOCO+ / RefCOCOg "refer" layout.

    ``path`` is the dataset directory (``refs(<split_by>).p`` and ``instances.json``) or the refs file itself.
    Images are looked up as ``images_dir / file_name`` (``file_name`` from instances.json; default directory:
    ``path/images``). One sample per sentence, id ``"<ref_id>/<sent_id>"``.
    """
    path = Path(path)
    problems = problems if problems is not None else []
    refs_file = _find_refs_file(path, split_by)
    instances_file = refs_file.parent / "instances.json"
    refs = safe_pickle.load(refs_file)
    if not isinstance(refs, list):
        raise UserError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    try:
        instances = json.loads(instances_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{instances_file}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{instances_file}: not valid JSON: {e}") from None
    anns = {a.get("id"): a for a in instances.get("annotations", []) if isinstance(a, dict)}
    images = {im.get("id"): im for im in instances.get("images", []) if isinstance(im, dict)}
    images_dir = Path(images_dir) if images_dir else refs_file.parent / "images"

    out: list[RecSample] = []
    for n, ref in enumerate(refs):
        if not isinstance(ref, dict):
            problems.append(f"{refs_file}: ref #{n}: not a dict; skipped")
            continue
        where = f"{refs_file}: ref {ref.get('ref_id', f'#{n}')}"
        split = str(ref.get("split", "all"))
        if not _wanted(split, splits):
            continue
        ann = anns.get(ref.get("ann_id"))
        if ann is None:
            problems.append(
                f"{where}: annotation id {ref.get('ann_id')!r} not in {instances_file.name}; skipped"
            )
            continue
        image = images.get(ann.get("image_id", ref.get("image_id")))
        if image is None or "file_name" not in image:
            problems.append(
                f"{where}: image id {ann.get('image_id')!r} not in {instances_file.name}; skipped"
            )
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: annotation {ann.get('id')!r} has no [x, y, w, h] bbox; skipped")
            continue
        box = _box([x, y, x + w, y + h], where, problems)
        if box is None:
            continue
        for k, sent in enumerate(ref.get("sentences") or []):
            text = sent.get("sent") or sent.get("raw") if isinstance(sent, dict) else None
            if not text:
                problems.append(f"{where}: sentence {k} has no text; skipped")
                continue
            sid = sent.get("sent_id", k)
            out.append(
                RecSample(
                    id=f"{ref.get('ref_id', n)}/{sid}",
                    image=str(images_dir / image["file_name"]),
                    expression=str(text),
                    box=box,
                    split=split,
                )
            )
    return out


def is_refer_layout(path: str | Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".p"
    return path.is_dir() and any(path.glob("refs(*).p"))


def read_rec(
    path: str | Path,
    images_dir: str | Path | None = None,
    split_by: str | None = None,
    splits=None,
    problems: list[str] | None = None,
) -> list[RecSample]:
    """Referring expressions from either layout (the refer layout when ``path`` holds a refs(*).p file)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if is_refer_layout(path):
        return read_refer(path, images_dir, split_by, splits, problems)
    if path.is_dir():
        raise UserError(
            f"{path}: a directory without refs(*).p; give a REC JSONL file or a RefCOCO 'refer' directory"
        )
    return read_rec_jsonl(path, splits, problems)


def read_captions(path: str | Path, splits=None, problems: list[str] | None = None) -> list[CaptionSample]:
    """Regions and their reference captions from the region caption JSONL layout."""
    path = Path(path)
    problems = problems if problems is not None else []
    if not path.exists():
        raise UserError(f"{path}: no such file")
    out: list[CaptionSample] = []
    for i, where, row, split in _jsonl_rows(path, ("image", "box", "captions"), splits, problems):
        caps = row["captions"]
        caps = [caps] if isinstance(caps, str) else [str(c) for c in caps or [] if str(c).strip()]
        if not caps:
            problems.append(f"{where}: no reference caption; skipped")
            continue
        box = _box(row["box"], where, problems)
        if box is None:
            continue
        out.append(
            CaptionSample(
                id=str(row.get("id", f"{path.stem}:{i}")),
                image=resolve_image(str(row["image"]), path.parent),
                box=box,
                captions=caps,
                split=split,
            )
        )
    return out
