"""`spr train`: DPO on the preference pairs with TRL's DPOTrainer, LoRA on the language model by default.

Read top to bottom: the config; the settings that decide the run; the trainer (rows checked in full, the model
loaded in its precision straight onto its device, LoRA on the language model or a frozen reference copy for full
fine-tuning); the run (resume from the newest complete checkpoint, save, tear the process group down).

Data: ``dpo.jsonl`` written by ``spr pairs`` (:mod:`spr.training.rows`). Images load from their paths when a
batch is built (cropped to ``crop_box``), so the dataset never holds pixels.

Model: any family ``spr.models.load`` knows. With LoRA (default) the adapter goes on the language model's
linear layers only (vision tower and projector frozen unless ``train_vision``), and the reference is the same
model with the adapter switched off (no second copy in memory). With ``method="full"`` the whole language model
trains (vision frozen unless asked) against an explicit frozen copy as reference.

Savings (:mod:`spr.training.trainer`): the frozen reference's log-probs of every pair are computed once into a
cache beside ``dpo.jsonl`` (``cache_reference``), and with the vision tower frozen each pair's image features are
computed once per step (``share_vision``); the losses are those of running the reference in every step.

Scaling: the same command runs on one CPU, one GPU, or N GPUs / DeepSpeed ZeRO-2/3 under
``accelerate launch --config_file configs/accelerate/<ddp|zero2|zero3>.yaml -m spr.cli train ...``.
Precision and gradient checkpointing: :mod:`spr.training.precision`.

Output directory: ``checkpoint-N/`` (resumable), then the final adapter (or full model) with the processor,
tokenizer and chat template, ``spr_train.json`` (the config, the base model path and the precision, read by
``spr merge``) and ``train_log.jsonl`` (loss, rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies per log step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import distributed
from .config import opt, output_settings, required
from .options import ImageLimit, ModelFamily, PixelBudget
from .training.options import LoraOptions, TrainerOptions

log = logging.getLogger(__name__)

HELP = "DPO training on preference pairs (TRL DPOTrainer; LoRA on the language model by default)."


@dataclass
class TrainConfig(ModelFamily, PixelBudget, ImageLimit, LoraOptions, TrainerOptions):
    """`spr train`; the defaults follow the SPR authors' DPO scripts where they say (for 7B models: the shapes
    world demo trains its tiny model at a higher rate, with an SFT term)."""

    model: str = opt(required, "base model directory (spr.models.load)")
    data: str = opt(required, "dpo.jsonl written by `spr pairs`")
    out: str = opt(required, "output directory (checkpoints, final adapter or model)")
    method: Literal["lora", "full"] = opt(
        "lora", "lora (adapter; reference = adapter off) or full fine-tuning"
    )
    adapter: str | None = opt(
        None,
        "continue training this LoRA adapter of --model (a round of `spr run --reference base`); the "
        "reference stays --model itself",
    )
    beta: float = opt(0.1, "DPO beta (how far the policy may move from the reference)")
    loss_type: list[str] = opt(
        ["sigmoid"], "TRL loss type(s): sigmoid, ipo, hinge, robust, ..., sft (an SFT term on chosen)"
    )
    loss_weights: list[float] | None = opt(None, "weights, one per loss type", default_text="1 each")
    label_smoothing: float = opt(0.0, "robust / EXO label smoothing")
    per_device_train_batch_size: int = opt(4, "pairs per device per step", min=1)
    max_length: int | None = opt(
        None, "truncate prompt + answer to this many tokens; never below the prompt (image tokens are kept)"
    )
    cache_reference: bool | None = opt(
        None, "compute the frozen reference's log-probs of every pair once, before the first step, into a file "
        "beside --data (resumable, reused by later runs); the steps then run no reference forward",
        default_text="on, off under DeepSpeed / FSDP", output=False,
    )  # fmt: skip
    share_vision: bool = opt(
        True, "process each pair's image once per step for its chosen and rejected row and, with the vision tower "
        "frozen, compute its features once for both and the reference, instead of once per row and model",
        output=False,
    )  # fmt: skip
    share_prompt: bool = opt(
        True, "run each pair's prompt (its image tokens included) through the language model once for its chosen "
        "and rejected answer, with a 4-d attention mask, instead of once per answer (sdpa / eager attention; "
        "not Qwen3.5)", output=False,
    )  # fmt: skip
    seed: int = opt(0, "random seed (initialisation, data order, dropout)")
    skip_bad: bool = opt(
        False, "skip pairs that cannot be used, and count them (default: stop and name them)"
    )
    dataloader_num_workers: int = opt(0, "processes that load images", output=False)

    STAGE_DEFAULTS = {"warmup_ratio": 0.1, "logging_steps": 10}

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"{len(self.loss_weights)} loss weight(s) for {len(self.loss_type)} loss type(s) {self.loss_type}"
            )
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.adapter and self.method != "lora":
            raise ValueError("adapter: continuing an adapter is LoRA training (method lora)")


Config = TrainConfig


def settings(config: TrainConfig) -> dict:
    """What decides the trained weights: the output fields, with the model and the data by fingerprint."""
    from .data.guard import fingerprint
    from .data.jsonl import file_sha256

    out = output_settings(config)
    out.pop("out")
    out["model"] = fingerprint(config.model)
    if config.adapter:  # safetensors only: a pickled adapter_model.bin would run code when loaded
        from .models.loading import check_weights

        check_weights(
            Path(config.adapter), safe=("adapter_model.safetensors",), unsafe=("adapter_model.bin",)
        )
    out["adapter"] = (
        file_sha256(Path(config.adapter) / "adapter_model.safetensors") if config.adapter else None
    )
    out["data"] = file_sha256(Path(config.data)) if Path(config.data).exists() else config.data
    return out


# ---------------------------------------------------------------------------------------------------- trainer


def dpo_config(config: TrainConfig, precision):
    from trl import DPOConfig

    from .training.precision import trainer_arguments

    return DPOConfig(
        **config.trl_arguments(),
        beta=config.beta,
        loss_type=list(config.loss_type),
        loss_weights=config.loss_weights,
        label_smoothing=config.label_smoothing,
        per_device_train_batch_size=config.per_device_train_batch_size,
        max_length=config.max_length,
        remove_unused_columns=False,  # the dataset transform needs its columns to load images
        dataloader_num_workers=config.dataloader_num_workers,
        precompute_ref_log_probs=False,  # TRL refuses it for vision data
        **trainer_arguments(precision),
    )


def load_for_training(config, precision, device: str | None = None):
    """The model adapter in the run's precision and pixel budget, on ``device`` (default: the precision's)."""
    from . import models

    return models.load(
        config.model, family=config.family, device=device or precision.device, dtype=precision.load_dtype,
        min_pixels=config.min_pixels, max_pixels=config.max_pixels,
    )  # fmt: skip


def use_cached_reference(config: TrainConfig, rows: list[dict]) -> bool:
    """Whether the reference's log-probs come from the cache (:mod:`spr.training.reference`): by default yes;
    the reference is frozen in every spr run (LoRA: the adapter off; full: a frozen copy; no sync_ref_model).
    Not under DeepSpeed / FSDP, where it is not tested (the reference then runs in every step, as TRL runs it)."""
    from .errors import UserError
    from .training.precision import sharded_launch

    if config.cache_reference is False:
        return False
    if sharded_launch():
        if config.cache_reference:
            raise UserError("--cache-reference is not supported under DeepSpeed / FSDP; leave it unset there")
        return False
    if len({r["id"] for r in rows}) != len(rows):
        log.warning(
            "pair ids in %s repeat: the reference runs in every step instead of being cached", config.data
        )
        return False
    return True


def build_trainer(config: TrainConfig, adapter=None, rows: list[dict] | None = None, callbacks=()):
    """The DPOTrainer for ``config`` (the model loads from ``config.model`` unless an adapter is given);
    ``callbacks`` are extra ``transformers.TrainerCallback``s."""
    from .training.callbacks import TrainLog
    from .training.collator import safe_collator
    from .training.parts import freeze_vision, lora_config
    from .training.precision import decide, ignore_checkpointing_deprecation
    from .training.reference import cache_path, reference_settings
    from .training.rows import build_dataset, read_pairs
    from .training.trainer import CachedReference, SprDPOTrainer

    ignore_checkpointing_deprecation()
    precision = decide(config.dtype, config.method, config.device, config.gradient_checkpointing)
    # The training arguments exist before the model loads: under DeepSpeed ZeRO-3 this makes from_pretrained
    # partition the weights as they load instead of materialising the whole model in every process.
    args = dpo_config(config, precision)
    loaded_here = adapter is None
    if loaded_here:
        adapter = load_for_training(config, precision)
    # the family's routers balance without it (FamilySpec.router_aux_loss)
    if not adapter.spec.router_aux_loss:
        args.router_aux_loss_coef = 0.0
    problems: list[str] = []
    if rows is None:
        rows = read_pairs(config.data, config.skip_bad, problems, adapter, config.max_image_pixels)
    for msg in problems:
        log.warning(msg)
    cache_reference = use_cached_reference(config, rows)
    model, processor = adapter.model, adapter.processor
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"

    peft_config, ref_model = None, None
    if config.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
    elif config.method == "lora":
        peft_config = lora_config(config, model, adapter.spec)
    else:
        import copy

        if not config.train_vision:
            freeze_vision(model, adapter.spec)
        # the reference: the same weights again, frozen (loaded from disk when possible, which also works
        # under ZeRO-3 where a parameter-sharded model cannot be deep-copied)
        ref_model = (
            load_for_training(config, precision).model if loaded_here else copy.deepcopy(model)
        ).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)

    reference = None
    if cache_reference:
        ref = reference_settings(config.model, precision, config.max_length, adapter)
        reference = CachedReference(rows, cache_path(config.data, ref), ref)
    trainer = SprDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        data_collator=safe_collator(processor, config.max_length, process_once=config.share_vision),
        train_dataset=build_dataset(rows),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[TrainLog(Path(config.out) / "train_log.jsonl", quiet=config.quiet), *callbacks],
        precision=precision,
        skipped=len(problems),
        reference=reference,
        vision_spec=adapter.spec if config.share_vision else None,
        prompt_spec=adapter.spec if config.share_prompt else None,
    )
    if config.adapter:
        # TRL makes the reference a frozen copy ("ref") of the adapter it was given; a LoRA whose B is zero adds
        # nothing, so zeroing the copy's B makes the reference the base model itself, as --adapter promises.
        for name, p in trainer.model.named_parameters():
            if ".ref." in name and "lora_B" in name:
                p.data.zero_()
    return trainer


# -------------------------------------------------------------------------------------------------------- run


def _last_rewards(history: list[dict]) -> dict:
    for entry in reversed(history):
        if "rewards/margins" in entry:
            return {k: v for k, v in entry.items() if k.startswith("rewards/")}
    return {}


def train(config: TrainConfig, adapter=None, callbacks=()) -> dict:
    """Train (resuming from the newest complete checkpoint; a completed run is a no-op), save the final adapter
    (or model) with processor, tokenizer and chat template; returns a summary."""
    from .training.lifecycle import run_training

    def summarize(trainer, result, seconds: float) -> dict:
        return {
            "train_loss": result.training_loss,
            "global_step": result.global_step,
            "world_size": trainer.args.world_size,
            "precision": trainer.spr_precision.describe(),
            "pairs skipped": trainer.spr_skipped,
            **_last_rewards(trainer.state.log_history),
        }

    return run_training(
        config,
        "train",
        settings(config),
        lambda: build_trainer(config, adapter, callbacks=callbacks),
        summarize,
    )


def print_summary(summary: dict, out) -> None:
    rows = [f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}" for k, v in summary.items()]
    print("trained:\n" + "\n".join(rows) + f"\noutput: {out}")


def run(config: TrainConfig) -> int:
    summary = train(config)
    if distributed.is_main_process():
        print_summary(summary, config.out)
    return 0
