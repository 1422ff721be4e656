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
from dataclasses import dataclass, field

from PIL import Image

from ..data.records import Candidate, Region, Score
from ..refine import RefineConfig, count_kinds, refine_candidate, usable_groundings
from .localization import LocalizationConfig, localization_score
from .references import ReferenceSet, merge_detections, region_references
from .semantic import NoSemantic, SemanticItem, SemanticScorer
from .text import description_text

REFINED_SUFFIX = "#refined"


def total_score(semantic: float, localization: float, lam: float) -> float:
    return lam * semantic + (1.0 - lam) * localization


@dataclass
class ScoreConfig:
    lam: float = 0.8
    """Weight of the semantic score in the total (the paper: 0.8)."""
    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    refine: bool = True
    """Also refine every candidate and score the refined text (Score id '<candidate id>#refined')."""
    refinement: RefineConfig = field(default_factory=RefineConfig)
    dedup_iou: float = 0.5
    """Detector boxes with at least this IoU with a reference already in the set are duplicates."""

    def __post_init__(self):
        if not (math.isfinite(self.lam) and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"lambda must be in [0, 1], got {self.lam}")


class ImageError(RuntimeError):
    """The region's image cannot be read."""


def load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot read the image ({e})") from None


class RegionScorer:
    """Scores the candidates of one region at a time (see the module docstring)."""

    def __init__(self, semantic: SemanticScorer, config: ScoreConfig | None = None, detector=None):
        self.semantic = semantic
        self.config = config or ScoreConfig()
        self.detector = detector
        self.lam = 0.0 if isinstance(semantic, NoSemantic) else self.config.lam

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
            image = load_image(region.image)
        usable = [usable_groundings(c, region) for c in candidates]
        phrases = [g["phrase"] for u in usable for g in u.groundings if g.get("phrase")]
        refs = self.references(region, image, phrases, problems)
        state = self.semantic.prepare(region, image, refs)

        # (candidate, refined?, text, groundings, problems) for every record to write
        rows = []
        for cand, use in zip(candidates, usable):
            count_kinds(use.problems, problems)
            text = cand.text if isinstance(cand.text, str) else ""
            rows.append((cand, False, text, use.groundings, use.problems))
            if self.config.refine:
                ref = refine_candidate(cand, region, refs.boxes, self.config.refinement, usable=use)
                count_kinds(ref.problems, problems)
                problems["refined: boxes replaced"] += ref.replaced
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
                self.config.localization,
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
