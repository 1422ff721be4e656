"""Histograms as inline SVG (no JavaScript, no external files)."""

from __future__ import annotations

import math
from html import escape

import numpy as np


def histogram_svg(
    title: str,
    series: dict[str, tuple[list[float], str]],
    bins: int = 20,
    width: int = 280,
    height: int = 180,
) -> str:
    """One SVG with a histogram per series (``name -> (values, css colour)``), overlaid, sharing the bins.
    The x range covers [0, 1] and every finite value."""
    finite = {name: [v for v in vals if math.isfinite(v)] for name, (vals, _) in series.items()}
    everything = [v for vals in finite.values() for v in vals]
    lo = min([0.0, *everything])
    hi = max([1.0, *everything])
    edges = np.linspace(lo, hi, bins + 1)
    counts = {name: np.histogram(vals, bins=edges)[0] for name, vals in finite.items()}
    top = max([1, *(int(c.max()) for c in counts.values() if len(c))])
    left, bottom, pad = 34, 26, 8
    pw, ph = width - left - pad, height - bottom - 22
    bw = pw / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{left}" y1="{22 + ph}" x2="{left + pw}" y2="{22 + ph}" stroke="#444"/>',
        f'<line x1="{left}" y1="22" x2="{left}" y2="{22 + ph}" stroke="#444"/>',
        f'<text x="{left - 4}" y="30" font-size="10" text-anchor="end">{top}</text>',
        f'<text x="{left - 4}" y="{22 + ph}" font-size="10" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 8}" font-size="10" text-anchor="middle">{lo:.2g}</text>',
        f'<text x="{left + pw}" y="{height - 8}" font-size="10" text-anchor="middle">{hi:.2g}</text>',
    ]
    for k, (name, (_, colour)) in enumerate(series.items()):
        for i, c in enumerate(counts[name]):
            if c == 0:
                continue
            h = ph * c / top
            parts.append(
                f'<rect x="{left + i * bw:.1f}" y="{22 + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                f'fill="{escape(colour)}" fill-opacity="0.55"><title>{escape(name)}: {c} in '
                f"[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>"
            )
        lx = left + pw - 105
        ly = 30 + 13 * k
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="9" height="9" fill="{escape(colour)}"/>')
        parts.append(
            f'<text x="{lx + 13}" y="{ly}" font-size="10">{escape(name)} (n={len(finite[name])})</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
