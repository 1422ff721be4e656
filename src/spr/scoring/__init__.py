"""Scoring of region descriptions: localization (boxes vs reference boxes), semantic (CLIP or labels) and the
total that ranks them; see each module's docstring for the exact definitions.

>>> from spr.scoring import localization_score
>>> localization_score([[0, 0, 10, 10]], [[0, 0, 10, 10], [20, 20, 30, 30]]).score
0.5
"""

from .combine import REFINED_SUFFIX, RegionScorer, ScoreConfig, total_score
from .localization import LocalizationConfig, LocalizationResult, localization_score
from .references import Detection, ReferenceSet, merge_detections, region_references
from .semantic import (
    SEMANTIC_SCORERS,
    ClipScorer,
    LabelScorer,
    NoSemantic,
    SemanticItem,
    SemanticScorer,
    make_semantic_scorer,
    register_semantic_scorer,
)
from .text import description_text, split_to_fit

__all__ = [
    "REFINED_SUFFIX",
    "SEMANTIC_SCORERS",
    "ClipScorer",
    "Detection",
    "LabelScorer",
    "LocalizationConfig",
    "LocalizationResult",
    "NoSemantic",
    "ReferenceSet",
    "RegionScorer",
    "ScoreConfig",
    "SemanticItem",
    "SemanticScorer",
    "description_text",
    "localization_score",
    "make_semantic_scorer",
    "merge_detections",
    "region_references",
    "register_semantic_scorer",
    "split_to_fit",
    "total_score",
]
