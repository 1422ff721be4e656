"""One shape for every evaluation task, and the registry that holds them.

A task reads its samples, builds one prompt per sample, turns each answer into a per-sample record
(``predictions.jsonl``, resumable), and aggregates the records into metrics (``metrics.json``), the
lmms-eval way: per-sample outputs first, corpus metrics computed from them alone. Its metrics are declared with
``higher_is_better``, which ``spr eval compare`` uses. ``spr eval <name>`` exists for every registered task.

Add a task: subclass :class:`Task`, give it a config dataclass (a subclass of :class:`EvalConfig`), and
:func:`register_task` an instance. Everything else (loading the model, batching, resuming, refusing a run
directory made with other settings, images that cannot be read, the split table) is shared here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from spr.config import opt, output_settings, required
from spr.data.guard import StageOutput, fingerprint
from spr.data.jsonl import JsonlWriter, iter_jsonl
from spr.errors import UserError
from spr.options import Device, Dtype, ImageLimit, ModelFamily, PixelBudget, Progress, resolve_device
from spr.registry import Registry

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclass
class EvalConfig(ModelFamily, PixelBudget, ImageLimit, Device, Dtype, Progress):
    """What every `spr eval <task>` takes; a task's config adds its own fields."""

    model: str = opt(required, "model directory (base, merged, or any from_pretrained directory)")
    data: str = opt(required, "the task's data (file or directory; see `spr eval <task> --help`)")
    out: str = opt(required, "run directory: predictions.jsonl, metrics.json (resumable)")
    splits: list[str] | None = opt(None, "evaluate these splits only", default_text="all splits of the data")
    batch_size: int = opt(8, "prompts per batch", output=False, min=1)
    max_new_tokens: int = opt(64, "answer length limit, in tokens", min=1)
    limit: int | None = opt(None, "evaluate only the first N samples", output=False, min=1)
    overwrite: bool = opt(False, "discard earlier predictions in --out", output=False)
    train_regions: str | None = opt(
        None, "a training run's regions.jsonl: warn when evaluation images are among its images (same file name "
        "or same bytes)", default_text="no check", output=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None = True
    """None: a diagnostic with no better direction (a signed error)."""


class Task:
    """Subclasses set ``name``, ``HELP``, ``Config``, ``metrics`` and implement ``read``, ``prompt`` and
    ``record`` (and ``view`` when the model sees part of the image, ``aggregate`` for corpus metrics)."""

    name: str = ""
    HELP: str = ""
    Config: type = EvalConfig
    metrics: tuple[Metric, ...] = ()
    caption: str = ""
    """Printed under the metrics table: what the numbers mean (e.g. the IoU threshold rule)."""

    # --------------------------------------------------------------------------------- per sample
    def read(self, config, problems: list[str]) -> list:
        """The samples (each with ``id``, ``image``, ``split``); bad records go into ``problems``."""
        raise NotImplementedError

    def prompt(self, adapter, config, sample, view_size) -> str:
        raise NotImplementedError

    def view(self, adapter, config, sample, image):
        """The part of ``image`` the model sees (default: all of it)."""
        return image

    def record(self, adapter, config, sample, text: str, view_size, error: str | None) -> dict:
        """The per-sample record of ``text`` (``error`` set, ``text`` empty, when the image failed)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- corpus
    def group_metrics(self, records: list[dict]) -> dict:
        """Metrics of one group of records (all, or one split)."""
        raise NotImplementedError

    def aggregate(self, records: list[dict], config) -> dict:
        """Metrics over all records and per split; a requested split absent from the data is reported with
        ``n = 0`` and ``missing: true``."""
        by_split: dict[str, list[dict]] = {}
        for r in records:
            by_split.setdefault(str(r.get("split", "all")), []).append(r)
        metrics = {"task": self.name, **self.group_metrics(records), "splits": {}}
        for name in sorted(by_split):
            metrics["splits"][name] = self.group_metrics(by_split[name])
        for name in [s for s in (config.splits or []) if s not in by_split]:
            metrics["splits"][name] = {**self.group_metrics([]), "missing": True}
        return metrics

    def settings(self, config) -> dict:
        """What decides the predictions: the config's output fields, the model by fingerprint."""
        out = output_settings(config)
        out.pop("out")
        out["model"] = fingerprint(config.model) if Path(config.model).is_dir() else config.model
        out["data"] = str(Path(config.data).resolve())
        return {"task": self.name, **out}

    def columns(self) -> list[str]:
        return [m.name for m in self.metrics] + ["n"]

    # ------------------------------------------------------------------------------ the CLI
    def run(self, config) -> int:
        metrics = evaluate(self, config)
        print(split_table(metrics, self.columns()))
        if self.caption:
            print(self.caption)
        problems = metrics.get("problems", [])
        for msg in problems[:20]:
            print(f"  problem: {msg}", file=sys.stderr)
        if len(problems) > 20:
            print(
                f"  ... {len(problems) - 20} more problems in {Path(config.out) / METRICS_FILE}",
                file=sys.stderr,
            )
        print(f"\nmetrics: {Path(config.out) / METRICS_FILE}")
        return 0


TASKS: Registry[Task] = Registry("evaluation task")


def register_task(task: Task) -> Task:
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


# --------------------------------------------------------------------------------------------- the runner


def load_adapter(config):
    from spr import models

    return models.load(
        config.model, family=config.family, device=resolve_device(config.device), dtype=config.dtype,
        min_pixels=config.min_pixels, max_pixels=config.max_pixels,
    )  # fmt: skip


def evaluate(task: Task, config, adapter=None) -> dict:
    """Predict every sample not yet in ``config.out`` (resumable; another run's directory is refused), then
    aggregate; writes predictions.jsonl and metrics.json and returns the metrics."""
    from .generation import run_predictions

    problems: list[str] = []
    samples = task.read(config, problems)
    if not samples:
        detail = f": {len(problems)} record(s) skipped, e.g. {problems[0]}" if problems else ""
        raise UserError(f"{config.data}: no usable sample for `spr eval {task.name}`{detail}")
    if config.limit is not None:
        samples = samples[: config.limit]
    overlap_warnings, overlap = [], None
    if getattr(config, "train_regions", None):
        from . import overlap as train_overlap

        overlap_warnings, overlap = train_overlap.check(samples, config.train_regions)
        for msg in overlap_warnings:  # before the predictions: the user may stop here
            print(f"warning: {msg}", file=sys.stderr)
    out = Path(config.out)
    inputs = {"data": config.data} if Path(config.data).is_file() else None  # a directory: by its path
    with StageOutput(
        out, f"eval {task.name}", task.settings(config), config.overwrite, directory=True, inputs=inputs
    ):
        with JsonlWriter(out / PREDICTIONS_FILE) as writer:
            if samples and any(not writer.has(s.id) for s in samples):
                adapter = adapter or load_adapter(config)
                run_predictions(
                    adapter, samples, writer,
                    prompt_of=lambda s, size: task.prompt(adapter, config, s, size),
                    record_of=lambda s, text, size, error: task.record(adapter, config, s, text, size, error),
                    view_of=lambda s, image: task.view(adapter, config, s, image),
                    batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                    desc=task.name, progress=not config.quiet, max_pixels=config.max_image_pixels,
                )  # fmt: skip
        wanted = {s.id for s in samples}
        records = [r for r in iter_jsonl(out / PREDICTIONS_FILE, skip_bad=True) if r.get("id") in wanted]
        metrics = task.aggregate(records, config)
        problems = missing_split_problems(metrics) + overlap_warnings + problems + metrics.get("problems", [])
        problems += [
            f"{r['id']}: {m}"
            for r in records
            if r.get("status") == "image_error"
            for m in r.get("problems", [])
        ]
        metrics.update(model=str(config.model), data=str(config.data), problems=problems)
        if overlap is not None:
            metrics["train_overlap"] = overlap
        write_metrics(out, metrics)
    return metrics


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    import json

    path = Path(out_dir) / METRICS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


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
    import math

    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def table(rows: list[dict], columns: list[str]) -> str:
    """A small markdown table of metrics (4 decimals, "-" for missing values)."""
    from spr.table import markdown_table

    return markdown_table(columns, [[r.get(c) for c in columns] for r in rows], cell=_fmt)


def split_table(metrics: dict, columns: list[str]) -> str:
    """Rows: one per split, then "all" (unless the only split is already "all")."""
    rows = [{"split": name, **vals} for name, vals in metrics.get("splits", {}).items()]
    if [r["split"] for r in rows] != ["all"]:
        rows.append({"split": "all", **{c: metrics.get(c) for c in columns}})
    return table(rows, ["split", *columns])
