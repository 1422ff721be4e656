"""Two evaluation runs side by side: ``spr eval compare A B`` prints a markdown table with B - A per metric.

A and B are ``metrics.json`` files or the run directories that hold them. Every number is compared: the
top-level (all samples) values first, then per split (``val/acc@0.5``) and per phrase type. Where the task
declares whether higher is better, the last column says which run is better.

Where both run directories hold their ``predictions.jsonl``, a ``95% CI`` column gives a paired bootstrap
interval of B - A (:mod:`spr.evaluate.bootstrap`): the samples the runs share are matched by id and resampled
with replacement (2000 resamples, fixed seed), both runs with the same draws. That is every REC metric
(acc@t, acc@0.5:0.95, mean IoU, per size, per split), phrase grounding recall@1, and the grounded description
scores (precision / recall / F1, resampling regions). A better run whose interval includes 0 is marked
``(n.s.)``: the difference is within what resampling the samples gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spr.config import opt, required
from spr.data.files import read_json
from spr.data.jsonl import iter_jsonl
from spr.errors import UserError

from . import bootstrap
from .task import METRICS_FILE, PREDICTIONS_FILE

_SKIP = {"n"}


def _is_count(name: str) -> bool:
    return name in _SKIP or name.startswith("n_")


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    data = read_json(path, "a metrics.json, or the run directory holding it")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of metrics")
    return data


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def flatten(metrics: dict) -> dict[str, float]:
    """``{"acc@0.5": .., "val/acc@0.5": .., "type:people/recall@1_any": ..}`` (numbers only; counts kept as
    ``n``)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if _is_number(v):
            out[k] = float(v)
    for group, prefix in (("splits", ""), ("types", "type:")):
        for name, vals in (metrics.get(group) or {}).items():
            if isinstance(vals, dict):
                for k, v in vals.items():
                    if _is_number(v):
                        out[f"{prefix}{name}/{k}"] = float(v)
    return out


def _cell(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _direction(task_name: str | None) -> dict[str, bool]:
    """metric name -> higher_is_better, from the registered task."""
    from .task import TASKS

    task = TASKS.get(task_name) if task_name in TASKS else None
    return {m.name: m.higher_is_better for m in task.metrics} if task else {}


def compare(
    a: dict,
    b: dict,
    name_a: str = "A",
    name_b: str = "B",
    intervals: dict | None = None,
    notes: list[str] | None = None,
) -> str:
    """Markdown table: metric | A | B | B - A | which is better (rows in A's order, then B's extra ones). With
    ``intervals`` (flat metric name -> (lo, hi)), a ``95% CI`` column after the delta; ``notes`` go below."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    better = _direction(a.get("task") or b.get("task"))
    ci = bool(intervals)
    if ci:
        lines = [
            f"| metric | {name_a} | {name_b} | delta | 95% CI | better |",
            "|---|---:|---:|---:|---:|---|",
        ]
    else:
        lines = [f"| metric | {name_a} | {name_b} | delta | better |", "|---|---:|---:|---:|---|"]
    for k in keys:
        va, vb = fa.get(k), fb.get(k)
        if _is_count(k.rsplit("/", 1)[-1]):
            delta = "" if va is None or vb is None else f"{vb - va:+g}"
            counts = (
                f"| {k} | {'-' if va is None else f'{va:g}'} | {'-' if vb is None else f'{vb:g}'} | {delta} |"
            )
            lines.append(counts + (" | |" if ci else " |"))
            continue
        delta = "-" if va is None or vb is None else f"{vb - va:+.4f}"
        higher = better.get(k.rsplit("/", 1)[-1])
        interval = (intervals or {}).get(k)
        verdict = ""
        if higher is not None and va is not None and vb is not None and va != vb:
            verdict = name_b if (vb > va) == higher else name_a
            if interval is not None and interval[0] <= 0 <= interval[1]:
                verdict += " (n.s.)"
        cells = [k, _cell(va), _cell(vb), delta]
        if ci:
            cells.append("-" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]")
        lines.append("| " + " | ".join([*cells, verdict]) + " |")
    return "\n".join(lines + [""] + notes if notes else lines)


# ------------------------------------------------------------------------------------ per-sample data


def load_predictions(path: str | Path) -> list[dict] | None:
    """The records of a run's predictions.jsonl (first record of each id), or None when there is none."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    file = run_dir / PREDICTIONS_FILE
    if not file.is_file():
        return None
    out: dict[str, dict] = {}
    for r in iter_jsonl(file, skip_bad=True):
        if "id" in r:
            out.setdefault(str(r["id"]), r)
    return list(out.values())


def sample_columns(task: str | None, records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric of ``task``, per-sample (numerator, denominator) arrays: the metric is num.sum() / den.sum().
    Empty for a task without per-sample metrics (captioning: CIDEr and the like are not sums)."""
    n = len(records)
    ones = np.ones(n)

    def share(flags) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(list(flags), dtype=float).reshape(n), ones

    status = [r.get("status") for r in records]
    if task == "rec":
        from . import rec

        return rec.sample_columns(records)
    if task == "grounding":
        from .phrase_grounding import _correct

        hits = np.array(
            [_correct(r.get("pred_box"), r.get("gt_boxes")) for r in records], dtype=float
        ).reshape(n, 2)
        return {
            "recall@1_any": (hits[:, 0], ones),
            "recall@1_merged": (hits[:, 1], ones),
            "parse_fail": share(s == "no_box" for s in status),
            "image_fail": share(s == "image_error" for s in status),
        }
    if task == "description":
        from .description import THRESHOLDS, _counts

        counts = [_counts(r.get("pred_boxes") or [], r.get("ref_boxes") or []) for r in records]
        n_pred = np.array([c["n_pred"] for c in counts], dtype=float).reshape(n)
        n_ref = np.array([c["n_ref"] for c in counts], dtype=float).reshape(n)
        cols = {}
        for t in THRESHOLDS:
            tp = np.array([c[f"tp@{t}"] for c in counts], dtype=float).reshape(n)
            cols[f"precision@{t}"] = (tp, n_pred)
            cols[f"recall@{t}"] = (tp, n_ref)
            # micro F1 = 2PR / (P + R) = 2 TP / (predicted + annotated)
            cols[f"f1@{t}"] = (
                2 * tp,
                n_pred + n_ref,
            )
        cols["mean_boxes"] = (n_pred, ones)
        cols["no_box"] = share(s == "no_box" for s in status)
        cols["image_fail"] = share(s == "image_error" for s in status)
        sem = [r.get("semantic") for r in records]
        cols["semantic"] = (
            np.array([v if v is not None else 0.0 for v in sem], dtype=float).reshape(n),
            np.array([v is not None for v in sem], dtype=float).reshape(n),
        )
        return cols
    return {}


def grouped_columns(task: str | None, records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`sample_columns` for all records, per split (``val/acc@0.5``) and, for grounding, per phrase type
    (``type:people/recall@1_any``): the names :func:`flatten` gives the metrics."""
    base = sample_columns(task, records)
    if not base:
        return {}
    out = dict(base)
    groups: dict[str, np.ndarray] = {}
    splits = [str(r.get("split", "all")) for r in records]
    for name in sorted(set(splits)):
        groups[f"{name}/"] = np.array([s == name for s in splits], dtype=float)
    if task == "grounding":
        types = [r.get("phrase_type") or ["other"] for r in records]
        for name in sorted({t for ts in types for t in ts}):
            groups[f"type:{name}/"] = np.array([name in ts for ts in types], dtype=float)
    for prefix, mask in groups.items():
        for k, (num, den) in base.items():
            out[prefix + k] = (num * mask, den * mask)
    return out


_TRUTH = {"rec": "gt_box", "grounding": "gt_boxes", "description": "ref_boxes"}


def intervals_for(
    task, recs_a: list[dict], recs_b: list[dict], resamples=bootstrap.RESAMPLES, seed=bootstrap.SEED
):
    """(flat metric name -> (lo, hi), notes) from the per-sample records of two runs, paired by id."""
    by_b = {str(r["id"]): r for r in recs_b}
    pairs = [(r, by_b[str(r["id"])]) for r in recs_a if str(r["id"]) in by_b]
    if not pairs:
        return {}, ["95% CI: none (the two runs' predictions.jsonl share no sample id)"]
    pa, pb = [p[0] for p in pairs], [p[1] for p in pairs]
    ca, cb = grouped_columns(task, pa), grouped_columns(task, pb)
    keys = [k for k in ca if k in cb]
    if not keys:
        return {}, []
    stack = lambda cols, i: np.stack([cols[k][i] for k in keys], axis=1)  # noqa: E731
    _, lo, hi = bootstrap.paired_bootstrap(
        stack(ca, 0), stack(ca, 1), stack(cb, 0), stack(cb, 1), resamples, seed
    )
    intervals = {
        k: (float(lo[j]), float(hi[j]))
        for j, k in enumerate(keys)
        if np.isfinite(lo[j]) and np.isfinite(hi[j])
    }
    notes = [
        f"95% CI: paired bootstrap of B - A over the {len(pairs)} samples both runs hold (matched by id; "
        f"{resamples} resamples, seed {seed}); (n.s.): the interval includes 0"
    ]
    if len(pairs) < max(len(recs_a), len(recs_b)):
        notes.append(f"note: A has {len(recs_a)} samples and B {len(recs_b)}; only the {len(pairs)} shared are resampled")  # fmt: skip
    truth = _TRUTH.get(task or "")
    differ = sum(1 for x, y in pairs if truth and x.get(truth) != y.get(truth))
    if differ:
        notes.append(f"warning: {differ} shared sample id(s) have different ground truth in the two runs (different data?)")  # fmt: skip
    return intervals, notes


def compare_paths(path_a: str | Path, path_b: str | Path, resamples: int = bootstrap.RESAMPLES, seed: int = bootstrap.SEED) -> str:  # fmt: skip
    a, b = load_metrics(path_a), load_metrics(path_b)
    if a.get("task") and b.get("task") and a["task"] != b["task"]:
        raise UserError(
            f"{path_a} is a {a['task']!r} evaluation and {path_b} a {b['task']!r} one: nothing to compare"
        )
    intervals, notes = {}, []
    recs_a, recs_b = load_predictions(path_a), load_predictions(path_b)
    if recs_a is not None and recs_b is not None and resamples > 0:
        intervals, notes = intervals_for(a.get("task") or b.get("task"), recs_a, recs_b, resamples, seed)
        for name, m, recs in ((_run_name(path_a), a, recs_a), (_run_name(path_b), b, recs_b)):
            if isinstance(m.get("n"), int) and m["n"] != len(recs):
                notes.append(f"note: {name}'s predictions.jsonl holds {len(recs)} samples, its metrics.json n = {m['n']}")  # fmt: skip
    return compare(a, b, _run_name(path_a), _run_name(path_b), intervals, notes)


def _run_name(path: str | Path) -> str:
    path = Path(path)
    if path.name == METRICS_FILE:
        path = path.parent
    return path.name or str(path)


HELP = "Two evaluation runs side by side: B - A per metric with a paired bootstrap 95% interval, and which run is better."


@dataclass
class CompareConfig:
    """`spr eval compare A B`."""

    a: str = opt(required, "metrics.json or run directory (the baseline)", positional=True)
    b: str = opt(required, "metrics.json or run directory (compared with A)", positional=True)
    out: str | None = opt(None, "also write the table to this file")
    resamples: int = opt(bootstrap.RESAMPLES, "bootstrap resamples for the 95% intervals (0: no intervals)")
    seed: int = opt(bootstrap.SEED, "bootstrap seed")


Config = CompareConfig


def run(config: CompareConfig) -> int:
    table = compare_paths(config.a, config.b, config.resamples, config.seed)
    print(table)
    if config.out:
        Path(config.out).write_text(table + "\n", encoding="utf-8")
    return 0
