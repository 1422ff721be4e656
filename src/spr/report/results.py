"""The results section: base vs each round at each IoU threshold, from ``results.json``."""

from __future__ import annotations

import math
import re
from html import escape

from ..evaluate.rec import BOX_ERRORS
from .cells import MODEL_COLOURS
from .data import ReportData
from .svg import line_chart_svg

_ACC = re.compile(r"^acc@([0-9]*\.?[0-9]+)$")
_F1 = re.compile(r"^description_f1@([0-9]*\.?[0-9]+)$")


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _metric_columns(models: dict[str, dict]) -> tuple[list[float], list[tuple[str, str]]]:
    """The IoU thresholds of the acc@ keys, and (key, column title) for every metric column, in order: REC
    accuracy per threshold, mean IoU, description F1 per threshold, then any other numeric key."""
    keys: list[str] = []
    for m in models.values():
        for k in m if isinstance(m, dict) else ():
            if k not in keys:
                keys.append(k)
    accs = sorted((float(_ACC.match(k).group(1)), k) for k in keys if _ACC.match(k))
    f1s = sorted((float(_F1.match(k).group(1)), k) for k in keys if _F1.match(k))
    cols = [(k, f"REC acc@{t:g}") for t, k in accs]
    if "mean_iou" in keys:
        cols.append(("mean_iou", "REC mean IoU"))
    cols += [(k, f"description F1@{t:g}") for t, k in f1s]
    taken = {k for k, _ in cols}
    numeric = {
        k for m in models.values() if isinstance(m, dict) for k, v in m.items() if _number(v) is not None
    }
    cols += [(k, k) for k in keys if k not in taken and k in numeric]
    return [t for t, _ in accs], cols


def results_section(data: ReportData) -> str:
    res = data.results
    if not res:
        return f'<h2>Results</h2><p class="muted">{escape(data.results_note or "No results.json in this run.")}</p>'
    models = {str(k): (v if isinstance(v, dict) else {}) for k, v in res["models"].items()}
    ev = res.get("eval") if isinstance(res.get("eval"), dict) else {}
    names = list(models)
    thresholds, cols = _metric_columns(models)
    base = names[0] if names else None

    def cell(name: str, key: str) -> str:
        v = _number(models[name].get(key))
        if v is None:
            return '<td class="num">-</td>'
        out = f"{v:.3f}"
        b = _number(models[base].get(key)) if base is not None else None
        if name != base and b is not None:
            d = v - b
            if key in BOX_ERRORS:  # mean signed errors: better is nearer 0, not higher
                d_abs = abs(v) - abs(b)
                cls = "up" if d_abs < 0 else "down" if d_abs > 0 else ""
            else:
                cls = "up" if d > 0 else "down" if d < 0 else ""
            out += f'<span class="delta {cls}">({d:+.3f})</span>'
        return f'<td class="num">{out}</td>'

    head = "<th>model</th>" + "".join(f"<th>{escape(t)}</th>" for _, t in cols)
    body = "".join(
        f"<tr><td>{escape(n)}</td>" + "".join(cell(n, k) for k, _ in cols) + "</tr>" for n in names
    )
    table = f'<table class="results-table"><tr>{head}</tr>{body}</table>'
    chart = ""
    if thresholds:
        acc_keys = [k for k, _ in cols if _ACC.match(k)]
        chart = line_chart_svg(
            "REC accuracy by IoU threshold",
            thresholds,
            {
                n: ([_number(models[n].get(k)) for k in acc_keys], MODEL_COLOURS[i % len(MODEL_COLOURS)])
                for i, n in enumerate(names)
            },
            x_label="IoU threshold t (a predicted box counts when IoU >= t)",
            y_label="REC accuracy",
        )

    def count(key: str) -> str:
        v = ev.get(key)
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else "?"

    split = ev.get("split")
    on = (
        f"On the <b>{escape(str(split))}</b> split" if split else "On an unnamed split"
    ) + f": REC on n = {escape(count('rec_n'))} referring expressions, description F1 on n = "
    on += f"{escape(count('description_n'))} regions."
    if ev.get("note"):
        on += f" {escape(str(ev['note']))}."
    explain = (
        "REC acc@t: share of referring expressions whose predicted box has IoU &gt;= t with the annotated one (no "
        "box is a miss). Description F1@t: each region's described boxes matched one-to-one with its annotated "
        "objects at IoU &gt;= t, micro-averaged over regions. width_error, height_error, centre_dx, centre_dy: mean "
        "signed error in pixels (predicted minus annotated) of the REC boxes that hit (IoU &gt;= 0.5), the "
        "systematic part of the box error (boxes too loose, too tight, shifted): nearer 0 is better. "
        + (
            f"Deltas in brackets are against the first model, <b>{escape(base)}</b>."
            if len(names) > 1
            else ""
        )
    )
    return (
        f"<h2>Results</h2><p>{on}</p>"
        f'<div class="results">{chart}<div>{table}<p class="muted small">{explain}</p></div></div>'
    )
