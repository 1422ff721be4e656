"""Readers for the evaluation data layouts. Every box comes out as float (x1, y1, x2, y2) in original pixels.

- Referring expressions, simple JSONL: one object per line
  ``{"id", "image", "expression", "box": [x1, y1, x2, y2], "split"}``.
- Referring expressions, the RefCOCO "refer" layout: ``refs(unc).p`` (a pickle, loaded with
  :mod:`spr.evaluate.safe_pickle`) beside ``instances.json`` (COCO boxes ``[x, y, w, h]``); one sample per
  sentence.
- Referring expressions, lmms-lab's RefCOCO / RefCOCO+ / RefCOCOg parquet files (images embedded):
  :mod:`spr.evaluate.layouts_parquet`.
- Referring expressions, Ref-L4 (``ref-l4-<split>.parquet`` or the same records as a JSON list):
  :mod:`spr.evaluate.refl4`.
- Region captions, JSONL: ``{"id", "image", "box": [..], "captions": [str, ...], "split"}``.

:func:`read_rec` tells the referring expression layouts apart by what the path holds (see
:func:`rec_layout`). Records that cannot be used (missing fields, degenerate boxes, unknown annotation ids,
undecodable images, ids given twice) are skipped and reported into ``problems`` with the file and record
named; readers raise :class:`~spr.errors.UserError` only when the file itself cannot be read (or is not the
layout it looks like: a parquet file without a required column).

Relative image paths are taken relative to the working directory when that file exists, otherwise relative to
the data file's directory.
"""

from __future__ import annotations

from pathlib import Path

from spr import boxes as B
from spr.data.files import inside, is_key, read_json
from spr.data.jsonl import iter_jsonl
from spr.errors import UserError

from . import layouts_parquet, refl4, safe_pickle
from .samples import Box, CaptionSample, RecSample  # RecSample and CaptionSample are read from here too


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
    instances = read_json(instances_file, "the refer layout's COCO instances.json")
    if not isinstance(instances, dict) or not all(
        isinstance(instances.get(k), list) for k in ("images", "annotations")
    ):
        raise UserError(
            f"{instances_file}: expected a COCO object with 'images' and 'annotations' lists, got "
            f"{type(instances).__name__}"
        )
    # keyed by ids that can be keys (a list or an object as an id matches nothing)
    anns = {
        a.get("id"): a
        for a in instances.get("annotations", [])
        if isinstance(a, dict) and is_key(a.get("id"))
    }
    images = {
        im.get("id"): im
        for im in instances.get("images", [])
        if isinstance(im, dict) and is_key(im.get("id"))
    }
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
        ann = anns.get(ref.get("ann_id")) if is_key(ref.get("ann_id")) else None
        if ann is None:
            problems.append(
                f"{where}: annotation id {ref.get('ann_id')!r} not in {instances_file.name}; skipped"
            )
            continue
        image_id = ann.get("image_id", ref.get("image_id"))
        image = images.get(image_id) if is_key(image_id) else None
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
        image_path = inside(images_dir, image["file_name"])
        if image_path is None:
            problems.append(
                f"{where}: file_name {image['file_name']!r} is not a path inside {images_dir}; skipped"
            )
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
                    image=str(image_path),
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


def rec_layout(path: str | Path) -> tuple[str, list[Path]]:
    """Which referring expression layout ``path`` holds, and its files:

    - a directory with ``refs(*).p``, or a ``.p`` file: ``refer``;
    - a ``.parquet`` file, or a directory with ``*.parquet`` files (any depth): ``ref-l4`` when the files have
      Ref-L4's columns (``caption``, ``bbox``, ``file_name``, no ``image``), else ``lmms-lab``;
    - a ``.json`` file holding a list of Ref-L4 annotations: ``ref-l4``;
    - any other file: the simple REC ``jsonl`` layout.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if is_refer_layout(path):
        return "refer", [path]
    if path.is_file() and path.suffix.lower() == ".json" and refl4.is_refl4_json(path):
        return "ref-l4", [path]
    files = (
        layouts_parquet.parquet_files(path) if (path.is_dir() or path.suffix.lower() == ".parquet") else []
    )
    if files:
        kinds = {
            f: ("ref-l4" if refl4.is_refl4_columns(layouts_parquet.columns_of(f)) else "lmms-lab")
            for f in files
        }
        if len(set(kinds.values())) > 1:
            raise UserError(
                f"{path}: holds parquet files of two layouts (Ref-L4: "
                f"{', '.join(f.name for f, k in kinds.items() if k == 'ref-l4')}; lmms-lab: "
                f"{', '.join(f.name for f, k in kinds.items() if k == 'lmms-lab')}); give one of them"
            )
        return next(iter(kinds.values())), files
    if path.is_dir():
        raise UserError(
            f"{path}: a directory with neither refs(*).p (the RefCOCO 'refer' layout) nor *.parquet files "
            "(lmms-lab RefCOCO, Ref-L4); give one of those, a Ref-L4 JSON file or a REC JSONL file"
        )
    return "jsonl", [path]


def read_rec(
    path: str | Path,
    images_dir: str | Path | None = None,
    split_by: str | None = None,
    splits=None,
    problems: list[str] | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[RecSample]:
    """Referring expressions from any supported layout (:func:`rec_layout` decides which). ``cache_dir``
    receives images the data embeds (lmms-lab parquet) or packs (Ref-L4's images.tar.gz); ``limit`` lets the
    parquet layouts stop reading early (the runner still takes the first ``limit`` samples). An id given twice
    is reported and its later samples skipped: predictions are resumed by id."""
    problems = problems if problems is not None else []
    layout, files = rec_layout(path)
    if layout == "refer":
        samples = read_refer(path, images_dir, split_by, splits, problems)
    elif layout == "lmms-lab":
        samples = layouts_parquet.read_lmms(path, images_dir, splits, problems, cache_dir, limit, files=files)
    elif layout == "ref-l4":
        samples = refl4.read_refl4(files, images_dir, splits, problems, cache_dir, limit)
    else:
        samples = read_rec_jsonl(path, splits, problems)
    return unique_ids(samples, problems, str(path))


def unique_ids(samples: list, problems: list[str], where: str) -> list:
    seen: set[str] = set()
    out = []
    dup = 0
    for s in samples:
        if s.id in seen:
            dup += 1
            if dup <= 5:
                problems.append(f"{where}: id {s.id!r} given more than once; the later sample is skipped")
            continue
        seen.add(s.id)
        out.append(s)
    if dup > 5:
        problems.append(f"{where}: {dup} samples in all skipped for an id given before")
    return out


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
