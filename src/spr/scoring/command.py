"""`spr score`: semantic and localization scores of every candidate, and of its refined version."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

from ..config import output_settings
from ..data.guard import StageOutput, fingerprint
from ..data.images import ImageProblem
from ..data.jsonl import JsonlWriter, iter_records, read_records, reorder
from ..data.records import Candidate, Region
from ..data.summary import Count, Counters
from ..errors import UserError
from ..options import resolve_device
from ..refine import PROBLEM_KINDS
from .combine import REFINED_COUNTS, REFINED_SUFFIX, RegionScorer, ScoreConfig
from .references import COUNTS as REFERENCE_COUNTS
from .semantic import make_semantic_scorer

HELP = "Score candidates (semantic + localization), refine their boxes and score the refined texts."
log = logging.getLogger(__name__)

# What scores.summary.json counts: this module's counters and those of the modules that count per text or box.
COUNTS = Counters({
    "semantic": Count("the semantic scorer used", "setting"),
    "lambda": Count("total = lambda * semantic + (1 - lambda) * localization", "setting"),
    "regions": Count("regions with candidates to score", "region"),
    "candidates": Count("candidates of those regions", "candidate"),
    "written": Count("score records this run wrote", "record"),
    "already_there": Count("score records an earlier run had written (a resume)", "record"),
    "malformed region record": Count("lines of regions.jsonl skipped as unreadable", "line"),
    "malformed candidate record": Count("lines of candidates.jsonl skipped as unreadable", "line"),
    "candidate of unknown region": Count("candidates whose region is not in regions.jsonl (not scored)", "candidate"),
    "region skipped:": Count("regions whose image could not be used, by reason (not scored)", "region"),
    **PROBLEM_KINDS, **REFINED_COUNTS, **REFERENCE_COUNTS,
})  # fmt: skip


def read_regions(regions_path, problems: Counter) -> dict[str, Region]:
    bad: list[str] = []
    try:
        regions = read_records(regions_path, Region, skip_bad=True, problems=bad)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    for msg in bad[:5]:
        log.warning("skipped: %s", msg)
    if bad:
        problems["malformed region record"] += len(bad)
    return {r.id: r for r in regions}


def candidates_of(candidates_path, problems: Counter | None = None, bad: list[str] | None = None):
    """The candidate records of ``candidates_path``, one at a time (malformed ones counted once, when
    ``problems`` is given, and skipped)."""
    messages: list[str] = [] if bad is None else bad
    try:
        yield from iter_records(candidates_path, Candidate, skip_bad=True, problems=messages)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if problems is not None:
        for msg in messages[:5]:
            log.warning("skipped: %s", msg)
        if messages:
            problems["malformed candidate record"] += len(messages)


def region_groups(candidates_path, wanted: dict[str, int]):
    """``(region_id, its candidates)`` for each region of ``wanted`` (region id -> its number of candidates),
    read one record at a time and handed on as soon as a region's last candidate is read: memory holds the
    regions begun and not finished (one, for a file written region by region as `spr generate` writes it)."""
    begun: dict[str, list[Candidate]] = {}
    for c in candidates_of(candidates_path):
        if c.region_id in wanted:
            group = begun.setdefault(c.region_id, [])
            group.append(c)
            if len(group) == wanted[c.region_id]:
                yield c.region_id, begun.pop(c.region_id)


Config = ScoreConfig


def settings(config: ScoreConfig) -> dict:
    """What decides the scores: the scoring options, with model directories by fingerprint."""
    out = output_settings(config)
    for k in ("regions", "candidates", "out"):
        out.pop(k)
    out["semantic"] = config.semantic_name()
    for k in ("clip_model", "label_model", "detector"):
        if out[k]:
            out[k] = fingerprint(out[k])
    return out


def run(config: ScoreConfig) -> int:
    from tqdm import tqdm

    from ..table import markdown_table

    problems: Counter = Counter()
    regions = read_regions(config.regions, problems)
    # first pass: each region's candidate ids only (a resume needs no more to see what is left)
    ids: dict[str, list[str]] = defaultdict(list)
    n_candidates = 0
    for c in candidates_of(config.candidates, problems):
        n_candidates += 1
        if c.region_id in regions:
            ids[c.region_id].append(c.id)
        else:
            problems["candidate of unknown region"] += 1
    if not ids:
        raise UserError(
            f"nothing to score: no candidate of {config.candidates} belongs to a region of {config.regions} "
            f"({n_candidates} candidate records, {len(regions)} regions); expected Candidate records written "
            "by `spr generate` for these regions"
        )
    name = config.semantic_name()
    region_scorer = None

    def make_region_scorer() -> RegionScorer:
        scorer = make_semantic_scorer(
            name, clip_model=config.clip_model, label_model=config.label_model, label_mode=config.label_mode,
            device=resolve_device(config.device),
        )  # fmt: skip
        detector = None
        if config.detector:
            from .detector import DetectorConfig, OpenVocabDetector

            detector = OpenVocabDetector(
                DetectorConfig(
                    config.detector, config.detector_threshold, device=resolve_device(config.device)
                )
            )
        return RegionScorer(scorer, config, detector)

    written = already = 0
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])  # n, sums of total, loc., sem.
    guard = StageOutput(
        config.out, "score", settings(config), config.overwrite,
        extra=(summary_path(config.out), counts_path(config.out)),
        inputs={"regions": config.regions, "candidates": config.candidates},
    )  # fmt: skip
    with guard, JsonlWriter(config.out) as out, JsonlWriter(counts_path(config.out)) as region_counts:
        todo = {}
        for region_id, cand_ids in ids.items():
            wanted = cand_ids + ([i + REFINED_SUFFIX for i in cand_ids] if config.refine else [])
            if all(out.has(i) for i in wanted):
                already += len(wanted)
            else:
                todo[region_id] = len(cand_ids)
        bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="score", unit="region",
                   disable=config.quiet or None)  # fmt: skip
        for region_id, cands in region_groups(config.candidates, todo) if todo else ():
            bar.update(1)
            region_scorer = region_scorer or make_region_scorer()  # not loaded when nothing is left to score
            counted = Counter()
            try:
                scores = region_scorer.score_region(regions[region_id], cands, counted)
            except ImageProblem as e:
                log.warning("skipped region %s: %s", region_id, e)
                problems[f"region skipped: {e.kind}"] += 1
                continue
            # before its records: a region whose records are all written has its counts (a killed region is
            # scored again, with the same counts, and the first line stays)
            region_counts.write({"id": region_id, "counts": dict(counted)})
            for s in scores:
                if out.write(s):
                    written += 1
                    t = totals["refined" if s.refined else "original"]
                    t[0], t[1], t[2], t[3] = (
                        t[0] + 1,
                        t[1] + s.total,
                        t[2] + s.localization,
                        t[3] + s.semantic,
                    )
                else:
                    already += 1
        bar.close()
        repaired = out.repaired
    if repaired:  # records of torn lines in the middle were written again at the end: back to their places
        reorder(config.out, written_order(config.candidates, ids, config.refine))

    problems.update(region_totals(counts_path(config.out)))  # every region's, whichever run scored it
    summary = {
        "semantic": name,
        "lambda": config.lam,
        "regions": len(ids),
        "candidates": sum(len(v) for v in ids.values()),
        "written": written,
        "already_there": already,
        "problems": dict(problems),
    }
    COUNTS.write(summary_path(config.out), summary)
    rows = [["regions", len(ids)], ["candidates", summary["candidates"]], ["records written", written]]
    rows.append(["records already there (resumed)", already])
    for kind, (n, total, localization, semantic) in sorted(totals.items()):
        rows.append([f"mean total ({kind}, {n})", total / n])
        rows.append([f"mean localization ({kind})", localization / n])
        rows.append([f"mean semantic ({kind})", semantic / n])
    rows += [[k if k.startswith("refined") else f"problem: {k}", v] for k, v in sorted(problems.items())]
    print(markdown_table(["score", "value"], rows))
    if ids and not written and not already:
        raise UserError(
            f"no candidate could be scored (see the problems above); {config.out} holds no scores"
        )
    return 0


def written_order(candidates_path, ids: dict[str, list[str]], refine: bool) -> list[str]:
    """The score ids in the order one uninterrupted run writes them: region by region as each region's last
    candidate is read, each candidate's score and then its refined one."""
    seen: Counter = Counter()
    order: list[str] = []
    for c in candidates_of(candidates_path):
        if c.region_id in ids:
            seen[c.region_id] += 1
            if seen[c.region_id] == len(ids[c.region_id]):
                for cid in ids[c.region_id]:
                    order += [cid, cid + REFINED_SUFFIX] if refine else [cid]
    return order


def summary_path(out) -> Path:
    return Path(out).with_suffix(".summary.json")


def counts_path(out) -> Path:
    """The counters of each scored region (codec problems, refined boxes, unusable references), one line per
    region, so that the summary of a resumed run counts the regions an earlier invocation scored."""
    out = Path(out)
    return out.with_name(out.stem + ".counts.jsonl")


def region_totals(path: Path) -> Counter:
    from ..data.jsonl import iter_jsonl

    totals: Counter = Counter()
    if path.exists():
        for rec in iter_jsonl(path, skip_bad=True):
            totals.update({str(k): int(v) for k, v in (rec.get("counts") or {}).items()})
    return totals
