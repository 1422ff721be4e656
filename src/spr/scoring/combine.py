"""The total score and the per-region scoring of candidates (original and refined) into Score records.

Total = lambda * S_sem + (1 - lambda) * S_loc, lambda = 0.8 by default (the paper's). With the ``none`` semantic
scorer the total is S_loc alone.

Per region: the reference set and the semantic scorer's region state (image embeddings, label embeddings) are
computed once; the texts of all the region's candidates, original and refined, go to the semantic scorer in one
call. Bad candidates never stop the stage: a candidate without a usable box scores S_loc = 0 (and stays a valid
rejected), empty or unreadable text scores S_sem = 0, and each kind of problem is counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from ..config import check_numbers, opt, required
from ..data.images import load_image
from ..data.records import Candidate, Region, Score
from ..data.summary import Count, Counters
from ..options import Device, ImageLimit, Progress
from ..refine import RefineConfig, count_kinds, refine_candidate, usable_groundings
from .localization import LocalizationConfig, localization_score
from .options import ScorerOptions
from .references import ReferenceSet, merge_detections, region_references
from .semantic import NoSemantic, SemanticItem, SemanticScorer
from .text import description_text

REFINED_SUFFIX = "#refined"
REFINED_COUNTS = Counters({
    "refined: boxes replaced": Count("box strings that refinement replaced with the matched reference", "box"),
    "refined: boxes dropped": Count("box strings that refinement removed (--unmatched drop)", "box"),
    "refined: boxes set to the samples' median": Count(
        "box strings that matched no reference and took the median of the prompt's sampled boxes for that object "
        "(--unmatched median)", "box"),
})  # fmt: skip


def total_score(semantic: float, localization: float, lam: float) -> float:
    return lam * semantic + (1.0 - lam) * localization


@dataclass
class ScoreConfig(ScorerOptions, ImageLimit, Device, Progress):
    """`spr score`: semantic and localization scores of every candidate and of its refined version."""

    regions: str = opt(required, "regions.jsonl (Region records)")
    candidates: str = opt(required, "candidates.jsonl (Candidate records)")
    out: str = opt(required, "scores.jsonl to write (ids already there are kept: resumable)")
    label_mode: Literal["f1", "recall", "precision"] = opt("f1", "which side of the labels scorer to use")
    refine: bool = opt(
        True, "also refine every candidate and score the refined text (id '<candidate>#refined')"
    )
    unmatched: Literal["keep", "drop", "median"] = opt(
        "keep",
        "refinement: keep unmatched boxes as written, drop their text, or write the median of the prompt's "
        "sampled boxes for that object (label-free; not in the paper)",
    )
    refine_matching: Literal["best", "one_to_one"] = opt(
        "best", "refinement: each box snaps to its best reference, or one reference per box (Hungarian)"
    )
    refine_threshold: float = opt(
        0.5, "refinement: a box is replaced when its IoU with a reference is above this"
    )
    loc_average: Literal["reference", "prediction"] = opt(
        "reference", "localization: average over reference objects (rewards coverage) or predicted boxes"
    )
    loc_iou: Literal["thresholded", "raw"] = opt(
        "thresholded", "localization: IoU below the threshold counts 0, or raw IoU"
    )
    loc_matching: Literal["best", "one_to_one"] = opt(
        "best", "localization: best partner per box, or Hungarian"
    )
    detector: str | None = opt(
        None, "local OWLv2 / Grounding DINO directory whose boxes join the reference set"
    )
    detector_threshold: float = opt(0.3, "keep detections with at least this confidence")
    dedup_iou: float = opt(
        0.5, "detector boxes with at least this IoU with a reference already there are dropped"
    )
    overwrite: bool = opt(False, "discard an existing output instead of resuming it", output=False)

    def __post_init__(self):
        check_numbers(self)  # lambda in [0, 1], the IoU threshold in (0, 1] ..., also when built in Python
        self.localization_config(), self.refine_config()  # their own checks

    def localization_config(self) -> LocalizationConfig:
        return LocalizationConfig(self.loc_average, self.loc_iou, self.loc_matching, self.iou_threshold)

    def refine_config(self) -> RefineConfig:
        return RefineConfig(self.refine_threshold, self.unmatched, self.refine_matching)

    def semantic_name(self) -> str:
        return self.semantic or ("clip" if self.clip_model else "labels")


class RegionScorer:
    """Scores the candidates of one region at a time (see the module docstring)."""

    def __init__(self, semantic: SemanticScorer, config: ScoreConfig | None = None, detector=None):
        self.semantic = semantic
        self.config = config or ScoreConfig()
        self.detector = detector
        self.lam = 0.0 if isinstance(semantic, NoSemantic) else self.config.lam
        self.localization = self.config.localization_config()
        self.refinement = self.config.refine_config()

    def references(
        self, region: Region, image, candidates_phrases: list[str], problems: Counter
    ) -> ReferenceSet:
        refs = region_references(region, problems)
        if self.detector is not None and image is not None:
            detections = self.detector.detect(image, candidates_phrases)
            refs = merge_detections(refs, detections, region.region_box, dedup_iou=self.config.dedup_iou)
        return refs

    def score_region(
        self, region: Region, candidates: list[Candidate], problems: Counter | None = None, image=None
    ) -> list[Score]:
        """Score records for ``candidates`` (all of ``region``): each original, then each refined one."""
        problems = problems if problems is not None else Counter()
        needs_image = self.semantic.needs_image or self.detector is not None
        if image is None and needs_image:
            image = load_image(region.image, self.config.max_image_pixels, expected_size=region.image_size)
        usable = [usable_groundings(c, region) for c in candidates]
        phrases = [g["phrase"] for u in usable for g in u.groundings if g.get("phrase")]
        refs = self.references(region, image, phrases, problems)
        state = self.semantic.prepare(region, image, refs)

        # (candidate, refined?, text, groundings, problems) for every record to write
        rows = []
        by_prompt: dict[str, list[int]] = {}  # the samples of each prompt, for unmatched="median"
        for i, cand in enumerate(candidates):
            by_prompt.setdefault(cand.prompt_id, []).append(i)
        for i, (cand, use) in enumerate(zip(candidates, usable)):
            count_kinds(use.problems, problems)
            text = cand.text if isinstance(cand.text, str) else ""
            rows.append((cand, False, text, use.groundings, use.problems))
            if self.config.refine:
                siblings = [usable[k].boxes for k in by_prompt[cand.prompt_id] if k != i]
                ref = refine_candidate(
                    cand, region, refs.boxes, self.refinement, usable=use, siblings=siblings
                )
                count_kinds(ref.problems, problems)
                problems["refined: boxes replaced"] += ref.replaced
                if self.refinement.unmatched == "median":
                    problems["refined: boxes set to the samples' median"] += ref.medians
                problems["refined: boxes dropped"] += ref.dropped
                rows.append((cand, True, ref.text, ref.groundings, ref.problems))

        items = [
            SemanticItem(description_text(text, gs), [g["phrase"] for g in gs if g.get("phrase")])
            for _, _, text, gs, _ in rows
        ]
        semantic = self.semantic.score(state, items)

        out = []
        for (cand, refined, text, gs, probs), sem in zip(rows, semantic):
            valid = [g for g in gs if g.get("box") is not None]
            loc = localization_score(
                [g["box"] for g in valid],
                refs.boxes,
                self.localization,
                reference_labels=refs.labels,
                reference_sources=refs.sources,
                prediction_phrases=[g.get("phrase") for g in valid],
            )
            sem = float(sem) if math.isfinite(sem) else 0.0
            out.append(
                Score(
                    id=cand.id + (REFINED_SUFFIX if refined else ""),
                    candidate_id=cand.id,
                    region_id=region.id,
                    refined=refined,
                    text=text,
                    semantic=sem,
                    localization=loc.score,
                    total=total_score(sem, loc.score, self.lam),
                    precision=loc.precision,
                    recall=loc.recall,
                    f1=loc.f1,
                    matches=loc.matches,
                    groundings=gs,
                    problems=list(probs),
                )
            )
        return out
