"""The option groups `spr train` and `spr grpo` share (LoRA, the trainer's schedule and bookkeeping), declared
once, and the one mapping from them to the arguments of TRL's ``DPOConfig`` / ``GRPOConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import OptionGroup, opt
from ..models.families import LANGUAGE_TARGETS
from ..options import Device, Dtype, Progress


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
class TrainerOptions(Device, Dtype, Progress, OptionGroup):
    """A training config with this group also declares ``out`` and ``seed`` (:meth:`trl_arguments` reads them
    too), and its own defaults of the options whose default differs between DPO and GRPO (``STAGE_DEFAULTS``,
    filled in where the user gave none)."""

    STAGE_DEFAULTS = {}

    learning_rate: float = opt(1e-5, "peak learning rate", above=0)
    lr_scheduler_type: str = opt("cosine", "learning-rate schedule (transformers' names)")
    max_steps: int = opt(
        -1, "stop after this many optimizer steps (-1: run the epochs)", min=1, special=(-1,)
    )
    gradient_accumulation_steps: int = opt(1, "steps accumulated per optimizer update", min=1)
    gradient_checkpointing: bool | None = opt(
        None,
        "recompute activations in the backward pass to save memory",
        default_text="on on GPU, off on CPU",
    )
    save_steps: int = opt(200, "checkpoint every N steps", output=False, min=1)
    save_total_limit: int | None = opt(2, "keep at most N checkpoints", output=False, min=1)
    resume: bool = opt(
        True, "resume from the newest complete checkpoint in out when there is one", output=False
    )
    report_to: str = opt("none", "none, tensorboard, wandb ...", output=False)
    overwrite: bool = opt(False, "discard what out holds and train from scratch", output=False)
    num_train_epochs: float = opt(
        1.0, "epochs over the training data (DPO: the pairs; GRPO: the prompts)", above=0
    )
    warmup_ratio: float | None = opt(
        None, "fraction of steps for linear warm-up", min=0, max=1,
        default_text="train: 0.1 (the SPR authors' DPO scripts); grpo: 0 (TRL's)",
    )  # fmt: skip
    logging_steps: int | None = opt(
        None, "log every N steps", min=1, output=False,
        default_text="train: 10; grpo: 1 (its steps are slow, and each logged step writes sampled completions)",
    )  # fmt: skip

    def __post_init__(self):
        self.dtype = self.dtype or "auto"  # a training's default precision, named as its settings record it
        for name, value in self.STAGE_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

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
