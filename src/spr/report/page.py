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
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

from ..data.images import ImageProblem, load_image
from ..data.records import Candidate, Pair, Region, Score
from ..pairs import prompt_key
from ..refine import problem_kind
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
    ink,
    valid_box,
)
from .svg import histogram_svg, line_chart_svg

log = logging.getLogger(__name__)


def assets_dir(page: Path) -> Path:
    """Where a page's images go: ``<page stem>_files/`` beside it (``report.html``: ``report_files/``), so two
    reports in one directory never remove each other's images."""
    return page.with_name(page.stem + "_files")


MODEL_COLOURS = ["#7a7a7a", "#1e6fd9", "#e6550d", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#17becf"]


def css(rgb) -> str:
    r, g, b = rgb
    return f"#{r:02x}{g:02x}{b:02x}"


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


@dataclass
class ReportData:
    regions: dict[str, Region]
    candidates: dict[str, Candidate] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    score_summary: dict | None = None
    pair_summary: dict | None = None
    notes: list[str] = field(default_factory=list)
    results: dict | None = None  # results.json: {"eval": {...}, "models": {name: {metric: value}}}
    results_note: str = ""  # why there are no results, when there are none


_OUR_ASSET = re.compile(r"^[A-Za-z0-9_.-]{0,60}-[0-9a-f]{8}\.png$")


def _asset_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.png"


# ------------------------------------------------------------------------------------------------ texts

# Markup the box codecs wrap phrases and boxes in: removed from the readable text (the raw text keeps it).
_MARKUP = re.compile(
    r"<\|[A-Za-z_]{1,40}\|>"
    r"|</?(?:ref|box|quad|p|phrase|object|grounding|delim|answer|s)>"
    r"|<(?:patch_index_\d{1,6}|loc_?\d{1,6}|seg\d{1,9})>"
)


def _valid_span(span, n: int) -> bool:
    return (
        isinstance(span, (list, tuple))
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        and 0 <= span[0] <= span[1] <= n
    )


def box_entries(groundings) -> list[tuple[int, dict, tuple]]:
    """(colour index, grounding, box) for each grounding with a drawable box, in the groundings' order: the
    k-th box of a text wears ``box_colour(k)`` on the image and in the text."""
    out = []
    for g in groundings or []:
        box = valid_box(g.get("box")) if isinstance(g, dict) else None
        if box is not None:
            out.append((len(out), g, box))
    return out


def _coords(box) -> str:
    return "[" + ", ".join(f"{v:.1f}".rstrip("0").rstrip(".") for v in box) + "]"


def _box_title(k: int, g: dict, box, written: str | None) -> str:
    phrase = g.get("phrase") if isinstance(g.get("phrase"), str) else None
    out = f"box {k + 1}" + (f" ({phrase})" if phrase else "") + f": {_coords(box)} px in the image"
    written = " ".join(_MARKUP.sub(" ", written).split()) if written else None
    if written:
        out += f"; written as {written}"
    return out


def _spans(text: str, entries) -> list[tuple[int, int, int, dict, tuple]]:
    """(start, end, colour index, grounding, box) of the entries whose span is valid, in text order, without
    overlaps."""
    placed = sorted(
        (g["span"][0], g["span"][1], k, g, box)
        for k, g, box in entries
        if _valid_span(g.get("span"), len(text))
    )
    out, pos = [], 0
    for item in placed:
        if item[0] >= pos:
            out.append(item)
            pos = item[1]
    return out


def marked_text(text: str, groundings, coloured: bool = True) -> str:
    """``text`` escaped, whole, with each box's own text (its span) wrapped in ``<span class="box">``: underlined
    in its box's colour, its pixel coordinates in the tooltip (``coloured``). Never truncated."""
    if not isinstance(text, str) or not text.strip():
        return '<span class="muted">(empty text)</span>'
    entries = box_entries(groundings)
    placed = _spans(text, entries)
    # spans of groundings whose box is unusable are still marked, uncoloured
    good = {(s, e) for s, e, *_ in placed}
    for g in groundings or []:
        if isinstance(g, dict) and _valid_span(g.get("span"), len(text)) and valid_box(g.get("box")) is None:
            s, e = g["span"]
            if (s, e) not in good and all(e <= a or s >= b for a, b in good):
                placed.append((s, e, -1, g, None))
                good.add((s, e))
    out, pos = [], 0
    for start, end, k, g, box in sorted(placed, key=lambda t: t[:2]):
        if start < pos:
            continue
        out.append(escape(text[pos:start]))
        piece = escape(text[start:end])
        if coloured and k >= 0:
            title = escape(_box_title(k, g, box, None))
            out.append(
                f'<span class="box" style="border-bottom-color:{css(box_colour(k))}" title="{title}">{piece}</span>'
            )
        elif coloured:
            out.append(f'<span class="box" title="unusable box">{piece}</span>')
        else:
            out.append(f'<span class="box">{piece}</span>')
        pos = end
    out.append(escape(text[pos:]))
    return "".join(out)


def _plain(s: str) -> str:
    return escape(_MARKUP.sub("", s))


def _chip(k: int, g: dict, box, written: str | None, label: str | None) -> str:
    rgb = box_colour(k)
    title = escape(_box_title(k, g, box, written))
    body = f'<span class="num">{k + 1}</span>' + (escape(label) if label else "")
    return f'<span class="chip" style="background:{css(rgb)};color:{css(ink(rgb))}" title="{title}">{body}</span>'


def _json_list(text: str) -> bool:
    body = re.sub(r"```(?:json)?", "", text).strip()
    if not body.startswith(("[", "{")):
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, (list, dict))


_OPENERS = re.compile(r"(?:" + _MARKUP.pattern + r"|[\[({])*$")
_CLOSERS = {"[": "]", "(": ")", "{": "}"}


def _eat_closers(text: str, pos: int, opened: str, limit: int) -> int:
    """Past the markup and the closing brackets of ``opened`` (innermost first) that follow ``pos``."""
    want = [_CLOSERS[c] for c in reversed(opened)]
    while pos < limit:
        m = _MARKUP.match(text, pos)
        if m:
            pos = m.end()
        elif want and text[pos] == want[0]:
            want.pop(0)
            pos += 1
        else:
            break
    return pos


def readable_text(text: str, groundings) -> str:
    """The text as a reader would want it: codec markup and the brackets around box strings removed, each
    grounded phrase a chip in its box's colour (numbered like the box on the image; coordinates and the box as
    written on hover). A box right after another of the same phrase is a chip with its number only. Boxes
    without a place in the text are listed after it."""
    if not isinstance(text, str) or not text.strip():
        return '<span class="muted">(empty text)</span>'
    entries = box_entries(groundings)
    out: list[str] = []
    if _json_list(text):  # a JSON list of objects (qwen2_5_vl): its labels as chips
        loose = entries
    else:
        placed = _spans(text, entries)
        placed_ids = {id(g) for _, _, _, g, _ in placed}
        loose = [e for e in entries if id(e[1]) not in placed_ids]
        starts = [p[0] for p in placed[1:]] + [len(text)]
        pos, last_phrase = 0, None
        for (start, end, k, g, box), limit in zip(placed, starts):
            seg = text[pos:start]
            tail = _OPENERS.search(seg)  # brackets some formats keep outside the box string: "[[" ... "]]"
            opened = re.sub(r"[^\[({]", "", _MARKUP.sub("", tail.group(0)))
            seg = seg[: tail.start()]
            phrase = g.get("phrase") if isinstance(g.get("phrase"), str) and g.get("phrase").strip() else None
            label = phrase
            i = seg.rfind(phrase) if phrase else -1
            if i >= 0 and not _MARKUP.sub("", seg[i + len(phrase) :]).strip():
                out.append(_plain(seg[:i]))  # the phrase itself becomes the chip
                after = _eat_closers(text, end, opened, limit)
            else:
                out.append(_plain(seg))
                after = _eat_closers(text, end, opened, limit)
                m = re.compile(r"\s*" + re.escape(phrase)).match(text, after) if phrase else None
                if m and m.end() <= limit:  # the phrase after its box (paligemma)
                    after = m.end()
                elif not _MARKUP.sub("", seg).strip() and phrase == last_phrase:
                    label = None  # a second box of the phrase just before
            out.append(_chip(k, g, box, text[start:end], label))
            pos, last_phrase = after, phrase
        out.append(_plain(text[pos:]))
    if loose:
        chips = " ".join(_chip(k, g, box, None, g.get("phrase") if isinstance(g.get("phrase"), str) else None)
                         for k, g, box in loose)  # fmt: skip
        prefix = "" if not out else "\n"
        out.append(f'{prefix}<span class="muted">boxes: </span>{chips}')
    return "".join(out)


# ------------------------------------------------------------------------------------------------ tables


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _explained(
    title: str, rows: list[tuple[str, object, str]], headers=("", "value", "what it counts")
) -> str:
    """A table of (name, value, explanation) rows, all escaped."""
    body = "".join(
        f'<tr><td>{escape(n)}</td><td class="num">{escape(_fmt(v))}</td><td class="what">{escape(w)}</td></tr>'
        for n, v, w in rows
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<div><h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table></div>"


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


# ----------------------------------------------------------------------------------------------- results

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


def _results_section(data: ReportData) -> str:
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
        "objects at IoU &gt;= t, micro-averaged over regions. "
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


# -------------------------------------------------------------------------------------------- statistics

PROBLEM_MEANING = {
    "codec problem": (
        "scored texts (originals and refined texts) with at least one piece the box codec could not read, once "
        "per text however many pieces it has; a refined text is parsed again and keeps the original's unreadable "
        "piece, so one candidate can count twice. Not the same count as generate's candidates with parse problems"
    ),
    "empty text": "scored texts that are empty (semantic score 0)",
    "no box": "scored texts without a usable box (localization score 0)",
    "malformed grounding": "scored texts with a stored grounding that is not a box (skipped)",
    "non-finite box": "scored texts with a box holding NaN or infinity (dropped)",
    "degenerate box": "scored texts with a box of zero or negative width or height (dropped)",
    "box outside the image": "scored texts with a box reaching outside the image (clipped to it)",
    "not refined": "refined texts in which some box could not be replaced (kept as written)",
    "refined: boxes replaced": "boxes, not texts: box strings that refinement replaced with the matched reference",
    "refined: boxes dropped": "boxes, not texts: box strings that refinement removed (--unmatched drop)",
    "reference box unusable": "annotated object boxes, not texts, that could not serve as references",
    "malformed region record": "lines of regions.jsonl skipped as unreadable",
    "malformed candidate record": "lines of candidates.jsonl skipped as unreadable",
    "candidate of unknown region": "candidates whose region is not in regions.jsonl (not scored)",
    "image unreadable (region skipped)": "regions, not texts, whose image could not be read (not scored)",
}
# kinds that count something other than scored texts: no per-text breakdown
NOT_PER_TEXT = (
    "refined:",
    "reference box",
    "malformed ",
    "candidate of unknown",
    "image unreadable",
    "region skipped",
)

PAIR_KEYS = {
    "min_margin": (
        "setting: --min-margin",
        "a pair needs chosen total - rejected total above 0 and at least this",
    ),
    "min_margin (setting)": (
        "setting: --min-margin",
        "a pair needs chosen total - rejected total above 0 and at least this",
    ),
    "pairing": ("setting: --pairing", "which two answers of a prompt are paired"),
    "groups": ("(region, prompt) groups", "groups of scored answers to one prompt of one region"),
    "pairs": ("pairs written", "at most one per group"),
}
MEASURED = ("mean margin", "smallest margin kept", "min margin", "mean chosen total", "mean rejected total")


def _candidate_rows(data: ReportData) -> list[tuple[str, object, str]]:
    cands = list(data.candidates.values())
    if not cands:
        return []
    with_problems = sum(1 for c in cands if c.problems)
    pieces = sum(len(c.problems or []) for c in cands)
    no_box = sum(1 for c in cands if not box_entries(c.groundings))
    n = len(cands)
    return [
        ("candidates", n, "sampled descriptions in candidates.jsonl"),
        (
            "candidates with parse problems",
            f"{with_problems} ({with_problems / n:.1%})",
            "candidates with at least one piece of text the codec could not read: the count `spr generate` prints",
        ),
        ("parse problems", pieces, "pieces of text the codec could not read, all candidates together (one "
         "candidate can have several)"),
        ("candidates without any box", f"{no_box} ({no_box / n:.1%})", "no box could be read from the text"),
    ]  # fmt: skip


def _score_rows(data: ReportData) -> list[tuple[str, object, str]]:
    orig = [s for s in data.scores if not s.refined]
    ref = [s for s in data.scores if s.refined]
    summary = data.score_summary or {}
    rows: list[tuple[str, object, str]] = [("regions", len(data.regions), "regions in regions.jsonl")]
    if "semantic" in summary:
        rows.append(
            ("setting: semantic scorer", str(summary["semantic"]), "how the semantic score was computed")
        )
    if "lambda" in summary:
        rows.append(
            ("setting: lambda", summary["lambda"], "total = lambda * semantic + (1 - lambda) * localization")
        )
    rows += [
        ("scored original texts", len(orig), "one Score per candidate, as the model wrote it"),
        (
            "scored refined texts",
            len(ref),
            "one Score per candidate with its boxes snapped to the references",
        ),
    ]
    for kind, subset in (("original", orig), ("refined", ref)):
        if subset:
            rows.append(
                (f"mean total ({kind})", sum(s.total for s in subset) / len(subset), f"over the {kind} texts")
            )
            rows.append(
                (
                    f"mean F1@0.5 ({kind})",
                    sum(s.f1 for s in subset) / len(subset),
                    "boxes vs annotated objects",
                )
            )
    return rows


def _pair_rows(data: ReportData) -> list[tuple[str, object, str]]:
    summary = data.pair_summary
    rows: list[tuple[str, object, str]] = []
    skipped: dict[str, int] = {}
    if summary is None:
        rows.append(("pairs", len(data.pairs), "no pairs.summary.json: settings unknown"))
    else:
        for k, v in summary.items():
            if k in MEASURED or k.startswith("mean"):
                continue  # measured again below, from the pairs themselves
            if not isinstance(v, (int, float, str)) or isinstance(v, bool):
                continue
            if k in PAIR_KEYS:
                rows.append((PAIR_KEYS[k][0], v, PAIR_KEYS[k][1]))
            elif isinstance(v, int):
                skipped[k] = v
            else:
                rows.append((k, v, "from pairs.summary.json"))
        rows.append(
            ("groups skipped", sum(skipped.values()), "groups that gave no pair; by reason below (reasons with 0 "
             "left out)")
        )  # fmt: skip
        rows += [(f"  skipped: {k}", v, "") for k, v in skipped.items() if v]
    if data.pairs:
        margins = [p.margin for p in data.pairs]
        n = len(data.pairs)
        rows += [
            ("measured: mean margin", sum(margins) / n, "chosen total - rejected total, over the pairs"),
            ("measured: smallest margin", min(margins), "the smallest margin among the pairs (the setting above "
             "is only the lower bound a pair must pass)"),
            ("measured: mean chosen total", sum(p.chosen_score for p in data.pairs) / n, ""),
            ("measured: mean rejected total", sum(p.rejected_score for p in data.pairs) / n, ""),
        ]  # fmt: skip
    return rows


def _problem_table(data: ReportData) -> str:
    problems = (data.score_summary or {}).get("problems") or {}
    if not problems:
        return ""
    per_text: dict[bool, Counter] = {False: Counter(), True: Counter()}
    for s in data.scores:
        for kind in {problem_kind(str(p)) for p in s.problems or []}:
            per_text[bool(s.refined)][kind] += 1
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "kind",
            "count (scores.summary.json)",
            "in original texts",
            "in refined texts",
            "what it counts",
        )
    )
    rows = []
    for kind, count in sorted(problems.items()):
        if kind.startswith(NOT_PER_TEXT):
            o = r = "-"
        else:
            o, r = per_text[False][kind], per_text[True][kind]
        what = PROBLEM_MEANING.get(kind) or (
            "regions, not texts, that were skipped"
            if kind.startswith("region skipped")
            else "scored texts with it"
        )
        rows.append(
            f'<tr><td>{escape(kind)}</td><td class="num">{escape(_fmt(count))}</td>'
            f'<td class="num">{escape(_fmt(o))}</td><td class="num">{escape(_fmt(r))}</td>'
            f'<td class="what">{escape(what)}</td></tr>'
        )
    return (
        "<div><h2>Scoring problems and refinements (spr score)</h2>"
        f'<table class="problems"><tr>{head}</tr>{"".join(rows)}</table>'
        '<p class="muted small">The per-text columns are counted here from scores.jsonl; a text counts once per '
        "kind.</p></div>"
    )


def _statistics(data: ReportData) -> str:
    blocks = []
    cand_rows = _candidate_rows(data)
    if cand_rows:
        blocks.append(_explained("Candidates (spr generate)", cand_rows))
    blocks.append(_explained("Scores (spr score)", _score_rows(data)))
    blocks.append(_explained("Pairs (spr pairs)", _pair_rows(data)))
    blocks.append(_problem_table(data))
    return '<div class="top">' + "".join(blocks) + "</div>"


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
{_results_section(data)}
{_statistics(data)}
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
