"""Charts as inline SVG (no JavaScript, no external files): score histograms and the results chart."""

from __future__ import annotations

import math
from html import escape

import numpy as np

CHAR_W = 6.0  # rough width of one character at font-size 10, for laying out legends


def _legend(items: list[tuple[str, str]], x0: float, y0: float, width: float) -> tuple[list[str], float]:
    """Legend entries (label, colour) laid out in rows from (x0, y0) within ``width``; the parts and the y
    below the last row."""
    parts, x, y = [], x0, y0
    for label, colour in items:
        w = 13 + CHAR_W * len(label) + 12
        if x > x0 and x + w > x0 + width:
            x, y = x0, y + 14
        parts.append(f'<rect x="{x:.0f}" y="{y - 8:.0f}" width="9" height="9" fill="{escape(colour)}"/>')
        parts.append(f'<text x="{x + 13:.0f}" y="{y:.0f}" font-size="10">{escape(label)}</text>')
        x += w
    return parts, y + 6


def histogram_svg(
    title: str,
    series: dict[str, tuple[list[float], str]],
    bins: int = 20,
    width: int = 280,
    height: int = 200,
) -> str:
    """One SVG with a histogram per series (``name -> (values, css colour)``), overlaid, sharing the bins.
    The x range covers [0, 1] and every finite value. The legend sits between the title and the plot, never on
    the bars."""
    finite = {name: [v for v in vals if math.isfinite(v)] for name, (vals, _) in series.items()}
    everything = [v for vals in finite.values() for v in vals]
    lo = min([0.0, *everything])
    hi = max([1.0, *everything])
    edges = np.linspace(lo, hi, bins + 1)
    counts = {name: np.histogram(vals, bins=edges)[0] for name, vals in finite.items()}
    top = max([1, *(int(c.max()) for c in counts.values() if len(c))])
    left, bottom, pad = 34, 26, 8
    legend, plot_top = _legend(
        [(f"{name} (n={len(finite[name])})", colour) for name, (_, colour) in series.items()],
        left,
        30,
        width - left - pad,
    )
    pw, ph = width - left - pad, height - bottom - plot_top
    bw = pw / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        *legend,
        f'<line x1="{left}" y1="{plot_top + ph}" x2="{left + pw}" y2="{plot_top + ph}" stroke="#444"/>',
        f'<line x1="{left}" y1="{plot_top}" x2="{left}" y2="{plot_top + ph}" stroke="#444"/>',
        f'<text x="{left - 4}" y="{plot_top + 8}" font-size="10" text-anchor="end">{top}</text>',
        f'<text x="{left - 4}" y="{plot_top + ph}" font-size="10" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 8}" font-size="10" text-anchor="middle">{lo:.2g}</text>',
        f'<text x="{left + pw}" y="{height - 8}" font-size="10" text-anchor="middle">{hi:.2g}</text>',
        f'<text x="{left + pw / 2}" y="{height - 8}" font-size="10" text-anchor="middle" fill="#666">'
        "score</text>",
    ]
    for name, (_, colour) in series.items():
        for i, c in enumerate(counts[name]):
            if c == 0:
                continue
            h = ph * c / top
            parts.append(
                f'<rect x="{left + i * bw:.1f}" y="{plot_top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                f'fill="{escape(colour)}" fill-opacity="0.55"><title>{escape(name)}: {c} in '
                f"[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(
    title: str,
    xs: list[float],
    series: dict[str, tuple[list[float | None], str]],
    x_label: str,
    y_label: str,
    width: int = 520,
    height: int = 300,
    y_range: tuple[float, float] = (0.0, 1.0),
    x_labels: list[str] | None = None,
) -> str:
    """Lines with markers, one per series (``name -> (y per x or None, css colour)``), y over ``y_range`` (0
    to 1 unless given), ``x_labels`` under the ticks (the x values unless given), the legend to the right of the
    plot. Every marker has a tooltip with its value. Each series is a ``<g class="series" data-series="name">``."""
    names = list(series)
    legend_w = min(180, max(70, 22 + CHAR_W * max([len(n) for n in names] or [4])))
    left, right, top, bottom = 44, legend_w + 16, 24, 40
    pw, ph = width - left - right, height - top - bottom
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (hi - lo) or 1.0

    def px(x: float) -> float:
        return left + (x - lo) / span * pw if len(xs) > 1 else left + pw / 2

    y_lo, y_hi = y_range

    def py(y: float) -> float:
        return top + ph * (1 - min(max((y - y_lo) / (y_hi - y_lo), 0.0), 1.0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="results-chart" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
    ]
    for k in range(6):
        y = y_lo + (y_hi - y_lo) * k / 5
        parts.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" '
            f'stroke="{"#444" if k == 0 else "#e3e3e3"}"/>'
        )
        parts.append(
            f'<text x="{left - 5}" y="{py(y) + 3:.1f}" font-size="10" text-anchor="end">{y:.{2 if y_hi - y_lo < 0.5 else 1}f}</text>'
        )
    for i, x in enumerate(xs):
        label = x_labels[i] if x_labels else f"{x:g}"
        parts.append(
            f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 4}" stroke="#444"/>'
        )
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + ph + 15}" font-size="10" text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#444"/>')
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + ph / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + ph / 2:.1f})">{escape(y_label)}</text>'
    )
    for k, (name, (ys, colour)) in enumerate(series.items()):
        c = escape(colour)
        points = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        group = [f'<g class="series" data-series="{escape(name)}">']
        if len(points) > 1:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            group.append(f'<polyline points="{coords}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in points:
            group.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{c}">'
                f"<title>{escape(name)}: {y:.3f} at {x:g}</title></circle>"
            )
        group.append("</g>")
        parts.extend(group)
        ly = top + 8 + 16 * k
        lx = left + pw + 14
        parts.append(
            f'<line x1="{lx}" y1="{ly - 3}" x2="{lx + 14}" y2="{ly - 3}" stroke="{c}" stroke-width="2"/>'
        )
        parts.append(f'<circle cx="{lx + 7}" cy="{ly - 3}" r="3" fill="{c}"/>')
        parts.append(f'<text x="{lx + 19}" y="{ly + 1}" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
