"""Preference pairs: per (region, prompt), chosen = the best-scored refined candidate, rejected = the lowest-scored
original candidate (both answer the same prompt, as DPO needs one prompt per pair).

A group is skipped, and counted, when it has no original candidate, when its prompt's crop box is unusable, when
its chosen and rejected texts are identical, or when the margin (chosen total - rejected total) is not positive or is below ``min_margin``. When the
scores hold no refined candidates (``spr score --no-refine``) the chosen is the best original candidate. Ties go
to the smaller id, so the choice is deterministic.

Besides Pair records, ``spr pairs`` writes ``dpo.jsonl`` next to the pairs file: one conversational row per pair
that TRL's DPOTrainer takes as it is (``prompt`` with the image, ``chosen``, ``rejected``, ``images``), loadable
with ``datasets.load_dataset("json", data_files=...)``; ``crop_box`` says which part of the image the prompt
showed (null: the whole image).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import boxes as B
from .data.jsonl import read_records, write_jsonl
from .data.records import Candidate, Pair, Region, Score
from .errors import UserError

HELP = "Build chosen/rejected preference pairs (and the DPO dataset) from scored candidates."
log = logging.getLogger(__name__)

SKIP_REASONS = (
    "no original candidate",
    "identical chosen and rejected texts",
    "margin below threshold",
    "unknown region or candidate",
    "unusable crop box",
)


@dataclass
class PairConfig:
    min_margin: float = 0.0
    """Keep a pair only when chosen total - rejected total is positive and at least this."""


def prompt_key(candidate_id: str, candidates: dict[str, Candidate]) -> tuple[str, str] | None:
    c = candidates.get(candidate_id)
    if c is not None:
        return (c.region_id, c.prompt_id)
    parts = candidate_id.split("/")  # "{region_id}/{prompt_id}/{sample}"; region ids may hold "/"
    return ("/".join(parts[:-2]), parts[-2]) if len(parts) >= 3 else None


def build_pairs(
    regions: dict[str, Region],
    candidates: dict[str, Candidate],
    scores: list[Score],
    config: PairConfig | None = None,
) -> tuple[list[Pair], Counter]:
    """Pairs and counts (``groups``, ``pairs``, one entry per skip reason)."""
    cfg = config or PairConfig()
    groups: dict[tuple[str, str], list[Score]] = defaultdict(list)
    stats: Counter = Counter({r: 0 for r in SKIP_REASONS})
    for s in scores:
        key = prompt_key(s.candidate_id, candidates)
        if key is None or key[0] not in regions or s.candidate_id not in candidates:
            stats["unknown region or candidate"] += 1
            continue
        groups[key].append(s)
    pairs = []
    for (region_id, prompt_id), group in sorted(groups.items()):
        stats["groups"] += 1
        originals = sorted((s for s in group if not s.refined), key=lambda s: (s.total, s.id))
        refined = sorted((s for s in group if s.refined), key=lambda s: (-s.total, s.id))
        if not originals:
            stats["no original candidate"] += 1
            continue
        rejected = originals[0]
        chosen = refined[0] if refined else sorted(originals, key=lambda s: (-s.total, s.id))[0]
        if chosen.text.strip() == rejected.text.strip():
            stats["identical chosen and rejected texts"] += 1
            continue
        margin = chosen.total - rejected.total
        if margin <= 0 or margin < cfg.min_margin:
            stats["margin below threshold"] += 1
            continue
        region, cand = regions[region_id], candidates[rejected.candidate_id]
        if cand.crop_box is not None and B.problem(cand.crop_box) is not None:
            stats["unusable crop box"] += 1  # the trainer could not rebuild the image the prompt showed
            continue
        pairs.append(
            Pair(
                id=f"{region_id}/{prompt_id}",
                region_id=region_id,
                image=cand.image or region.image,
                prompt_id=prompt_id,
                prompt=cand.prompt,
                chosen=chosen.text,
                rejected=rejected.text,
                chosen_score=chosen.total,
                rejected_score=rejected.total,
                chosen_id=chosen.id,
                rejected_id=rejected.id,
                crop_box=cand.crop_box,
                chosen_groundings=chosen.groundings,
                rejected_groundings=rejected.groundings,
            )
        )
    stats["pairs"] = len(pairs)
    return pairs, stats


def dpo_row(pair: Pair) -> dict:
    """One row of the DPO dataset (conversational, with the image), in the layout TRL's DPOTrainer reads."""
    return {
        "id": pair.id,
        "images": [pair.image],
        "crop_box": list(pair.crop_box) if pair.crop_box is not None else None,
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": pair.prompt}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
    }


def dpo_path(pairs_path: str | Path) -> Path:
    return Path(pairs_path).with_name("dpo.jsonl")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regions", required=True, help="regions.jsonl")
    p.add_argument("--candidates", required=True, help="candidates.jsonl")
    p.add_argument("--scores", required=True, help="scores.jsonl from `spr score`")
    p.add_argument("--out", required=True, help="pairs.jsonl to write; dpo.jsonl is written beside it")
    p.add_argument(
        "--min-margin", type=float, default=0.0, help="skip pairs whose total-score margin is below this"
    )


def run(args) -> int:
    from .table import markdown_table

    bad: list[str] = []
    try:
        regions = {r.id: r for r in read_records(args.regions, Region, skip_bad=True, problems=bad)}
        candidates = {c.id: c for c in read_records(args.candidates, Candidate, skip_bad=True, problems=bad)}
        scores = read_records(args.scores, Score, skip_bad=True, problems=bad)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    for msg in bad[:5]:
        log.warning("skipped: %s", msg)
    if not scores:
        raise UserError(f"{args.scores}: no score records; run `spr score` first")
    pairs, stats = build_pairs(regions, candidates, scores, PairConfig(args.min_margin))
    if bad:
        stats["malformed records skipped"] = len(bad)
    # Pairs are derived data, cheap to rebuild: rewritten whole (atomically) rather than resumed.
    write_jsonl(args.out, pairs)
    write_jsonl(dpo_path(args.out), (dpo_row(p) for p in pairs))
    summary = {"min_margin": args.min_margin, **stats}
    if pairs:
        margins = [p.margin for p in pairs]
        summary["mean_margin"] = sum(margins) / len(margins)
        summary["mean_chosen"] = sum(p.chosen_score for p in pairs) / len(pairs)
        summary["mean_rejected"] = sum(p.rejected_score for p in pairs) / len(pairs)
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    rows = [[k, v] for k, v in summary.items()]
    print(markdown_table(["pairs", "value"], rows))
    print(f"wrote {len(pairs)} pairs to {args.out} and the DPO dataset to {dpo_path(args.out)}")
    return 0
