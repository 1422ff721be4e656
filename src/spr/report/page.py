"""The static HTML report of a run: per region the image with the region, reference, chosen and rejected boxes,
the texts and their scores; histograms of the scores; the pair and problem statistics.

Everything a model or a data file wrote is HTML-escaped (``html.escape``), and the page forbids scripts with a
Content-Security-Policy, so a description cannot inject markup or script. Thumbnails are PNG files in
``report_files/`` beside the page, linked by relative paths: the run directory can be moved or copied as a whole.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from ..data.records import Candidate, Pair, Region, Score
from ..pairs import prompt_key
from .draw import CHOSEN, REFERENCE, REGION, REJECTED, Layer, thumbnail_with_boxes
from .svg import histogram_svg

ASSETS = "report_files"


def css(rgb) -> str:
    r, g, b = rgb
    return f"#{r:02x}{g:02x}{b:02x}"


STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #222; max-width: 1400px; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }} h2 {{ font-size: 17px; margin: 18px 0 6px; }}
h3 {{ font-size: 14px; margin: 4px 0; font-family: monospace; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 4px 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }}
.region {{ display: flex; gap: 14px; border-top: 1px solid #bbb; padding: 10px 0; }}
.region img {{ flex: none; border: 1px solid #999; }}
.texts {{ flex: 1; min-width: 300px; }}
pre.text {{ white-space: pre-wrap; word-break: break-word; font-size: 12px; background: #f6f6f6;
  padding: 6px; margin: 2px 0 8px; border-left: 5px solid #999; }}
pre.chosen {{ border-left-color: {css(CHOSEN)}; }} pre.rejected {{ border-left-color: {css(REJECTED)}; }}
.box {{ font-weight: bold; }} pre.chosen .box {{ color: #00803a; }} pre.rejected .box {{ color: #c8102e; }}
.key {{ display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 3px 0 10px; }}
.hist {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.muted {{ color: #777; }}
.top {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
"""


@dataclass
class ReportData:
    regions: dict[str, Region]
    candidates: dict[str, Candidate] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    score_summary: dict | None = None
    pair_summary: dict | None = None
    notes: list[str] = field(default_factory=list)


def _asset_name(region_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", region_id)[:60]
    return f"{safe}-{hashlib.sha1(region_id.encode()).hexdigest()[:8]}.png"


def _boxes(groundings) -> list:
    return [g.get("box") for g in groundings or [] if isinstance(g, dict) and g.get("box") is not None]


def marked_text(text: str, groundings) -> str:
    """``text`` escaped, with each grounding's box text (its span) wrapped in ``<span class="box">``."""
    if not isinstance(text, str) or not text.strip():
        return '<span class="muted">(empty text)</span>'
    spans = sorted(
        {
            tuple(g["span"])
            for g in groundings or []
            if isinstance(g, dict)
            and isinstance(g.get("span"), (list, tuple))
            and len(g["span"]) == 2
            and all(isinstance(v, int) for v in g["span"])
            and 0 <= g["span"][0] <= g["span"][1] <= len(text)
        }
    )
    out, pos = [], 0
    for start, end in spans:
        if start < pos:
            continue
        out.append(escape(text[pos:start]))
        out.append(f'<span class="box">{escape(text[start:end])}</span>')
        pos = end
    out.append(escape(text[pos:]))
    return "".join(out)


def _table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _score_line(s: Score | None) -> str:
    if s is None:
        return '<span class="muted">no score</span>'
    return escape(
        f"total {s.total:.3f} · semantic {s.semantic:.3f} · localization {s.localization:.3f} · "
        f"P/R/F1@0.5 {s.precision:.2f}/{s.recall:.2f}/{s.f1:.2f}"
    )


def _region_section(
    region: Region, prompt_id: str | None, pair: Pair | None, scores: list[Score], by_id: dict, out_dir: Path
) -> str:
    """One region and prompt: the image with its boxes, the pair's texts and scores, every scored text."""
    chosen = by_id.get(pair.chosen_id) if pair else None
    rejected = by_id.get(pair.rejected_id) if pair else None
    layers = [
        Layer([o.get("box") for o in region.objects or [] if isinstance(o, dict)], REFERENCE, 1),
        Layer([region.region_box], REGION, 2),
        Layer(_boxes(pair.rejected_groundings) if pair else [], REJECTED, 3),
        Layer(_boxes(pair.chosen_groundings) if pair else [], CHOSEN, 3),
    ]
    try:
        with Image.open(region.image) as im:
            thumb = thumbnail_with_boxes(im, layers)
        name = _asset_name(region.id if prompt_id is None else f"{region.id}/{prompt_id}")
        thumb.save(out_dir / ASSETS / name)
        img = (
            f'<img src="{escape(ASSETS + "/" + quote(name))}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="{escape(region.id)}">'
        )
    except (OSError, ValueError) as e:
        img = f'<p class="muted">image not readable: {escape(str(region.image))} ({escape(str(e))})</p>'
    anchor = region.id if prompt_id is None else f"{region.id}/{prompt_id}"
    parts = [f'<section class="region" id="{escape(anchor)}">', img, '<div class="texts">']
    parts.append(f"<h3>{escape(anchor)}</h3>")
    if pair is not None:
        parts.append(f"<div><b>prompt</b> ({escape(pair.prompt_id)}): {escape(pair.prompt)}</div>")
        parts.append(f"<div><b>chosen</b> {escape(pair.chosen_id)}: {_score_line(chosen)}</div>")
        parts.append(f'<pre class="text chosen">{marked_text(pair.chosen, pair.chosen_groundings)}</pre>')
        parts.append(f"<div><b>rejected</b> {escape(pair.rejected_id)}: {_score_line(rejected)}</div>")
        parts.append(
            f'<pre class="text rejected">{marked_text(pair.rejected, pair.rejected_groundings)}</pre>'
        )
    else:
        parts.append('<p class="muted">no pair for this region</p>')
    rows = [
        [
            s.id,
            "yes" if s.refined else "",
            s.total,
            s.semantic,
            s.localization,
            s.f1,
            "; ".join(s.problems)[:300],
            s.text[:400],
        ]
        for s in sorted(scores, key=lambda s: -s.total)
    ]
    what = "region" if prompt_id is None else "prompt"
    parts.append(f"<details><summary>all {len(scores)} scored texts of this {what}</summary>")
    parts.append(_table(["id", "refined", "total", "semantic", "loc", "F1", "problems", "text"], rows))
    parts.append("</details></div></section>")
    return "".join(parts)


def _histograms(data: ReportData) -> str:
    orig = [s for s in data.scores if not s.refined]
    ref = [s for s in data.scores if s.refined]
    grey, blue = "#7a7a7a", "#1e6fd9"
    figs = [
        histogram_svg(
            f"{label} score",
            {
                "original": ([getattr(s, attr) for s in orig], grey),
                "refined": ([getattr(s, attr) for s in ref], blue),
            },
        )
        for label, attr in (("total", "total"), ("semantic", "semantic"), ("localization", "localization"))
    ]
    if data.pairs:
        figs.append(
            histogram_svg(
                "pair totals",
                {
                    "chosen": ([p.chosen_score for p in data.pairs], css(CHOSEN)),
                    "rejected": ([p.rejected_score for p in data.pairs], css(REJECTED)),
                },
            )
        )
    return '<div class="hist">' + "".join(figs) + "</div>"


def _statistics(data: ReportData) -> str:
    """Three small tables side by side: scores, pairs, problems."""
    orig = [s for s in data.scores if not s.refined]
    ref = [s for s in data.scores if s.refined]
    rows = [["regions", len(data.regions)], ["candidates", len(data.candidates)]]
    rows += [["scored originals", len(orig)], ["scored refined", len(ref)]]
    for kind, subset in (("original", orig), ("refined", ref)):
        if subset:
            rows.append([f"mean total ({kind})", sum(s.total for s in subset) / len(subset)])
            rows.append([f"mean F1@0.5 ({kind})", sum(s.f1 for s in subset) / len(subset)])
    blocks = ["<div><h2>Scores</h2>" + _table(["", "value"], rows) + "</div>"]

    summary = data.pair_summary or {}
    pair_rows = [
        [k, v] for k, v in summary.items() if isinstance(v, (int, float)) and not k.startswith("mean")
    ]
    if not pair_rows:
        pair_rows = [["pairs", len(data.pairs)]]
    if data.pairs:
        margins = [p.margin for p in data.pairs]
        pair_rows += [
            ["mean margin", sum(margins) / len(margins)],
            ["min margin", min(margins)],
            ["mean chosen total", sum(p.chosen_score for p in data.pairs) / len(data.pairs)],
            ["mean rejected total", sum(p.rejected_score for p in data.pairs) / len(data.pairs)],
        ]
    blocks.append("<div><h2>Pairs</h2>" + _table(["", "value"], pair_rows) + "</div>")
    problems = (data.score_summary or {}).get("problems") or {}
    if problems:
        blocks.append(
            "<div><h2>Scoring problems and refinements</h2>"
            + _table(["kind", "count"], sorted(problems.items()))
            + "</div>"
        )
    return '<div class="top">' + "".join(blocks) + "</div>"


def render_report(data: ReportData, out: str | Path, max_regions: int = 50, title: str = "SPR run") -> Path:
    """Write the page to ``out`` (and its thumbnails to ``report_files/`` beside it)."""
    out = Path(out)
    (out.parent / ASSETS).mkdir(parents=True, exist_ok=True)
    scores_by_key: dict[tuple[str, str | None], list[Score]] = defaultdict(list)
    for s in data.scores:
        key = prompt_key(s.candidate_id, data.candidates) or (s.region_id, None)
        scores_by_key[(s.region_id, key[1])].append(s)
    by_id = {s.id: s for s in data.scores}
    pairs_of: dict[str, list[Pair]] = defaultdict(list)
    for p in sorted(data.pairs, key=lambda p: p.prompt_id):
        pairs_of[p.region_id].append(p)
    scored_regions = {r for r, _ in scores_by_key}
    order = [r for r in data.regions if r in pairs_of] + [
        r for r in data.regions if r not in pairs_of and r in scored_regions
    ]
    shown = order[:max_regions]
    sections = []
    for r in shown:
        region = data.regions[r]
        if pairs_of.get(r):
            for p in pairs_of[r]:
                scores = scores_by_key.get((r, p.prompt_id), [])
                sections.append(_region_section(region, p.prompt_id, p, scores, by_id, out.parent))
        else:
            scores = [s for (rid, _), ss in scores_by_key.items() if rid == r for s in ss]
            sections.append(_region_section(region, None, None, scores, by_id, out.parent))
    legend = "".join(
        f'<span class="key" style="background:{css(c)}"></span>{escape(name)}'
        for name, c in (
            ("region", REGION),
            ("annotated objects", REFERENCE),
            ("chosen", CHOSEN),
            ("rejected", REJECTED),
        )
    )
    notes = "".join(f'<p class="muted">{escape(n)}</p>' for n in data.notes)
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
{notes}
{_statistics(data)}
<h2>Score distributions</h2>
{_histograms(data)}
<h2>Regions ({len(shown)} of {len(order)} shown, one block per prompt with a pair)</h2>
<div>{legend}</div>
{"".join(sections)}
</body></html>
"""
    out.write_text(html, encoding="utf-8")
    return out
