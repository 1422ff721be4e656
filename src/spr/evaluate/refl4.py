"""Ref-L4 (Chen et al. 2024, https://github.com/JierunChen/Ref-L4, data: https://huggingface.co/datasets/JierunChen/Ref-L4).

The release holds ``ref-l4-val.parquet`` and ``ref-l4-test.parquet`` (one row per annotation, no images) and
``images.tar.gz`` (the images, named by ``file_name``). An annotation::

    {"id": 1, "caption": "Within the central picture frame ...", "bbox": [580.6, 179.5, 93.6, 112.1],
     "bbox_area": 10492.6, "bbox_id": "o365_527361", "ori_category_id": "o365_64", "image_id": "o365_922765",
     "height": 741, "width": 1024, "file_name": "objects365_v2_00922765.jpg", "is_rewrite": true, "split": "val"}

``bbox`` is ``[x, y, w, h]`` in original pixels. The same records as a JSON list (``df.to_json(orient=
"records")``, the form the dataset card shows) are read too. One sample per annotation, id ``str(id)``, split
from the ``split`` column (else the file name). Images are looked up in ``--images``, else ``DATA/images`` and
``DATA``; the ones found in neither are extracted once from ``DATA/images.tar.gz`` into the image cache.

Ref-L4's evaluator (``ref_l4/evaluation.py``) takes a JSON list of ``{"id", "pred_bbox", "format"}`` and stops
with ``ValueError: Id ... not found`` unless it holds every id of the split it scores. This module writes it
(:func:`submit`, ``refl4_predictions.json`` in the run directory, boxes ``xyxy`` in original pixels) from the
annotation files themselves, so every id of the requested splits is there once: ``[0, 0, 0, 0]`` (IoU 0 under
Ref-L4's evaluator) for an answer without a box, for a row the reader skipped (a zero-width box, an empty
caption) and for an id without a prediction; those last two are counted (``refl4_misses``) and reported. A
``--limit`` run evaluates part of a split, so it writes no submission: the evaluator would refuse it, or score
the unanswered rest as misses. The run can then be scored by the benchmark's own code and compared with its
leaderboard. Size buckets use ``sqrt(w * h)`` of the file's own ``bbox`` (``RecSample.size``), as Ref-L4 does.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import sys
import tarfile
from pathlib import Path

from spr.data.files import inside, read_json
from spr.errors import UserError

from .layouts_parquet import iter_rows, open_parquet, split_of, xywh_box
from .samples import RecSample

BENCHMARK = "ref-l4"
REQUIRED = ("id", "caption", "bbox", "file_name")
SUBMISSION_FILE = "refl4_predictions.json"
IMAGES_TAR = "images.tar.gz"


def is_refl4_columns(names) -> bool:
    """Ref-L4's annotations: a ``caption`` per row and no embedded ``image`` (lmms-lab's files have both)."""
    names = set(names)
    return "caption" in names and "image" not in names


def is_refl4_json(path: Path) -> bool:
    """A JSON list of objects with a ``caption`` (reads the file's start only)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[") and b'"caption"' in head


def _rows_json(path: Path):
    data = read_json(path, "a JSON list of Ref-L4 annotations")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of Ref-L4 annotations, got {type(data).__name__}")
    if data and isinstance(data[0], dict):
        _check_columns(path, list(data[0]))
    return data


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise UserError(
            f"{path}: not the Ref-L4 layout: missing column(s) {', '.join(missing)} (it has {', '.join(names) or 'none'}; "
            "expected id, caption, bbox [x, y, w, h], file_name, split)"
        )


def _rows(path: Path):
    if path.suffix.lower() == ".json":
        return _rows_json(path)
    pf = open_parquet(path)
    names = list(pf.schema_arrow.names)
    _check_columns(path, names)
    return iter_rows(pf, [c for c in (*REQUIRED, "split") if c in names], batch_size=4096)


def read_refl4(
    files: list[Path],
    images_dir: str | Path | None = None,
    splits=None,
    problems: list[str] | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
):
    """Referring expressions from Ref-L4 annotation files (parquet or JSON)."""
    problems = problems if problems is not None else []
    out: list[RecSample] = []
    unresolved: dict[str, list[int]] = {}  # file_name -> indices into out whose image was not found
    roots: list[Path] = []
    for file in files:
        root = file.parent
        roots.append(root)
        bases = [Path(images_dir)] if images_dir else [root / "images", root]
        default_split = split_of(file)
        for i, row in enumerate(_rows(file), start=1):
            if not isinstance(row, dict):
                problems.append(f"{file}: record {i}: not an object; skipped")
                continue
            rid = row.get("id")
            where = f"{file}: record {i} (id {rid!r})"
            missing = [k for k in REQUIRED if row.get(k) is None]
            if missing:
                problems.append(f"{where}: missing field(s) {', '.join(missing)}; skipped")
                continue
            split = str(row.get("split") or default_split)
            if splits and split not in splits:
                continue
            box = xywh_box(row["bbox"], where, problems)
            if box is None:
                continue
            _, _, w, h = (float(v) for v in row["bbox"])
            caption = str(row["caption"]).strip()
            if not caption:
                problems.append(f"{where}: empty caption; skipped")
                continue
            name = str(row["file_name"])
            if inside(bases[0], name) is None:
                problems.append(f"{where}: file_name {name!r} is not a path inside the image folder; skipped")
                continue
            found = next((b / name for b in bases if (b / name).exists()), None)
            if found is None:
                unresolved.setdefault(name, []).append(len(out))
            out.append(
                RecSample(
                    id=str(rid), image=str(found or bases[0] / name), expression=caption, box=box, split=split,
                    file_name=name, source_id=rid, benchmark=BENCHMARK, size=math.sqrt(w * h),
                )
            )  # fmt: skip
            if limit is not None and len(out) >= limit:
                break
        if limit is not None and len(out) >= limit:
            break
    if unresolved:
        _from_tar(out, unresolved, roots, cache_dir, problems)
    return out


def _from_tar(
    samples, unresolved: dict[str, list[int]], roots: list[Path], cache_dir, problems: list[str]
) -> None:
    """Extract the images not found on disk from ``images.tar.gz`` (once, into ``cache_dir``)."""
    tar_path = next((r / IMAGES_TAR for r in roots if (r / IMAGES_TAR).is_file()), None)
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:  # extracted by an earlier run
        for name in list(unresolved):
            if (cache / name).is_file():
                for k in unresolved.pop(name):
                    samples[k].image = str(cache / name)
    if unresolved and tar_path is not None and cache is not None:
        print(
            f"extracting {len(unresolved)} Ref-L4 image(s) from {tar_path} into {cache} (once) ...",
            file=sys.stderr,
        )
        for name, dest in _extract(tar_path, set(unresolved), cache, problems).items():
            for k in unresolved.pop(name):
                samples[k].image = str(dest)
    if unresolved:
        n = sum(len(v) for v in unresolved.values())
        where = tar_path or (roots[0] / IMAGES_TAR if roots else IMAGES_TAR)
        example = next(iter(unresolved))
        problems.append(
            f"{len(unresolved)} Ref-L4 image(s) ({n} annotations, e.g. {example}) not found under --images, DATA/images "
            f"or DATA, nor in {where}; they count as image failures"
        )


def _extract(tar_path: Path, names: set[str], dest: Path, problems: list[str]) -> dict[str, Path]:
    """Members of ``tar_path`` named (or whose base name is) one of ``names``, written as ``dest / name``."""
    done: dict[str, Path] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key = member.name[2:] if member.name.startswith("./") else member.name
                if key not in names:
                    key = posixpath.basename(member.name)
                if key not in names or key in done or ".." in Path(key).parts or Path(key).is_absolute():
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                target = dest / key
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.parent.resolve().is_relative_to(dest.resolve()):
                    problems.append(f"{dest}: {key}: a symlink in the image cache leads out; not extracted")
                    continue
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.unlink(missing_ok=True)  # a file or a symlink planted there is not written through
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with src, os.fdopen(fd, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                tmp.replace(target)
                done[key] = target
                if len(done) == len(names):
                    break
    except (OSError, tarfile.TarError, EOFError) as e:
        problems.append(f"{tar_path}: cannot read the image archive: {type(e).__name__}: {e}")
    return done


def submit(config, records: list[dict], metrics: dict, files: list[Path]) -> None:
    """Write the Ref-L4 submission of an `spr eval rec` run (``files``: the annotation files of ``config.data``,
    ``config.splits``) into ``config.out``; ``metrics`` gets ``refl4_submission`` (its path, None when not
    written), ``refl4_misses`` and a line in ``problems`` for what it had to fill in or why it wrote nothing."""
    problems = metrics.setdefault("problems", [])
    if getattr(config, "limit", None) is not None:
        metrics["refl4_submission"] = None
        problems.append(
            f"{SUBMISSION_FILE} not written: --limit {config.limit} evaluates part of the split, and Ref-L4's "
            "evaluator needs every id of the split it scores; run without --limit for a submission"
        )
        return
    path, misses = write_submission(Path(config.out) / SUBMISSION_FILE, records, files, config.splits)
    metrics["refl4_submission"], metrics["refl4_misses"] = str(path), misses
    if misses:
        problems.append(
            f"{misses} Ref-L4 annotation(s) without a prediction (a ground-truth row spr cannot use, or no answer) "
            f"written to {SUBMISSION_FILE} as misses [0, 0, 0, 0]: Ref-L4's evaluator counts them, these metrics do not"
        )


def write_submission(
    path: str | Path, records: list[dict], files: list[Path], splits=None
) -> tuple[Path, int]:
    """Ref-L4's prediction file: ``[{"id", "pred_bbox": [x1, y1, x2, y2], "format": "xyxy"}, ...]``, one row per
    annotation id of ``files`` in ``splits`` (all when None), in file order; the box of its record (original
    pixels), ``[0, 0, 0, 0]`` (IoU 0) where it has none. Returns the path and how many ids had no record."""
    path = Path(path)
    by_id = {str(r.get("source_id", r["id"])): r for r in records if r.get("benchmark") == BENCHMARK}
    rows, seen, misses = [], set(), 0
    for file in files:
        default_split = split_of(file)
        for row in _rows(file):
            rid = row.get("id") if isinstance(row, dict) else None
            if rid is None or str(rid) in seen:  # no id to write; an id twice would stop the evaluator
                continue
            if splits and str(row.get("split") or default_split) not in splits:
                continue
            seen.add(str(rid))
            record = by_id.get(str(rid))
            misses += record is None
            box = (record or {}).get("pred_box") or (0, 0, 0, 0)
            rows.append({"id": rid, "pred_bbox": [float(v) for v in box], "format": "xyxy"})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path, misses
