"""Option groups: the options several stages share, declared once, as dataclasses a stage config inherits.

``class RecConfig(EvalConfig, ModelFamily, PixelBudget, ImageLimit, Progress)`` gets ``--family``,
``--min-pixels``, ``--max-pixels``, ``--max-image-pixels`` and ``--quiet`` with one help text and one default
everywhere; ``--help`` lists a stage's own options first and the groups' after them. `spr run` hands the
run-wide ones (family, dtype, the pixel budget) to every stage that has them (:mod:`spr.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import OptionGroup, opt
from .data.images import DEFAULT_MAX_PIXELS


@dataclass
class ModelFamily(OptionGroup):
    family: str | None = opt(
        None,
        "model family, overriding config.model_type (needed where it does not tell)",
        default_text="from config.json",
    )


@dataclass
class PixelBudget(OptionGroup):
    """A model that writes boxes in pixels of its resized input (Qwen2.5-VL) needs one budget for generate,
    train and eval: state it once at the top of a run config."""

    min_pixels: int | None = opt(
        None,
        "image processor pixel budget, lower end (Qwen2-VL style processors)",
        default_text="the checkpoint's",
        min=1,
    )
    max_pixels: int | None = opt(
        None, "image processor pixel budget, upper end; generate, train and eval must use the same",
        default_text="the checkpoint's", min=1,
    )  # fmt: skip


@dataclass
class ImageLimit(OptionGroup):
    max_image_pixels: int = opt(
        DEFAULT_MAX_PIXELS,
        "largest image decoded, in pixels (a decompression-bomb guard): a larger one is skipped, or counted as an "
        "image failure by eval",
        min=1,
    )


@dataclass
class Progress(OptionGroup):
    quiet: bool = opt(False, "no progress bar", output=False)
