"""`spr train`: DPO on the preference pairs with TRL's DPOTrainer, LoRA on the language model by default.

Data: ``dpo.jsonl`` written by ``spr pairs`` (one row per pair: ``images`` [path], ``crop_box`` or null,
conversational ``prompt`` / ``chosen`` / ``rejected``). Images load from their paths when a batch is built
(cropped to ``crop_box`` when set), so the dataset never holds pixels.

Model: any family ``spr.models.load`` knows. With LoRA (default) the adapter goes on the language model's
linear layers only (vision tower and projector frozen unless ``train_vision``), and the reference is the same
model with the adapter switched off (no second copy in memory). With ``method="full"`` the whole language
model trains (vision frozen unless asked) against an explicit frozen copy as reference.

Scaling: the same command runs on one CPU, one GPU, or N GPUs / DeepSpeed ZeRO-2/3 under
``accelerate launch --config_file configs/accelerate/<ddp|zero2|zero3>.yaml -m spr.cli train ...``.
On CPU it trains in float32 without gradient checkpointing; on GPU in bf16 (fp32 where bf16 is missing) with
gradient checkpointing.

Output directory: ``checkpoint-N/`` (resumable), then the final adapter (or full model) with the processor,
tokenizer and chat template, ``spr_train.json`` (the config and the base model path, read by ``spr merge``) and
``train_log.jsonl`` (loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies per log step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from spr.errors import UserError

log = logging.getLogger(__name__)

HELP = "DPO training on preference pairs (TRL DPOTrainer; LoRA on the language model by default)"

LANGUAGE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Attribute names under which transformers' VLMs keep the non-language parts (vision encoder, projector).
VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector", "mlp1")
LANGUAGE_PARTS = ("language_model", "text_model")
TRAIN_CONFIG_FILE = "spr_train.json"


@dataclass
class TrainConfig:
    """Everything `spr train` needs; the defaults follow the SPR authors' DPO scripts where they say."""

    model: str = field(metadata={"help": "base model directory (spr.models.load)"})
    data: str = field(metadata={"help": "dpo.jsonl written by `spr pairs`"})
    out: str = field(metadata={"help": "output directory (checkpoints, final adapter or model)"})
    family: str | None = field(
        default=None, metadata={"help": "model family when config.model_type does not tell"}
    )
    method: str = field(default="lora", metadata={"help": "lora (adapter, reference = adapter off) or full"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LANGUAGE_TARGETS),
        metadata={"help": "names of the language model's linear layers that get LoRA"},
    )
    train_vision: bool = field(
        default=False,
        metadata={"help": "also train the vision tower and projector (LoRA on all their linears)"},
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta (deviation from the reference)"})
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": "TRL loss type(s): sigmoid, ipo, hinge, robust, ..., sft (an SFT term on chosen)"},
    )
    loss_weights: list[float] | None = field(default=None, metadata={"help": "weights, one per loss type"})
    label_smoothing: float = field(default=0.0, metadata={"help": "robust / EXO label smoothing"})
    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps for linear warm-up"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the pairs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: epochs)"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "pairs per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "steps accumulated per update"})
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "truncate prompt+answer to this many tokens; never below the prompt (image tokens kept)"
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep at most N checkpoints"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume: bool = field(
        default=True, metadata={"help": "resume from the last checkpoint in out when present"}
    )
    device: str = field(default="auto", metadata={"help": "auto (GPU when available), cpu or cuda"})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "recompute activations (default: on GPU only)"}
    )
    skip_bad: bool = field(
        default=False,
        metadata={"help": "skip pairs whose image cannot be read (default: stop and name them)"},
    )
    report_to: str = field(default="none", metadata={"help": "none, tensorboard, wandb ..."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "workers that load images"})

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise UserError(f"method must be 'lora' or 'full', got {self.method!r}")
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise UserError(
                f"{len(self.loss_weights)} loss weight(s) for {len(self.loss_type)} loss type(s) {self.loss_type}"
            )
        if self.beta <= 0:
            raise UserError(f"beta must be > 0, got {self.beta}")


# ---------------------------------------------------------------------------------------------------------------
# Data


REQUIRED = ("images", "prompt", "chosen", "rejected")


def _check_messages(value, role: str, where: str, name: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise UserError(f"{where}: field {name!r} must be a non-empty list of chat messages")
    for m in value:
        if "role" not in m or "content" not in m:
            raise UserError(f"{where}: field {name!r} has a message without 'role' or 'content'")
    if value[-1]["role"] != role:
        raise UserError(
            f"{where}: field {name!r} must end with a {role!r} message, got {value[-1]['role']!r}"
        )


def read_pairs(path: str | Path, skip_bad: bool = False, problems: list[str] | None = None) -> list[dict]:
    """Rows of ``dpo.jsonl``, checked: every problem names the line. Images are opened (header only) to catch
    missing or unreadable files before training starts."""
    from PIL import Image

    from spr.data.jsonl import JsonlError, iter_jsonl

    path = Path(path)
    problems = problems if problems is not None else []
    if not path.exists():
        raise UserError(f"{path}: no such file (the dpo.jsonl written by `spr pairs`)")
    rows = []
    try:
        lines = list(enumerate(iter_jsonl(path), start=1))
    except JsonlError as e:
        raise UserError(str(e)) from None
    for lineno, row in lines:
        where = f"{path}:{lineno} (id {row.get('id', '?')!r})"
        missing = [k for k in REQUIRED if k not in row or row[k] is None]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)} (need {', '.join(REQUIRED)})")
        images = row["images"]
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
            raise UserError(f"{where}: 'images' must be a list with one image path, got {row['images']!r}")
        _check_messages(row["prompt"], "user", where, "prompt")
        _check_messages(row["chosen"], "assistant", where, "chosen")
        _check_messages(row["rejected"], "assistant", where, "rejected")
        image = images[0]
        if not Path(image).is_absolute() and not Path(image).exists() and (path.parent / image).exists():
            image = str(path.parent / image)
        crop = row.get("crop_box")
        if crop is not None and (not isinstance(crop, list) or len(crop) != 4):
            raise UserError(f"{where}: 'crop_box' must be null or [x1, y1, x2, y2], got {crop!r}")
        try:
            with Image.open(image) as im:
                size = im.size
        except Exception as e:  # missing, truncated, not an image
            msg = f"{where}: image {image} cannot be read ({type(e).__name__}: {e})"
            if not skip_bad:
                raise UserError(msg + "; fix it or pass --skip-bad") from None
            problems.append(msg + "; skipped")
            continue
        if crop is not None:
            x1, y1, x2, y2 = (float(v) for v in crop)
            if not (0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]):
                raise UserError(
                    f"{where}: crop_box {crop} is not inside the {size[0]}x{size[1]} image {image}"
                )
        rows.append(
            {
                "id": str(row.get("id", lineno)),
                "image": image,
                "crop_box": json.dumps(crop) if crop is not None else "",
                "prompt": json.dumps(row["prompt"]),
                "chosen": json.dumps(row["chosen"]),
                "rejected": json.dumps(row["rejected"]),
            }
        )
    if not rows:
        raise UserError(f"{path}: no usable pairs")
    return rows


def _load_view(image_path: str, crop_json: str):
    from PIL import Image

    with Image.open(image_path) as im:
        image = im.convert("RGB")
    if crop_json:
        image = image.crop(tuple(int(round(float(v))) for v in json.loads(crop_json)))
    return image


def _materialize(batch: dict) -> dict:
    """datasets transform: the stored strings -> the conversational example TRL expects, with the image."""
    return {
        "id": batch["id"],
        "images": [[_load_view(p, c)] for p, c in zip(batch["image"], batch["crop_box"])],
        "prompt": [json.loads(x) for x in batch["prompt"]],
        "chosen": [json.loads(x) for x in batch["chosen"]],
        "rejected": [json.loads(x) for x in batch["rejected"]],
    }


def check_placeholders(
    rows: list[dict], processor, skip_bad: bool = False, problems: list[str] | None = None
):
    """Rows whose answers contain the processor's image / video placeholder token (a sampled answer can): the
    collator would expand it and the model's image features would no longer match its image tokens."""
    tokens = [
        t for t in (getattr(processor, "image_token", None), getattr(processor, "video_token", None)) if t
    ]
    if not tokens:
        return rows
    kept = []
    for row in rows:
        found = [t for t in tokens if t in row["chosen"] or t in row["rejected"]]
        if not found:
            kept.append(row)
            continue
        msg = f"pair {row['id']!r}: the answer contains the placeholder token {found[0]!r}"
        if not skip_bad:
            raise UserError(msg + "; remove it from the pair or pass --skip-bad")
        if problems is not None:
            problems.append(msg + "; skipped")
    if not kept:
        raise UserError("no usable pairs: every answer contains an image placeholder token")
    return kept


def build_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of the pairs whose rows come out as TRL's vision preference examples
    (``images``, ``prompt``, ``chosen``, ``rejected``); images load on access."""
    from datasets import Dataset

    return Dataset.from_list(rows).with_transform(_materialize)


# ---------------------------------------------------------------------------------------------------------------
# Model parts


def find_parts(model) -> tuple[str, list[str]]:
    """The module name of the language model and the names of the vision parts (encoder, projector)."""
    names = dict(model.named_modules())
    language = None
    vision = []
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if language is None and leaf in LANGUAGE_PARTS:
            language = name
        if leaf in VISION_PARTS and not any(name.startswith(v + ".") for v in vision):
            vision.append(name)
    if language is None:
        raise UserError(
            f"{type(model).__name__}: cannot find the language model (a submodule named {' or '.join(LANGUAGE_PARTS)})"
        )
    return language, vision


def lora_target_regex(model, targets: list[str], train_vision: bool) -> str:
    """A PEFT ``target_modules`` regex: the ``targets`` linears inside the language model, plus every linear of
    the vision parts when ``train_vision``. Checked to match at least one module."""
    import torch

    language, vision = find_parts(model)
    patterns = [rf"{re.escape(language)}\..*\.(?:{'|'.join(map(re.escape, targets))})"]
    if train_vision:
        for v in vision:
            leaves = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if n.startswith(v + ".") and isinstance(m, torch.nn.Linear)
                }
            )
            if leaves:
                patterns.append(rf"{re.escape(v)}\..*\.(?:{'|'.join(map(re.escape, leaves))})")
    regex = "^(?:" + "|".join(patterns) + ")$"
    matched = [
        n for n, m in model.named_modules() if re.fullmatch(regex, n) and isinstance(m, torch.nn.Linear)
    ]
    if not matched:
        raise UserError(
            f"no linear layer of the language model ({language}) is named one of {targets}; "
            "set --lora-target-modules to names that exist"
        )
    return regex


def freeze_vision(model) -> int:
    """Freeze the vision encoder and projector; returns the number of parameters frozen."""
    _, vision = find_parts(model)
    n = 0
    for name, module in model.named_modules():
        if name in vision:
            for p in module.parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
                    n += p.numel()
    return n


# ---------------------------------------------------------------------------------------------------------------
# Collator that never truncates image tokens


def safe_collator(processor, max_length: int | None):
    """TRL's vision preference collator, truncating to ``max_length`` but never inside the prompt: the prompt
    holds the image tokens, and cutting one makes the model's image features and tokens disagree."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class SafeVisionPreferenceCollator(DataCollatorForVisionPreference):
        warned = False

        def torch_call(self, examples):
            keep = self.max_length
            self.max_length = None
            try:
                out = super().torch_call(examples)
            finally:
                self.max_length = keep
            if keep is None:
                return out
            cm = out["completion_mask"]
            # after flush-left, the prompt of each row ends where its completion starts
            prompt_len = int((cm.cumsum(1) == 0).sum(1).max())
            limit = max(keep, prompt_len + 1)
            if limit > keep and not SafeVisionPreferenceCollator.warned:
                log.warning(
                    "max_length %d is shorter than a prompt with its image tokens (%d tokens): kept the prompt whole",
                    keep,
                    prompt_len,
                )
                SafeVisionPreferenceCollator.warned = True
            seq = out["input_ids"].shape[1]
            for k in (
                "input_ids",
                "attention_mask",
                "completion_mask",
                "token_type_ids",
                "mm_token_type_ids",
            ):
                if k in out and out[k].dim() == 2 and out[k].shape[1] == seq:
                    out[k] = out[k][:, :limit]
            return out

    return SafeVisionPreferenceCollator(processor=processor, max_length=max_length)


# ---------------------------------------------------------------------------------------------------------------
# Trainer


def device_settings(config: TrainConfig) -> dict:
    """DPOConfig settings that are safe on the device: CPU -> fp32, no gradient checkpointing; GPU -> bf16."""
    import torch

    use_gpu = config.device != "cpu" and torch.cuda.is_available()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked, but torch sees no GPU")
    if not use_gpu:
        return {"use_cpu": True, "bf16": False, "fp16": False, "activation_checkpointing": False}
    bf16 = torch.cuda.is_bf16_supported()
    gc = True if config.gradient_checkpointing is None else config.gradient_checkpointing
    return {"use_cpu": False, "bf16": bf16, "fp16": False, "activation_checkpointing": gc}


def dpo_config(config: TrainConfig):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=config.out,
        beta=config.beta,
        loss_type=list(config.loss_type),
        loss_weights=config.loss_weights,
        label_smoothing=config.label_smoothing,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        report_to=config.report_to,
        remove_unused_columns=False,  # the dataset transform needs its columns to load images
        dataloader_num_workers=config.dataloader_num_workers,
        precompute_ref_log_probs=False,  # TRL refuses it for vision data
        **device_settings(config),
    )


def build_trainer(config: TrainConfig, adapter=None, rows: list[dict] | None = None, callbacks=()):
    """The DPOTrainer for ``config`` (the model loads from ``config.model`` unless an adapter is given);
    ``callbacks`` are extra ``transformers.TrainerCallback``s."""
    from trl import DPOTrainer

    from spr import models

    problems: list[str] = []
    rows = rows if rows is not None else read_pairs(config.data, skip_bad=config.skip_bad, problems=problems)
    # The training arguments exist before the model loads: under DeepSpeed ZeRO-3 this makes from_pretrained
    # partition the weights as they load instead of materialising the whole model in every process.
    args = dpo_config(config)
    loaded_here = adapter is None
    if loaded_here:
        adapter = models.load(config.model, family=config.family, device="cpu")
    model, processor = adapter.model, adapter.processor
    rows = check_placeholders(rows, processor, config.skip_bad, problems)
    dataset = build_dataset(rows)
    for msg in problems:
        log.warning(msg)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"

    peft_config, ref_model = None, None
    if config.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_regex(model, config.lora_target_modules, config.train_vision),
            task_type="CAUSAL_LM",
        )
    else:
        import copy

        if not config.train_vision:
            freeze_vision(model)
        # the reference: the same weights again, frozen (loaded from disk when possible, which also works
        # under ZeRO-3 where a parameter-sharded model cannot be deep-copied)
        if loaded_here:
            ref_model = models.load(config.model, family=config.family, device="cpu").model.eval()
        else:
            ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)

    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        data_collator=safe_collator(processor, config.max_length),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[_JsonlLogCallback(Path(config.out) / "train_log.jsonl"), *callbacks],
    )
    return trainer


class _JsonlLogCallback:
    """Appends every log (loss, rewards/*, learning rate) as one JSON line; written by the main process only."""

    def __new__(cls, path: Path):
        from transformers import TrainerCallback

        class JsonlLog(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        return JsonlLog()


def last_checkpoint(out: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(out)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def _last_rewards(history: list[dict]) -> dict:
    for entry in reversed(history):
        if "rewards/margins" in entry:
            return {k: v for k, v in entry.items() if k.startswith("rewards/")}
    return {}


def train(config: TrainConfig, adapter=None, callbacks=()) -> dict:
    """Train, save the final adapter (or model) with processor, tokenizer and chat template; returns a summary."""
    out = Path(config.out)
    resume_from = last_checkpoint(out) if config.resume else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    trainer = build_trainer(config, adapter, callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(str(out))  # adapter or full model, plus the processing class (processor)
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))  # processor, tokenizer, chat template
        summary = {
            "train_loss": result.training_loss,
            "global_step": result.global_step,
            "world_size": trainer.args.world_size,
            **_last_rewards(trainer.state.log_history),
        }
        meta = {
            "config": dataclasses.asdict(config),
            "base_model": str(Path(config.model).resolve()),
            **summary,
        }
        (out / TRAIN_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return summary
    return {"train_loss": result.training_loss, "global_step": result.global_step}


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (``--lora-r``, ``--no-resume`` ...), help from the field metadata."""
    kinds = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (
            None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        )
        kind = str(f.type)
        if kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif kind.startswith("list[str]"):
            parser.add_argument(
                flag, nargs="+", default=default, help=f"{help_text} (default: {' '.join(default)})"
            )
        elif kind.startswith("list[float]"):
            parser.add_argument(flag, nargs="+", type=float, default=default, help=help_text)
        elif required:
            parser.add_argument(flag, required=True, type=kinds[kind], help=help_text)
        else:
            parser.add_argument(
                flag, type=kinds[kind], default=default, help=f"{help_text} (default: {default})"
            )


def run(args) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    summary = train(TrainConfig(**values))
    rows = [f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}" for k, v in summary.items()]
    print("trained:\n" + "\n".join(rows) + f"\noutput: {args.out}")
    return 0
