"""Option groups: the options several stages share, declared once, as dataclasses a stage config inherits.

``class RecConfig(EvalConfig, ModelFamily, PixelBudget, ImageLimit, Progress)`` gets ``--family``,
``--min-pixels``, ``--max-pixels``, ``--max-image-pixels`` and ``--quiet`` with one help text and one default
everywhere; ``--help`` lists a stage's own options first and the groups' after them. `spr run` hands the
run-wide ones (family, dtype, the pixel budget) to every stage that has them (:mod:`spr.pipeline`).
"""

from __future__ import annotations

import os
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
class Device(OptionGroup):
    device: str = opt(
        "auto", "torch device: auto (a GPU when torch sees one, each process its own under a launcher; else "
        "cpu), cpu, cuda, cuda:1 ...", output=False,
    )  # fmt: skip


def resolve_device(device: str | None) -> str:
    """The torch device ``device`` names (``auto``: this process's GPU when torch sees one, else cpu)."""
    if device not in (None, "auto"):
        return device
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


@dataclass
class Dtype(OptionGroup):
    dtype: str | None = opt(
        None, "precision of the model's weights: float32, bfloat16, float16 (not for training) or auto (generate, "
        "eval: the checkpoint's dtype; train, grpo: bf16 mixed precision where the GPU has it, else float32)",
        default_text="float32 on CPU, auto on a GPU; merge: float32",
    )  # fmt: skip


@dataclass
class DescriptionPrompts(OptionGroup):
    prompts: str | None = opt(
        None, "description prompts: comma-separated built-in ids (region_box, crop, hints) and/or JSON / YAML "
        "template files", default_text="all built-in prompts",
    )  # fmt: skip


@dataclass
class Progress(OptionGroup):
    quiet: bool = opt(
        False, "no progress bars or per-step lines (what goes to files is still written)", output=False
    )
