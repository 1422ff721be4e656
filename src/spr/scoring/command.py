"""`spr score`: semantic and localization scores of every candidate, and of its refined version."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

from ..config import output_settings
from ..data.guard import StageOutput, fingerprint
from ..data.images import ImageProblem
from ..data.jsonl import JsonlWriter, read_records
from ..data.records import Candidate, Region
from ..errors import UserError
from .combine import REFINED_SUFFIX, RegionScorer, ScoreConfig
from .semantic import make_semantic_scorer

HELP = "Score candidates (semantic + localization), refine their boxes and score the refined texts."
log = logging.getLogger(__name__)


def read_inputs(regions_path, candidates_path, problems: Counter):
    bad: list[str] = []
    try:
        regions = read_records(regions_path, Region, skip_bad=True, problems=bad)
        n_bad_regions = len(bad)
        candidates = read_records(candidates_path, Candidate, skip_bad=True, problems=bad)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    for msg in bad[:5]:
        log.warning("skipped: %s", msg)
    if n_bad_regions:
        problems["malformed region record"] += n_bad_regions
    if len(bad) - n_bad_regions:
        problems["malformed candidate record"] += len(bad) - n_bad_regions
    return {r.id: r for r in regions}, candidates


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
    regions, candidates = read_inputs(config.regions, config.candidates, problems)
    by_region: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.region_id in regions:
            by_region[c.region_id].append(c)
        else:
            problems["candidate of unknown region"] += 1
    if not by_region:
        raise UserError(
            f"nothing to score: no candidate of {config.candidates} belongs to a region of {config.regions} "
            f"({len(candidates)} candidate records, {len(regions)} regions); expected Candidate records written "
            "by `spr generate` for these regions"
        )
    name = config.semantic_name()
    scorer = make_semantic_scorer(
        name, clip_model=config.clip_model, label_model=config.label_model, label_mode=config.label_mode,
        device=config.device,
    )  # fmt: skip
    detector = None
    if config.detector:
        from .detector import DetectorConfig, OpenVocabDetector

        detector = OpenVocabDetector(DetectorConfig(config.detector, config.detector_threshold, device=config.device))
    region_scorer = RegionScorer(scorer, config, detector)

    written = already = 0
    totals = defaultdict(list)
    guard = StageOutput(
        config.out, "score", settings(config), config.overwrite, extra=(summary_path(config.out),),
        inputs={"regions": config.regions, "candidates": config.candidates},
    )  # fmt: skip
    with guard, JsonlWriter(config.out) as out:
        for region_id in tqdm(list(by_region), desc="score", unit="region", disable=config.quiet or None):
            cands = by_region[region_id]
            wanted = [c.id for c in cands] + ([c.id + REFINED_SUFFIX for c in cands] if config.refine else [])
            if all(out.has(i) for i in wanted):
                already += len(wanted)
                continue
            try:
                scores = region_scorer.score_region(regions[region_id], cands, problems)
            except ImageProblem as e:
                log.warning("skipped region %s: %s", region_id, e)
                problems[f"region skipped: {e.kind}"] += 1
                continue
            for s in scores:
                if out.write(s):
                    written += 1
                    totals["refined" if s.refined else "original"].append(s)
                else:
                    already += 1

    summary = {
        "semantic": name,
        "lambda": config.lam,
        "regions": len(by_region),
        "candidates": sum(len(v) for v in by_region.values()),
        "written": written,
        "already_there": already,
        "problems": dict(problems),
    }
    summary_path(config.out).write_text(json.dumps(summary, indent=2))
    rows = [["regions", len(by_region)], ["candidates", summary["candidates"]], ["records written", written]]
    rows.append(["records already there (resumed)", already])
    for kind, scores in sorted(totals.items()):
        n = len(scores)
        rows.append([f"mean total ({kind}, {n})", sum(s.total for s in scores) / n])
        rows.append([f"mean localization ({kind})", sum(s.localization for s in scores) / n])
        rows.append([f"mean semantic ({kind})", sum(s.semantic for s in scores) / n])
    rows += [[k if k.startswith("refined") else f"problem: {k}", v] for k, v in sorted(problems.items())]
    print(markdown_table(["score", "value"], rows))
    if by_region and not written and not already:
        raise UserError(f"no candidate could be scored (see the problems above); {config.out} holds no scores")
    return 0


def summary_path(out) -> Path:
    return Path(out).with_suffix(".summary.json")
