"""Localization score: how well the boxes of a description match the reference boxes of its region.

Default (the paper's): **S_loc = mean over reference objects of the best IoU with any predicted box, counted only
when IoU >= 0.5** (0 otherwise). A description without a usable box scores 0. Options the paper leaves open:

- ``average``: ``"reference"`` (default; rewards mentioning more of the region's objects) or ``"prediction"``
  (mean over predicted boxes of their best IoU with a reference; penalizes invented boxes).
- ``iou``: ``"thresholded"`` (default; IoU below ``threshold`` counts 0) or ``"raw"`` (IoU as it is).
- ``matching``: ``"best"`` (default; each box on the averaged side takes its best partner, partners may repeat)
  or ``"one_to_one"`` (Hungarian assignment maximising total IoU; a partner is used once).

Whatever the options, every result also carries precision, recall and F1 at IoU >= ``threshold`` under
one-to-one matching (a prediction is a true positive when it is assigned to a reference with IoU >= threshold),
and the per-reference matches that explain the number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import boxes as B

AVERAGES = ("reference", "prediction")
IOU_MODES = ("thresholded", "raw")
MATCHINGS = ("best", "one_to_one")


@dataclass
class LocalizationConfig:
    average: str = "reference"
    """Average over 'reference' objects (rewards coverage) or over 'prediction' boxes (penalizes inventions)."""
    iou: str = "thresholded"
    """'thresholded': IoU below `threshold` counts 0 (the paper); 'raw': IoU as it is."""
    matching: str = "best"
    """'best': best partner, partners may repeat (the paper); 'one_to_one': Hungarian assignment."""
    threshold: float = 0.5
    """IoU a match needs to count (IoU >= threshold), also for precision / recall / F1."""

    def __post_init__(self):
        for name, allowed in (("average", AVERAGES), ("iou", IOU_MODES), ("matching", MATCHINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"localization {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"localization threshold must be in [0, 1], got {self.threshold}")


@dataclass
class LocalizationResult:
    score: float
    precision: float
    recall: float
    f1: float
    matches: list[dict] = field(default_factory=list)
    """One entry per reference: {"reference", "label", "source", "prediction" (-1 when none), "phrase", "iou",
    "counted"} with the partner the score used for that reference (for ``average="prediction"`` the references
    still list their best partner, and each prediction's own best IoU is in ``prediction_ious``)."""
    prediction_ious: list[float] = field(default_factory=list)


def localization_score(
    predictions,
    references,
    config: LocalizationConfig | None = None,
    reference_labels: list[str] | None = None,
    reference_sources: list[str] | None = None,
    prediction_phrases: list[str | None] | None = None,
) -> LocalizationResult:
    """Score predicted boxes (P, 4) against reference boxes (R, 4); all boxes valid, original-image pixels."""
    cfg = config or LocalizationConfig()
    pred, ref = B.as_array(predictions), B.as_array(references)
    ious = B.iou(ref, pred)  # (R, P)
    r, p = ious.shape
    labels = reference_labels or [""] * r
    sources = reference_sources or ["annotation"] * r
    phrases = prediction_phrases or [None] * p

    # Partner of each reference under the chosen matching.
    ref_partner = np.full(r, -1, dtype=int)
    ref_iou = np.zeros(r)
    pred_iou = np.zeros(p)
    if r and p:
        if cfg.matching == "best":
            ref_partner, ref_iou = B.best_match(ious)
            pred_iou = ious.max(axis=0)
        else:
            for i, j, v in B.hungarian_match(ious):
                ref_partner[i], ref_iou[i], pred_iou[j] = j, v, v
    ref_partner = np.where(ref_iou > 0, ref_partner, -1)

    def counted(v: np.ndarray) -> np.ndarray:
        return np.where(v >= cfg.threshold, v, 0.0) if cfg.iou == "thresholded" else v

    side = ref_iou if cfg.average == "reference" else pred_iou
    score = float(counted(side).mean()) if len(side) and p else 0.0

    tp = len(B.hungarian_match(ious, threshold=cfg.threshold)) if r and p else 0
    precision = tp / p if p else 0.0
    recall = tp / r if r else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    matches = [
        {
            "reference": i,
            "label": labels[i],
            "source": sources[i],
            "prediction": int(ref_partner[i]),
            "phrase": phrases[ref_partner[i]] if ref_partner[i] >= 0 else None,
            "iou": round(float(ref_iou[i]), 6),
            "counted": bool(ref_iou[i] >= cfg.threshold),
        }
        for i in range(r)
    ]
    return LocalizationResult(
        score=score,
        precision=precision,
        recall=recall,
        f1=f1,
        matches=matches,
        prediction_ious=[round(float(v), 6) for v in pred_iou],
    )
