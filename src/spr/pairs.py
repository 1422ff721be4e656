"""Preference pairs: per (region, prompt) one chosen and one rejected answer to the same prompt (DPO needs one
prompt per pair), by one of three rules (``pairing``), each recorded in the pair's ``rule``:

- ``paper`` (SPR's): chosen = the best-scored refined candidate, rejected = the lowest-scored original one.
  Without refined scores (``spr score --no-refine``) the chosen is the best original candidate.
- ``self_refined``: chosen = the refined version of one candidate, rejected = that same candidate as generated,
  for the candidate whose refinement gained the most. The two texts differ only where boxes were corrected,
  so DPO's signal sits on the box tokens instead of on everything else two samples differ in.
- ``best_vs_worst``: the best and the worst original candidate (no refinement: a control for what it adds).

A group is skipped, and counted, when it has no original candidate (or, for ``self_refined``, no refined one),
when its prompt's crop box is unusable, when chosen and rejected texts are identical, or when the margin
(chosen total - rejected total) is not positive or below ``min_margin``. Ties go to the smaller id, so the
choice is deterministic.

Besides Pair records, ``spr pairs`` writes the DPO rows (``dpo.jsonl`` beside the pairs file by default): one
conversational row per pair that TRL's DPOTrainer takes as it is (``prompt`` with the image, ``chosen``,
``rejected``, ``images``), loadable with ``datasets.load_dataset("json", data_files=...)``; ``crop_box`` says
which part of the image the prompt showed (null: the whole image). The two files are committed together: a
manifest (``dpo.manifest.json``) says "writing" while they are replaced and holds both files' hashes once they
are, so ``spr train`` refuses DPO rows that do not belong to the pairs beside them (a kill between the two).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import boxes as B
from .config import opt, output_settings, required
from .data.jsonl import JsonlError, commit_together, manifest_path, read_records
from .data.records import Candidate, Pair, Region, Score
from .errors import UserError

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "no original candidate",
    "no refined candidate",
    "identical chosen and rejected texts",
    "margin below threshold",
    "unknown region or candidate",
    "unusable crop box",
)
PAIRINGS = ("paper", "self_refined", "best_vs_worst")


@dataclass
class PairConfig:
    """`spr pairs`: preference pairs and the DPO rows from scored candidates."""

    regions: str = opt(required, "regions.jsonl")
    candidates: str = opt(required, "candidates.jsonl")
    scores: str = opt(required, "scores.jsonl from `spr score`")
    out: str = opt(required, "pairs.jsonl to write (rewritten whole: pairs are cheap to rebuild)")
    dpo_out: str | None = opt(None, "DPO rows to write", default_text="dpo.jsonl beside --out")
    pairing: Literal["paper", "self_refined", "best_vs_worst"] = opt(
        "paper", "which answers are paired (see `spr.pairs`): paper, self_refined or best_vs_worst"
    )
    min_margin: float = opt(
        0.0, "keep a pair only when chosen total - rejected total is positive and at least this", min=0
    )

    def dpo_path(self) -> Path:
        return Path(self.dpo_out) if self.dpo_out else Path(self.out).with_name("dpo.jsonl")


def prompt_key(candidate_id: str, candidates: dict[str, Candidate]) -> tuple[str, str] | None:
    c = candidates.get(candidate_id)
    if c is not None:
        return (c.region_id, c.prompt_id)
    parts = candidate_id.split("/")  # "{region_id}/{prompt_id}/{sample}"; region ids may hold "/"
    return ("/".join(parts[:-2]), parts[-2]) if len(parts) >= 3 else None


def _best(scores: list[Score]) -> Score:
    return min(scores, key=lambda s: (-s.total, s.id))


def _worst(scores: list[Score]) -> Score:
    return min(scores, key=lambda s: (s.total, s.id))


def _pick(rule: str, originals: list[Score], refined: list[Score]) -> tuple[Score, Score] | None:
    """(chosen, rejected) of one group under ``rule``; None when the rule needs refined scores it lacks."""
    if rule == "paper":
        return (_best(refined) if refined else _best(originals)), _worst(originals)
    if rule == "best_vs_worst":
        return _best(originals), _worst(originals)
    by_candidate = {s.candidate_id: s for s in originals}
    gains = [(r, by_candidate[r.candidate_id]) for r in refined if r.candidate_id in by_candidate]
    if not gains:
        return None
    return min(gains, key=lambda rs: (-(rs[0].total - rs[1].total), rs[1].id))


def build_pairs(
    regions: dict[str, Region],
    candidates: dict[str, Candidate],
    scores: list[Score],
    config: PairConfig | None = None,
) -> tuple[list[Pair], Counter]:
    """Pairs and counts (``groups``, ``pairs``, one entry per skip reason)."""
    cfg = config or PairConfig()
    if cfg.pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {cfg.pairing!r}")
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
        originals = [s for s in group if not s.refined]
        if not originals:
            stats["no original candidate"] += 1
            continue
        picked = _pick(cfg.pairing, originals, [s for s in group if s.refined])
        if picked is None:
            stats["no refined candidate"] += 1
            continue
        chosen, rejected = picked
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
                rule=cfg.pairing,
                fmt=cand.fmt,
                geometry=dict(cand.geometry or {}),
                pixel_budget=dict(cand.pixel_budget or {}),
            )
        )
    stats["pairs"] = len(pairs)
    return pairs, stats


def dpo_row(pair: Pair) -> dict:
    """One row of the DPO dataset (conversational, with the image), in the layout TRL's DPOTrainer reads;
    ``geometry`` records the box format and codec geometry the answers are written in."""
    return {
        "id": pair.id,
        "images": [pair.image],
        "crop_box": list(pair.crop_box) if pair.crop_box is not None else None,
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": pair.prompt}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
        "geometry": {"format": pair.fmt, "pixel_budget": pair.pixel_budget, "codec": pair.geometry},
    }


def check_scores(scores: list[Score], path) -> None:
    """Refuse scores whose numbers are not finite numbers (a hand-edited or corrupt file), naming them."""
    bad = []
    for i, s in enumerate(scores, start=1):
        for name in ("total", "semantic", "localization"):
            v = getattr(s, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                bad.append(f"record {i} (id {s.id!r}): {name} = {v!r}")
                break
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserError(
            f"{path}: scores must be finite numbers; {'; '.join(bad[:5])}{more}. Score the candidates again "
            "with `spr score --overwrite`"
        )


HELP = "Build chosen/rejected preference pairs (and the DPO dataset) from scored candidates."
Config = PairConfig


def run(config: PairConfig) -> int:
    from .data.guard import StageOutput
    from .table import markdown_table

    def read(path, cls):
        try:
            return read_records(path, cls)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        except JsonlError as e:
            raise UserError(f"{e}; expected {cls.kind} records") from None

    regions = {r.id: r for r in read(config.regions, Region)}
    candidates = {c.id: c for c in read(config.candidates, Candidate)}
    scores = read(config.scores, Score)
    if not scores:
        raise UserError(f"{config.scores}: no score records; run `spr score` first")
    check_scores(scores, config.scores)
    pairs, stats = build_pairs(regions, candidates, scores, config)
    out, dpo = Path(config.out), config.dpo_path()
    summary_file = out.with_suffix(".summary.json")
    with StageOutput(out, "pairs", output_settings(config), resume=False):
        commit_together(
            {out: (p.to_dict() for p in pairs), dpo: (dpo_row(p) for p in pairs)}, manifest_path(dpo), owner=out
        )
    summary = {"min_margin (setting)": config.min_margin, "pairing": config.pairing, **stats}
    if pairs:
        margins = [p.margin for p in pairs]
        summary["mean margin"] = sum(margins) / len(margins)
        summary["smallest margin kept"] = min(margins)
        summary["mean chosen total"] = sum(p.chosen_score for p in pairs) / len(pairs)
        summary["mean rejected total"] = sum(p.rejected_score for p in pairs) / len(pairs)
    summary_file.write_text(json.dumps(summary, indent=2))
    print(markdown_table(["pairs", "value"], [[k, v] for k, v in summary.items()]))
    print(f"wrote {len(pairs)} pairs to {out} and the DPO dataset to {dpo}")
    if not pairs:  # written (a valid empty result), but a DPO dataset of no rows trains nothing: say why now
        why = ", ".join(f"{k} {v}" for k, v in stats.items() if k in SKIP_REASONS and v)
        print(
            f"warning: no pair from {stats['groups']} prompt(s) of {config.scores} ({why or 'no scored prompt'}); "
            "`spr train` has nothing to learn from. When every candidate of a prompt scores the same, sample more "
            f"or more varied candidates, or lower --min-margin ({config.min_margin})",
            file=sys.stderr,
        )
    return 0
