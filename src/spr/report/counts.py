"""The counts section: every stage's counters (from its summary), each with what it counts, and the
problems found in the texts."""

from __future__ import annotations

from collections import Counter
from html import escape

from ..refine import problem_kind
from .cells import explained, fmt
from .data import ReportData
from .text import box_entries

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
    "refined: boxes set to the samples' median": "boxes, not texts: box strings that matched no reference and "
    "took the median of the prompt's sampled boxes for that object (--unmatched median)",
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
