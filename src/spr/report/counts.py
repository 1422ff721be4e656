"""The counts section: every stage's counters (from its summary), each with what it counts, and the
problems found in the texts."""

from __future__ import annotations

from collections import Counter
from html import escape

from ..data.summary import declared
from ..refine import count_kinds
from .cells import explained, fmt
from .data import ReportData
from .text import box_entries

UNDECLARED = "(not declared: a summary written by an older version)"


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
    for k, v in summary.items():  # the settings the scores were made with, as the summary declares them
        count = declared(summary, k)
        if count is not None and count.per == "setting":
            rows.append((f"setting: {k}", str(v), count.meaning))
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
    """The pairs summary's counters as it declares them (the measured values again, from the pairs)."""
    summary = data.pair_summary
    rows: list[tuple[str, object, str]] = []
    if summary is None:
        rows.append(("pairs", len(data.pairs), "no pairs.summary.json: settings unknown"))
    else:
        skipped = []
        for k, v in summary.items():
            count = declared(summary, k)
            if k == "declared" or (count is not None and count.per == "value"):
                continue
            if count is None:
                rows.append((k, v, UNDECLARED))
            elif count.per == "group" and k != "groups":  # a reason a group gave no pair
                skipped.append((f"  skipped: {k}", v, count.meaning))
            else:
                rows.append((f"setting: {k}" if count.per == "setting" else k, v, count.meaning))
        rows.append(("groups skipped", sum(v for _, v, _ in skipped), "groups that gave no pair, by reason below "
                     "(reasons with 0 left out)"))  # fmt: skip
        rows += [row for row in skipped if row[1]]
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
        count_kinds([str(p) for p in s.problems or []], per_text[bool(s.refined)])
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
        declaration = declared(data.score_summary, kind)
        if declaration is not None and declaration.per == "text":
            o, r = per_text[False][kind], per_text[True][kind]
        else:
            o = r = "-"
        what = declaration.meaning if declaration else UNDECLARED
        rows.append(
            f'<tr><td>{escape(kind)}</td><td class="num">{escape(fmt(count))}</td>'
            f'<td class="num">{escape(fmt(o))}</td><td class="num">{escape(fmt(r))}</td>'
            f'<td class="what">{escape(what)}</td></tr>'
        )
    return (
        "<div><h2>Scoring problems and refinements (spr score)</h2>"
        f'<table class="problems"><tr>{head}</tr>{"".join(rows)}</table>'
        '<p class="muted small">The per-text columns are counted here from scores.jsonl; a text counts once per '
        "kind.</p></div>"
    )


def statistics_section(data: ReportData) -> str:
    blocks = []
    cand_rows = _candidate_rows(data)
    if cand_rows:
        blocks.append(explained("Candidates (spr generate)", cand_rows))
    blocks.append(explained("Scores (spr score)", _score_rows(data)))
    blocks.append(explained("Pairs (spr pairs)", _pair_rows(data)))
    blocks.append(_problem_table(data))
    return '<div class="top">' + "".join(blocks) + "</div>"
