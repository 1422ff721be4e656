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

import logging
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from . import boxes as B
from .config import opt, output_settings, required
from .data.jsonl import JsonlError, commit_together, iter_records, manifest_path, read_records
from .data.records import Candidate, Pair, Region, Score
from .data.summary import Count, Counters
from .errors import UserError

log = logging.getLogger(__name__)

# What pairs.summary.json counts; the skip reasons are the groups (a region's answers to one prompt) that gave
# no pair, by reason.
SKIPPED = {
    "no original candidate": "groups without a scored original answer",
    "no refined candidate": "groups without a scored refined answer (paper and self_refined pairings need one)",
    "identical chosen and rejected texts": "groups whose chosen and rejected answers read the same",
    "margin below threshold": "groups whose margin (chosen total - rejected total) is not above 0 and --min-margin",
    "unknown region or candidate": "scores whose region or candidate is not in the inputs",
    "unusable crop box": "groups whose crop box the trainer could not rebuild the image from",
}
SKIP_REASONS = tuple(SKIPPED)
COUNTS = Counters({
    "--min-margin": Count("a pair needs chosen total - rejected total above 0 and at least this", "setting"),
    "--pairing": Count("which two answers of a prompt are paired", "setting"),
    "groups": Count("groups of scored answers to one prompt of one region", "group"),
    "pairs": Count("pairs written, at most one per group", "pair"),
    **{reason: Count(meaning, "group") for reason, meaning in SKIPPED.items()},
    "mean margin": Count("chosen total - rejected total, over the pairs", "value"),
    "smallest margin kept": Count("the smallest margin among the pairs", "value"),
    "mean chosen total": Count("the chosen answers' total score, over the pairs", "value"),
    "mean rejected total": Count("the rejected answers' total score, over the pairs", "value"),
})  # fmt: skip
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


class ScoreSummary(NamedTuple):
    """What choosing needs of a score (its text and boxes are read only for the chosen and the rejected)."""

    id: str
    candidate_id: str
    refined: bool
    total: float


def _best(scores: list) -> ScoreSummary:
    return min(scores, key=lambda s: (-s.total, s.id))


def _worst(scores: list) -> ScoreSummary:
    return min(scores, key=lambda s: (s.total, s.id))


def _pick(rule: str, originals: list, refined: list) -> tuple | None:
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


def _choose(
    scores: Iterable, keys: dict[str, tuple[str, str]], regions, cfg: PairConfig, stats: Counter
) -> list:
    """Per (region, prompt) group of ``scores`` (Score or ScoreSummary; ``keys``: candidate id -> its group),
    in group order, ``(key, chosen, rejected)``; groups without a choice are counted in ``stats``."""
    if cfg.pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {cfg.pairing!r}")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for s in scores:
        key = keys.get(s.candidate_id)
        if key is None or key[0] not in regions:
            stats["unknown region or candidate"] += 1
            continue
        groups[key].append(s)
    choices = []
    for key, group in sorted(groups.items()):
        stats["groups"] += 1
        originals = [s for s in group if not s.refined]
        if not originals:
            stats["no original candidate"] += 1
            continue
        picked = _pick(cfg.pairing, originals, [s for s in group if s.refined])
        if picked is None:
            stats["no refined candidate"] += 1
            continue
        choices.append((key, *picked))
    return choices


def _pairs(
    choices, scores: dict | None, regions, candidates: dict, cfg: PairConfig, stats: Counter
) -> list[Pair]:
    """The pairs of ``choices`` (from ``_choose``) whose texts differ, margin holds and crop box is usable;
    ``scores`` by id (None: the choices are full scores) and ``candidates`` by id hold at least the chosen and
    rejected ones."""
    pairs = []
    for (region_id, prompt_id), chosen_of, rejected_of in choices:
        chosen, rejected = (
            (chosen_of, rejected_of) if scores is None else (scores[chosen_of.id], scores[rejected_of.id])
        )
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
    return pairs


def build_pairs(
    regions: dict[str, Region],
    candidates: dict[str, Candidate],
    scores: list[Score],
    config: PairConfig | None = None,
) -> tuple[list[Pair], Counter]:
    """Pairs and counts (``groups``, ``pairs``, one entry per skip reason), from records in memory."""
    cfg = config or PairConfig()
    stats: Counter = Counter({r: 0 for r in SKIP_REASONS})
    keys = {c.id: (c.region_id, c.prompt_id) for c in candidates.values()}
    choices = _choose(scores, keys, regions, cfg, stats)
    return _pairs(choices, None, regions, candidates, cfg, stats), stats


def pairs_from_files(
    regions: dict[str, Region], candidates_path, scores_path, config: PairConfig
) -> tuple[list[Pair], Counter]:
    """``build_pairs`` on the files, which are read one record at a time: memory holds a small summary per
    candidate and score, and the full records of the chosen and rejected answers only (each file is read
    twice). A score that is not a finite number is refused (:func:`check_scores`)."""
    stats: Counter = Counter({r: 0 for r in SKIP_REASONS})
    keys = {c.id: (c.region_id, c.prompt_id) for c in iter_records(candidates_path, Candidate)}
    bad: list[str] = []
    summaries = []
    for i, s in enumerate(iter_records(scores_path, Score), start=1):
        problem = _not_finite(s)
        if problem:
            bad.append(f"record {i} (id {s.id!r}): {problem}")
        summaries.append(ScoreSummary(s.id, s.candidate_id, s.refined, s.total))
    if not summaries:
        raise UserError(f"{scores_path}: no score records; run `spr score` first")
    _refuse(bad, scores_path)
    choices = _choose(summaries, keys, regions, config, stats)
    del summaries, keys
    wanted = {s.id for _, chosen, rejected in choices for s in (chosen, rejected)}
    scores = {s.id: s for s in iter_records(scores_path, Score) if s.id in wanted}
    rejected_ids = {scores[rejected.id].candidate_id for _, _, rejected in choices}
    candidates = {c.id: c for c in iter_records(candidates_path, Candidate) if c.id in rejected_ids}
    return _pairs(choices, scores, regions, candidates, config, stats), stats


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


def _not_finite(s: Score) -> str | None:
    for name in ("total", "semantic", "localization"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return f"{name} = {v!r}"
    return None


def _refuse(bad: list[str], path) -> None:
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserError(
            f"{path}: scores must be finite numbers; {'; '.join(bad[:5])}{more}. Score the candidates again "
            "with `spr score --overwrite`"
        )


def check_scores(scores: list[Score], path) -> None:
    """Refuse scores whose numbers are not finite numbers (a hand-edited or corrupt file), naming them."""
    bad = [f"record {i} (id {s.id!r}): {p}" for i, s in enumerate(scores, start=1) if (p := _not_finite(s))]
    _refuse(bad, path)


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
    try:
        pairs, stats = pairs_from_files(regions, config.candidates, config.scores, config)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except JsonlError as e:
        raise UserError(f"{e}; expected candidate and score records") from None
    out, dpo = Path(config.out), config.dpo_path()
    summary_file = out.with_suffix(".summary.json")
    with StageOutput(out, "pairs", output_settings(config), resume=False):
        commit_together(
            {out: (p.to_dict() for p in pairs), dpo: (dpo_row(p) for p in pairs)},
            manifest_path(dpo),
            owner=out,
        )
    summary = {"--min-margin": config.min_margin, "--pairing": config.pairing, **stats}
    if pairs:
        margins = [p.margin for p in pairs]
        summary["mean margin"] = sum(margins) / len(margins)
        summary["smallest margin kept"] = min(margins)
        summary["mean chosen total"] = sum(p.chosen_score for p in pairs) / len(pairs)
        summary["mean rejected total"] = sum(p.rejected_score for p in pairs) / len(pairs)
    COUNTS.write(summary_file, summary)
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
