"""Referring expressions in parquet files, as the benchmarks publish them; read with pyarrow, images decoded
from the files themselves.

- **lmms-lab** (``lmms-lab/RefCOCO``, ``RefCOCOplus``, ``RefCOCOg`` on the Hugging Face hub, the data
  lmms-eval evaluates on): one file per split and shard, ``data/<split>-00000-of-0000N.parquet`` (or the hub's
  converted ``default/<split>/0000.parquet``), one row per referent with the columns ``question_id``,
  ``image`` (a ``datasets`` Image: a struct ``{bytes, path}``, or raw bytes), ``question`` (a generic
  captioning prompt, not the expression), ``answer`` (the list of referring expressions), ``bbox``
  (``[x, y, w, h]`` in pixels), ``segmentation``, ``iscrowd``, ``file_name``. As lmms-eval's
  ``refcoco_bbox_rec`` task does, every expression of ``answer`` is one sample (id
  ``<split>/<question_id>/<k>``) against ``bbox``.

The split of a file comes from its name (``val-00000-of-00004.parquet`` is ``val``; ``0000.parquet`` takes its
directory's name). Images embedded as bytes are written once, named by their sha256, into an image cache
directory (the runner loads images by path); an image given by path is looked up in ``images_dir`` or beside
the file. Rows that cannot be used (a bbox that is not four numbers, no expression, image bytes that are not
an image) are reported into ``problems`` with the file, row and question id named, and skipped; a file that is
not parquet or lacks a required column is a :class:`~spr.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

from spr import boxes as B
from spr.errors import UserError

from .samples import RecSample

LMMS_REQUIRED = ("image", "bbox")
EXPRESSION_COLUMNS = ("answer", "sentences")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}


# ------------------------------------------------------------------------------------------------ files


def parquet_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.parquet`` files under the directory ``path`` (any depth), sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def open_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid, OSError ...: the file itself cannot be read
        raise UserError(f"{path}: not a readable parquet file: {e}") from None


def columns_of(path: Path) -> list[str]:
    return list(open_parquet(path).schema_arrow.names)


_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")


def split_of(path: Path) -> str:
    """The split a parquet file holds, from its name: ``testA-00000-of-00001`` -> ``testA``, ``ref-l4-val``
    -> ``val``, ``default/val/0000.parquet`` -> ``val``."""
    stem = path.stem
    m = _SHARD.match(stem)
    if m:
        return m.group("split")
    if stem.isdigit():
        return path.parent.name or "all"
    if stem.lower().startswith("ref-l4-"):
        return stem[len("ref-l4-") :]
    return stem


def iter_rows(pf, columns: list[str], batch_size: int = 64):
    """Row dicts of a parquet file, a batch at a time (a split with embedded images never sits in memory
    whole)."""
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        yield from batch.to_pylist()


# ------------------------------------------------------------------------------------------------ boxes


def xywh_box(value, where: str, problems: list[str], field: str = "bbox"):
    """``[x, y, w, h]`` in pixels as (x1, y1, x2, y2), or None with the reason in ``problems``."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        problems.append(f"{where}: {field} must be [x, y, w, h] (four numbers), got {value!r}; skipped")
        return None
    if len(value) != 4:
        problems.append(f"{where}: {field} must be [x, y, w, h] (four numbers), got {len(value)} value(s) {list(value)!r}; skipped")  # fmt: skip
        return None
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        problems.append(f"{where}: {field} must be [x, y, w, h] (four numbers), got {list(value)!r}; skipped")
        return None
    box = (x, y, x + w, y + h)
    why = B.problem(box)
    if why:
        problems.append(f"{where}: unusable {field} [x, y, w, h] = {[x, y, w, h]}: {why}; skipped")
        return None
    return box


# ----------------------------------------------------------------------------------------------- images


class ImageBytesError(ValueError):
    """Bytes that are not an image PIL can identify."""


class ImageStore:
    """Writes images given as bytes into ``cache_dir`` once, named by the sha256 of the bytes (the encoded file
    as published, not re-encoded), and returns their paths."""

    def __init__(self, cache_dir: str | Path | None):
        self.dir = Path(cache_dir) if cache_dir else None
        self._known: dict[str, str] = {}
        self.written = 0

    def put(self, data: bytes) -> str:
        if self.dir is None:
            raise UserError("these images are embedded in the data file; give an image cache directory to write them to")  # fmt: skip
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._known:
            return self._known[digest]
        fmt = identify(data)
        path = self.dir / f"{digest[:32]}.{_EXT.get(fmt, fmt.lower())}"
        if not (path.exists() and path.stat().st_size == len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            self.written += 1
        self._known[digest] = str(path)
        return str(path)


def identify(data: bytes) -> str:
    """The image format of ``data`` (from its header; nothing decoded), or ImageBytesError."""
    from PIL import Image

    if not data:
        raise ImageBytesError("empty image bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # the runner applies the pixel limit, with its own message
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format or "", im.size
        except Exception as e:
            raise ImageBytesError(
                f"{len(data)} bytes that are not a readable image ({type(e).__name__}: {e})"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if not fmt or w <= 0 or h <= 0:
        raise ImageBytesError(f"{len(data)} bytes without a recognised image format")
    return fmt


def image_path(
    value, where: str, problems: list[str], store: ImageStore, base_dirs: list[Path]
) -> str | None:
    """The path of a row's image: bytes are written into ``store``; a path is looked up in ``base_dirs``."""
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = value
    elif isinstance(value, str):
        path = value
    if data is not None:
        try:
            return store.put(data)
        except ImageBytesError as e:
            problems.append(f"{where}: undecodable image: {e}; skipped")
            return None
    if path:
        candidates = [Path(path)] if Path(path).is_absolute() else [d / path for d in base_dirs]
        return str(next((c for c in candidates if c.exists()), candidates[0]))
    problems.append(f"{where}: no image (neither bytes nor a path); skipped")
    return None


# -------------------------------------------------------------------------------------------- lmms-lab


def _expressions(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for v in value:
        text = (v.get("sent") or v.get("raw")) if isinstance(v, dict) else v
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    return out


def read_lmms(
    path: str | Path,
    images_dir: str | Path | None = None,
    splits=None,
    problems: list[str] | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    files: list[Path] | None = None,
):
    """Referring expressions from lmms-lab's RefCOCO / RefCOCO+ / RefCOCOg parquet files: ``path`` is one file
    or a directory of them (``files`` overrides the search). One sample per expression of ``answer``."""
    path = Path(path)
    problems = problems if problems is not None else []
    store = ImageStore(cache_dir)
    out: list[RecSample] = []
    for file in files if files is not None else parquet_files(path):
        split = split_of(file)
        if splits and split not in splits:
            continue
        pf = open_parquet(file)
        names = list(pf.schema_arrow.names)
        missing = [c for c in LMMS_REQUIRED if c not in names]
        if not any(c in names for c in EXPRESSION_COLUMNS):
            missing.append(" or ".join(EXPRESSION_COLUMNS))
        if missing:
            raise UserError(
                f"{file}: not the lmms-lab RefCOCO parquet layout: missing column(s) {', '.join(missing)} "
                f"(it has {', '.join(names) or 'no columns'}; expected question_id, image, answer, bbox [x, y, w, h])"
            )
        expr_col = next(c for c in EXPRESSION_COLUMNS if c in names)
        wanted = [c for c in ("question_id", "image", expr_col, "bbox", "file_name") if c in names]
        base_dirs = [Path(images_dir)] if images_dir else [file.parent, file.parent / "images"]
        for i, row in enumerate(iter_rows(pf, wanted), start=1):
            qid = row.get("question_id")
            qid = str(qid) if qid is not None and str(qid) != "" else f"{file.stem}:{i}"
            where = f"{file}: row {i} (question_id {qid!r})"
            box = xywh_box(row.get("bbox"), where, problems)
            if box is None:
                continue
            expressions = _expressions(row.get(expr_col))
            if not expressions:
                problems.append(f"{where}: no referring expression in '{expr_col}'; skipped")
                continue
            image = image_path(row.get("image"), where, problems, store, base_dirs)
            if image is None:
                continue
            file_name = row.get("file_name") or None
            for k, text in enumerate(expressions):
                out.append(
                    RecSample(
                        id=f"{split}/{qid}/{k}", image=image, expression=text, box=box, split=split,
                        file_name=str(file_name) if file_name else None, source_id=qid,
                    )
                )  # fmt: skip
            if limit is not None and len(out) >= limit:
                return out
    return out
