"""The scorer's options, declared once: `spr score` takes them, `spr grpo` takes them for its ``spr`` reward
(the same scorer), and `spr eval description` takes the scorer models."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import OptionGroup, opt

DEFAULT_LAMBDA = 0.8  # the paper's weight of the semantic score


@dataclass
class SemanticModels(OptionGroup):
    clip_model: str | None = opt(None, "local CLIPModel / SiglipModel directory for the clip scorer")
    label_model: str | None = opt(
        None, "sentence-embedding model directory for the labels scorer", default_text="all-MiniLM-L6-v2"
    )


@dataclass
class ScorerOptions(SemanticModels, OptionGroup):
    semantic: str | None = opt(
        None,
        "semantic scorer: clip, labels, none, or a registered one",
        default_text="clip with --clip-model, else labels",
    )
    lam: float = opt(
        DEFAULT_LAMBDA, "total = lambda * semantic + (1 - lambda) * localization (spr grpo: its spr reward)",
        name="lambda", min=0, max=1,
    )  # fmt: skip
    iou_threshold: float = opt(
        0.5, "IoU a box needs to count (>=) in the localization score and its precision / recall / F1 (spr grpo: "
        "also the t of its iou_at_t reward)", above=0, max=1,
    )  # fmt: skip


def scorer_options(config) -> dict:
    """The scorer options of ``config`` (any config with the group), by field name."""
    return {f.name: getattr(config, f.name) for f in fields(ScorerOptions)}
