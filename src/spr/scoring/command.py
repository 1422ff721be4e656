"""`spr score`: semantic and localization scores of every candidate, and of its refined version."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

from ..data.jsonl import JsonlWriter, read_records
from ..data.records import Candidate, Region
from ..errors import UserError
from ..refine import RefineConfig
from .combine import REFINED_SUFFIX, ImageError, RegionScorer, ScoreConfig
from .localization import AVERAGES, IOU_MODES, MATCHINGS, LocalizationConfig
from .semantic import SEMANTIC_SCORERS, make_semantic_scorer

HELP = "Score candidates (semantic + localization), refine their boxes and score the refined texts."
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regions", required=True, help="regions.jsonl (Region records)")
    p.add_argument("--candidates", required=True, help="candidates.jsonl (Candidate records)")
    p.add_argument("--out", required=True, help="scores.jsonl to write (resumes: ids already there are kept)")
    p.add_argument(
        "--semantic",
        choices=sorted(SEMANTIC_SCORERS),
        default=None,
        help="semantic scorer (default: clip when --clip-model is given, else labels)",
    )
    p.add_argument("--clip-model", help="local CLIPModel / SiglipModel directory for --semantic clip")
    p.add_argument(
        "--label-model", help="sentence-embedding model dir for --semantic labels (default: all-MiniLM-L6-v2)"
    )
    p.add_argument(
        "--label-mode", choices=["f1", "recall", "precision"], default="f1", help="labels scorer side"
    )
    p.add_argument(
        "--lambda", dest="lam", type=float, default=0.8, help="total = L * semantic + (1 - L) * localization"
    )
    p.add_argument(
        "--refine", action=argparse.BooleanOptionalAction, default=True, help="also score refined candidates"
    )
    p.add_argument(
        "--unmatched", choices=["keep", "drop"], default="keep", help="refinement: unmatched boxes"
    )
    p.add_argument("--refine-matching", choices=["best", "one_to_one"], default="best")
    p.add_argument("--refine-threshold", type=float, default=0.5, help="refinement: replace when IoU > this")
    p.add_argument(
        "--loc-average",
        choices=AVERAGES,
        default="reference",
        help="average S_loc over references or predictions",
    )
    p.add_argument("--loc-iou", choices=IOU_MODES, default="thresholded")
    p.add_argument("--loc-matching", choices=MATCHINGS, default="best")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="IoU a box needs to count (>=)")
    p.add_argument("--detector", help="local OWLv2 / Grounding DINO dir: add its boxes to the reference set")
    p.add_argument("--detector-threshold", type=float, default=0.3)
    p.add_argument(
        "--dedup-iou", type=float, default=0.5, help="detector boxes this close to a reference are dropped"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="start the output again instead of resuming")


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


def run(args) -> int:
    from tqdm import tqdm

    from ..table import markdown_table

    problems: Counter = Counter()
    regions, candidates = read_inputs(args.regions, args.candidates, problems)
    by_region: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.region_id in regions:
            by_region[c.region_id].append(c)
        else:
            problems["candidate of unknown region"] += 1
    try:
        config = ScoreConfig(
            lam=args.lam,
            localization=LocalizationConfig(
                args.loc_average, args.loc_iou, args.loc_matching, args.iou_threshold
            ),
            refine=args.refine,
            refinement=RefineConfig(args.refine_threshold, args.unmatched, args.refine_matching),
            dedup_iou=args.dedup_iou,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    name = args.semantic or ("clip" if args.clip_model else "labels")
    scorer = make_semantic_scorer(
        name,
        clip_model=args.clip_model,
        label_model=args.label_model,
        label_mode=args.label_mode,
        device=args.device,
    )
    detector = None
    if args.detector:
        from .detector import DetectorConfig, OpenVocabDetector

        detector = OpenVocabDetector(
            DetectorConfig(args.detector, args.detector_threshold, device=args.device)
        )
    region_scorer = RegionScorer(scorer, config, detector)

    written = already = 0
    totals = defaultdict(list)
    with JsonlWriter(args.out, resume=not args.overwrite) as out:
        for region_id in tqdm(list(by_region), desc="score", unit="region"):
            cands = by_region[region_id]
            wanted = [c.id for c in cands] + ([c.id + REFINED_SUFFIX for c in cands] if config.refine else [])
            if all(out.has(i) for i in wanted):
                already += len(wanted)
                continue
            try:
                scores = region_scorer.score_region(regions[region_id], cands, problems)
            except ImageError as e:
                log.warning("skipped region %s: %s", region_id, e)
                problems["image unreadable (region skipped)"] += 1
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
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    rows = [["regions", len(by_region)], ["candidates", summary["candidates"]], ["records written", written]]
    rows.append(["records already there (resumed)", already])
    for kind, scores in sorted(totals.items()):
        n = len(scores)
        rows.append([f"mean total ({kind}, {n})", sum(s.total for s in scores) / n])
        rows.append([f"mean localization ({kind})", sum(s.localization for s in scores) / n])
        rows.append([f"mean semantic ({kind})", sum(s.semantic for s in scores) / n])
    rows += [[k if k.startswith("refined") else f"problem: {k}", v] for k, v in sorted(problems.items())]
    print(markdown_table(["score", "value"], rows))
    return 0
