"""The option groups `spr train` and `spr grpo` share (LoRA, the trainer's schedule and bookkeeping), declared
once, and the one mapping from them to the arguments of TRL's ``DPOConfig`` / ``GRPOConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import OptionGroup, opt
from ..models.families import LANGUAGE_TARGETS


@dataclass
class LoraOptions(OptionGroup):
    lora_r: int = opt(16, "LoRA rank", min=1)
    lora_alpha: int = opt(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = opt(0.05, "LoRA dropout", min=0, max=1)
    lora_target_modules: list[str] | None = opt(
        None,
        "names of the language model's linear layers that get LoRA",
        default_text=" ".join(LANGUAGE_TARGETS),
    )
    train_vision: bool = opt(False, "also train the vision tower and projector (LoRA on all their linears)")


@dataclass
class TrainerOptions(OptionGroup):
    """A training config with this group also declares ``out``, ``warmup_ratio``, ``num_train_epochs``,
    ``logging_steps`` and ``seed`` (their help or default differ between DPO and GRPO): :meth:`trl_arguments`
    reads them too."""

    learning_rate: float = opt(1e-5, "peak learning rate", above=0)
    lr_scheduler_type: str = opt("cosine", "learning-rate schedule (transformers' names)")
    max_steps: int = opt(
        -1, "stop after this many optimizer steps (-1: run the epochs)", min=1, special=(-1,)
    )
    gradient_accumulation_steps: int = opt(1, "steps accumulated per optimizer update", min=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = opt(
        "auto",
        "weights and mixed precision: auto (bf16 on GPUs that have it, fp32 on CPU), bfloat16 or float32",
    )
    gradient_checkpointing: bool | None = opt(
        None,
        "recompute activations in the backward pass to save memory",
        default_text="on on GPU, off on CPU",
    )
    device: Literal["auto", "cpu", "cuda"] = opt(
        "auto", "auto (GPU when available), cpu or cuda", output=False
    )
    save_steps: int = opt(200, "checkpoint every N steps", output=False, min=1)
    save_total_limit: int | None = opt(2, "keep at most N checkpoints", output=False, min=1)
    resume: bool = opt(
        True, "resume from the newest complete checkpoint in out when there is one", output=False
    )
    report_to: str = opt("none", "none, tensorboard, wandb ...", output=False)
    overwrite: bool = opt(False, "discard what out holds and train from scratch", output=False)
    quiet: bool = opt(
        False, "no progress bar or per-step lines (train_log.jsonl is still written)", output=False
    )

    def trl_arguments(self) -> dict:
        """The arguments of TRL's trainer config that DPO and GRPO take alike, from this config's options."""
        return dict(
            output_dir=self.out,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_ratio,  # a float below 1 is a ratio of the total steps
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            logging_steps=self.logging_steps,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            report_to=self.report_to,
            disable_tqdm=self.quiet,
        )
