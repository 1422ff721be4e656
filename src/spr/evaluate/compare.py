"""Two evaluation runs side by side: ``spr eval compare A B`` prints a markdown table with B - A per metric.

A and B are ``metrics.json`` files or the run directories that hold them. Every number is compared: the
top-level (all samples) values first, then per split (``val/acc@0.5``) and per phrase type. Where the task
declares whether higher is better, the last column says which run is better.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from spr.config import opt, required
from spr.errors import UserError

from .task import METRICS_FILE

_SKIP = {"n"}


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such file (give a metrics.json or the run directory holding it)"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None
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

    task = TASKS.get(task_name or "")
    return {m.name: m.higher_is_better for m in task.metrics} if task else {}


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Markdown table: metric | A | B | B - A | which is better (rows in A's order, then B's extra ones)."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    better = _direction(a.get("task") or b.get("task"))
    lines = [f"| metric | {name_a} | {name_b} | delta | better |", "|---|---:|---:|---:|---|"]
    for k in keys:
        va, vb = fa.get(k), fb.get(k)
        if k.rsplit("/", 1)[-1] in _SKIP:
            delta = "" if va is None or vb is None else f"{vb - va:+g}"
            lines.append(
                f"| {k} | {'-' if va is None else f'{va:g}'} | {'-' if vb is None else f'{vb:g}'} | {delta} | |"
            )
            continue
        delta = "-" if va is None or vb is None else f"{vb - va:+.4f}"
        higher = better.get(k.rsplit("/", 1)[-1])
        verdict = ""
        if higher is not None and va is not None and vb is not None and va != vb:
            verdict = name_b if (vb > va) == higher else name_a
        lines.append(f"| {k} | {_cell(va)} | {_cell(vb)} | {delta} | {verdict} |")
    return "\n".join(lines)


def compare_paths(path_a: str | Path, path_b: str | Path) -> str:
    a, b = load_metrics(path_a), load_metrics(path_b)
    if a.get("task") and b.get("task") and a["task"] != b["task"]:
        raise UserError(
            f"{path_a} is a {a['task']!r} evaluation and {path_b} a {b['task']!r} one: nothing to compare"
        )
    return compare(a, b, _run_name(path_a), _run_name(path_b))


def _run_name(path: str | Path) -> str:
    path = Path(path)
    if path.name == METRICS_FILE:
        path = path.parent
    return path.name or str(path)


HELP = "Two evaluation runs side by side: B - A per metric, and which run is better."


@dataclass
class CompareConfig:
    """`spr eval compare A B`."""

    a: str = opt(required, "metrics.json or run directory (the baseline)", positional=True)
    b: str = opt(required, "metrics.json or run directory (compared with A)", positional=True)
    out: str | None = opt(None, "also write the table to this file")


Config = CompareConfig


def run(config: CompareConfig) -> int:
    table = compare_paths(config.a, config.b)
    print(table)
    if config.out:
        Path(config.out).write_text(table + "\n", encoding="utf-8")
    return 0
