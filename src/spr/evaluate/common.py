"""What every evaluation shares: the output directory (resumable predictions + metrics.json), image loading that
reports instead of raising, and the small summary table."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from spr.data.jsonl import JsonlWriter, iter_jsonl
from spr.errors import UserError

RUN_FILE = "eval_run.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


def open_run(out_dir: str | Path, meta: dict, overwrite: bool = False) -> JsonlWriter:
    """The predictions writer of an evaluation run in ``out_dir``.

    A re-run with the same task, model and data resumes (ids already predicted are skipped); a directory that
    holds another run's predictions is refused unless ``overwrite``, so two runs never mix.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file = out_dir / RUN_FILE
    pred_file = out_dir / PREDICTIONS_FILE
    if run_file.exists() and not overwrite:
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != meta:
            raise UserError(
                f"{out_dir} holds another evaluation run ({run_file}: {old}); "
                "choose another --out or pass --overwrite to start this one afresh"
            )
    if overwrite:
        for f in (pred_file, out_dir / METRICS_FILE):
            if f.exists():
                f.unlink()
    run_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return JsonlWriter(pred_file)


def read_predictions(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / PREDICTIONS_FILE
    return list(iter_jsonl(path, skip_bad=True)) if path.exists() else []


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    path = Path(out_dir) / METRICS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


class ImageCache:
    """Loads images as RGB, remembering the last few (several samples share an image) and the ones that failed."""

    def __init__(self, size: int = 16):
        self.size = size
        self._cache: OrderedDict[str, object] = OrderedDict()
        self.errors: dict[str, str] = {}

    def get(self, path: str):
        """``(image, None)`` or ``(None, reason)``; never raises."""
        if path in self.errors:
            return None, self.errors[path]
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path], None
        try:
            from PIL import Image

            with Image.open(path) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            self.errors[path] = f"image not found: {path}"
            return None, self.errors[path]
        except Exception as e:  # PIL raises many types for corrupt files
            self.errors[path] = f"image cannot be read: {path}: {type(e).__name__}: {e}"
            return None, self.errors[path]
        self._cache[path] = image
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return image, None


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


def missing_splits(requested: Iterable[str] | None, present: Iterable[str]) -> list[str]:
    present = set(present)
    return [s for s in (requested or []) if s not in present]


def missing_split_problems(metrics: dict) -> list[str]:
    """One message per requested split that the data does not have."""
    splits = metrics.get("splits", {})
    present = sorted(k for k, v in splits.items() if not v.get("missing"))
    return [
        f"split {name!r}: not in the data (present: {', '.join(present) or 'none'}); reported with n = 0"
        for name, v in splits.items()
        if v.get("missing")
    ]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def table(rows: list[dict], columns: list[str]) -> str:
    """A small markdown table of metrics (4 decimals, "-" for missing values)."""
    from ..table import markdown_table

    return markdown_table(columns, [[r.get(c) for c in columns] for r in rows], cell=_fmt)


def split_table(metrics: dict, columns: list[str]) -> str:
    """Rows: one per split, then "all" (unless the only split is already "all")."""
    rows = [{"split": name, **vals} for name, vals in metrics.get("splits", {}).items()]
    if [r["split"] for r in rows] != ["all"]:
        rows.append({"split": "all", **{c: metrics.get(c) for c in columns}})
    return table(rows, ["split", *columns])
