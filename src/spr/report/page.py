"""The static HTML report of a run.

Top to bottom: the results (base vs each SPR round at each IoU threshold, from ``results.json``), the counts of
every stage with what each counts, histograms of the scores, then one block per region and prompt: the chosen
and the rejected answer side by side, each on its own copy of the image with its boxes, its text with each
grounded phrase as a chip in its box's colour (coordinates on hover, raw text one click away), and all scored
texts of that prompt, never cut.

Everything a model or a data file wrote is HTML-escaped (``html.escape``), and the page forbids scripts with a
Content-Security-Policy, so a description cannot inject markup or script. Images are PNG files in
``report_files/`` beside the page, linked by relative paths: the run directory can be moved or copied as a whole.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from html import escape
from pathlib import Path
from urllib.parse import quote

from ..data.images import ImageProblem, load_image
from ..data.records import Pair, Region, Score
from ..pairs import prompt_key
from .cells import css
from .counts import statistics_section
from .data import ReportData
from .draw import (
    CHOSEN,
    DISPLAY_SIDE,
    REFERENCE,
    REGION,
    REJECTED,
    Layer,
    box_colour,
    draw_boxes,
    full_side,
)
from .results import results_section
from .svg import histogram_svg
from .text import box_entries, marked_text, readable_text

log = logging.getLogger(__name__)


def assets_dir(page: Path) -> Path:
    """Where a page's images go: ``<page stem>_files/`` beside it (``report.html``: ``report_files/``), so two
    reports in one directory never remove each other's images."""
    return page.with_name(page.stem + "_files")


STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #222; max-width: 1400px; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }} h2 {{ font-size: 17px; margin: 18px 0 6px; }}
h3 {{ font-size: 14px; margin: 4px 0; font-family: monospace; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 4px 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
td.what {{ color: #555; max-width: 300px; }}
.results {{ display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }}
.delta {{ font-size: 11px; margin-left: 4px; }} .up {{ color: #00803a; }} .down {{ color: #c8102e; }}
.region {{ border-top: 2px solid #bbb; padding: 10px 0 14px; }}
.sides {{ display: flex; flex-wrap: wrap; gap: 18px; margin: 6px 0; }}
.side {{ flex: 1 1 440px; min-width: 420px; border-top: 5px solid #999; padding-top: 4px; }}
.side.chosen {{ border-top-color: {css(CHOSEN)}; }} .side.rejected {{ border-top-color: {css(REJECTED)}; }}
.side-head {{ font-size: 13px; margin-bottom: 4px; }}
.side img {{ display: block; max-width: none; border: 1px solid #999; }}
.desc {{ font-size: 14px; line-height: 1.9; white-space: pre-wrap; word-break: break-word; margin: 6px 0; }}
.chip {{ border-radius: 4px; padding: 1px 5px; font-weight: 600; white-space: nowrap; }}
.chip .num {{ font-size: 10px; font-weight: 700; margin-right: 4px; }}
pre.text {{ white-space: pre-wrap; word-break: break-word; font-size: 12px; background: #f6f6f6;
  padding: 6px; margin: 2px 0 8px; }}
.box {{ font-weight: bold; white-space: nowrap; border-bottom: 3px solid #999; }}
td.text {{ white-space: pre-wrap; word-break: break-word; font-family: monospace; font-size: 11px;
  min-width: 360px; max-width: 760px; }}
tr.chosen td:first-child {{ border-left: 5px solid {css(CHOSEN)}; }}
tr.rejected td:first-child {{ border-left: 5px solid {css(REJECTED)}; }}
.key {{ display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 3px 0 10px; }}
.hist {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.muted {{ color: #777; }} .small {{ font-size: 12px; }}
.top {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
"""


_OUR_ASSET = re.compile(r"^[A-Za-z0-9_.-]{0,60}-[0-9a-f]{8}\.png$")


def _asset_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.png"


# ------------------------------------------------------------------------------------------------ tables


def _score_line(s: Score | None) -> str:
    if s is None:
        return '<span class="muted">no score</span>'
    return (
        f'<span title="total = lambda * semantic + (1 - lambda) * localization">total <b>{s.total:.3f}</b></span>'
        f" · semantic {s.semantic:.3f} · localization {s.localization:.3f} · "
        f'<span title="precision / recall / F1 of the boxes against the annotated objects, IoU &gt;= 0.5, '
        f'one-to-one">P/R/F1@0.5 {s.precision:.2f}/{s.recall:.2f}/{s.f1:.2f}</span>'
    )


# ----------------------------------------------------------------------------------------------- images


def _image_pair(
    region: Region, sides: list[tuple[str, list[Layer]]], assets: Path, key: str, written: set[str]
) -> dict[str, str]:
    """For each (side name, layers): the HTML of the image at DISPLAY_SIDE px on its longer side, linked to a
    larger copy (click to enlarge); both PNGs written to ``assets``."""
    try:
        original = load_image(region.image)  # the one loader: size limit before any pixel is decoded
    except ImageProblem as e:
        log.warning("region %s: %s", region.id, e)
        msg = f'<p class="muted">image not shown: {escape(str(e))}</p>'
        return {name: msg for name, _ in sides}
    out = {}
    w, h = original.size
    for name, layers in sides:
        shown = draw_boxes(original, layers, DISPLAY_SIDE)
        big = draw_boxes(original, layers, full_side(original.size))
        small_name, big_name = _asset_name(f"{key}/{name}"), _asset_name(f"{key}/{name}/full")
        shown.save(assets / small_name)
        big.save(assets / big_name)
        written.update((small_name, big_name))
        src, href = escape(quote(f"{assets.name}/{small_name}")), escape(quote(f"{assets.name}/{big_name}"))
        out[name] = (
            f'<a href="{href}" title="open the image at {big.width}x{big.height} px">'
            f'<img class="view" src="{src}" width="{shown.width}" height="{shown.height}" '
            f'alt="{escape(region.id)}: {escape(name)}"></a>'
            f'<div class="muted small">{w}x{h} px image, shown at {shown.width}x{shown.height}; '
            f"click to enlarge ({big.width}x{big.height})</div>"
        )
    return out


def _layers(region: Region, groundings=None) -> list[Layer]:
    """The region box, the text's boxes (each in its colour, numbered), and the annotated objects on top, thin:
    a box that matches a reference exactly shows the reference's cyan line on its outer edge."""
    layers = [Layer([region.region_box], REGION, 2)]
    if groundings is not None:
        entries = box_entries(groundings)
        layers.append(
            Layer(
                [box for _, _, box in entries],
                width=3,
                colours=[box_colour(k) for k, _, _ in entries],
                labels=[str(k + 1) for k, _, _ in entries],
            )
        )
    layers.append(Layer([o.get("box") for o in region.objects or [] if isinstance(o, dict)], REFERENCE, 1))
    return layers


# ---------------------------------------------------------------------------------------------- sections


def _side(kind: str, text_id: str, text: str, groundings, score: Score | None, image_html: str) -> str:
    n = len(box_entries(groundings))
    return (
        f'<div class="side {kind}"><div class="side-head"><b>{kind}</b> <code>{escape(text_id)}</code> '
        f"({n} box{'es' if n != 1 else ''})<br>{_score_line(score)}</div>"
        f"{image_html}"
        f'<div class="desc">{readable_text(text, groundings)}</div>'
        f"<details><summary>raw model text</summary>"
        f'<pre class="text">{marked_text(text, groundings)}</pre></details></div>'
    )


def _scores_table(scores: list[Score], pair: Pair | None) -> str:
    role = {pair.chosen_id: "chosen", pair.rejected_id: "rejected"} if pair else {}
    head = "".join(
        f"<th>{h}</th>"
        for h in ("id", "refined", "total", "semantic", "loc", "F1@0.5", "problems", "text (whole)")
    )
    rows = []
    for s in sorted(scores, key=lambda s: (-s.total, s.id)):
        r = role.get(s.id, "")
        tag = f" <b>({r})</b>" if r else ""
        nums = "".join(f'<td class="num">{v:.3f}</td>' for v in (s.total, s.semantic, s.localization, s.f1))
        rows.append(
            f'<tr class="{r}"><td>{escape(s.id)}{tag}</td><td>{"yes" if s.refined else ""}</td>{nums}'
            f"<td>{escape('; '.join(map(str, s.problems)))}</td>"
            f'<td class="text">{marked_text(s.text, s.groundings)}</td></tr>'
        )
    return f'<table class="scores"><tr>{head}</tr>{"".join(rows)}</table>'


def _region_section(
    region: Region,
    prompt_id: str | None,
    pair: Pair | None,
    scores: list[Score],
    by_id: dict,
    assets: Path,
    written: set[str],
) -> str:
    """One region and prompt: chosen and rejected side by side, each on its own image; every scored text."""
    anchor = region.id if prompt_id is None else f"{region.id}/{prompt_id}"
    parts = [f'<section class="region" id="{escape(anchor)}">', f"<h3>{escape(anchor)}</h3>"]
    if pair is not None:
        images = _image_pair(
            region,
            [
                ("chosen", _layers(region, pair.chosen_groundings)),
                ("rejected", _layers(region, pair.rejected_groundings)),
            ],
            assets,
            anchor,
            written,
        )
        parts.append(
            f"<div><b>prompt</b> ({escape(pair.prompt_id)}): {escape(pair.prompt)} "
            f'<span class="muted">· margin (chosen total - rejected total) {pair.margin:.3f}</span></div>'
        )
        parts.append('<div class="sides">')
        parts.append(
            _side(
                "chosen",
                pair.chosen_id,
                pair.chosen,
                pair.chosen_groundings,
                by_id.get(pair.chosen_id),
                images["chosen"],
            )
        )
        parts.append(
            _side(
                "rejected",
                pair.rejected_id,
                pair.rejected,
                pair.rejected_groundings,
                by_id.get(pair.rejected_id),
                images["rejected"],
            )
        )
        parts.append("</div>")
    else:
        images = _image_pair(region, [("references", _layers(region))], assets, anchor, written)
        parts.append(images["references"])
        parts.append('<p class="muted">no pair for this region</p>')
    what = "region" if prompt_id is None else "prompt"
    parts.append(f"<details><summary>all {len(scores)} scored texts of this {what}</summary>")
    parts.append(_scores_table(scores, pair))
    parts.append("</details></section>")
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


def render_report(data: ReportData, out: str | Path, max_regions: int = 50, title: str = "SPR run") -> Path:
    """Write the page to ``out`` (and its images to :func:`assets_dir` beside it)."""
    out = Path(out)
    assets = assets_dir(out)
    assets.mkdir(parents=True, exist_ok=True)
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
    sections: list[str] = []
    written: set[str] = set()
    for r in shown:
        region = data.regions[r]
        if pairs_of.get(r):
            for p in pairs_of[r]:
                scores = scores_by_key.get((r, p.prompt_id), [])
                sections.append(_region_section(region, p.prompt_id, p, scores, by_id, assets, written))
        else:
            scores = [s for (rid, _), ss in scores_by_key.items() if rid == r for s in ss]
            sections.append(_region_section(region, None, None, scores, by_id, assets, written))
    legend = "".join(
        f'<span class="key" style="background:{css(c)}"></span>{escape(name)}'
        for name, c in (("region box", REGION), ("annotated objects (references)", REFERENCE))
    )
    palette = "".join(
        f'<span class="key" style="background:{css(box_colour(k))};margin:0 1px"></span>' for k in range(6)
    )
    legend += (
        f'<span style="margin-left:10px"></span>{palette} each box of a text in its own colour, numbered; its phrase '
        "in the text wears the same colour and number (hover it for the coordinates). Green rule: chosen, red: "
        "rejected."
    )
    notes = "".join(f'<p class="muted">{escape(n)}</p>' for n in data.notes)
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
{notes}
{results_section(data)}
{statistics_section(data)}
<h2>Score distributions</h2>
{_histograms(data)}
<h2>Regions ({len(shown)} of {len(order)} shown, one block per prompt with a pair)</h2>
<div class="small">{legend}</div>
{"".join(sections)}
</body></html>
"""
    out.write_text(html, encoding="utf-8")
    for f in assets.iterdir():  # images of an earlier report that this one no longer shows
        if f.name not in written and _OUR_ASSET.match(f.name):
            f.unlink(missing_ok=True)
    return out
