"""Precision and device of a training run, decided once and shown in the run's summary.

``dtype="auto"``: on a GPU with bfloat16, LoRA loads the weights in bf16 (half the memory of fp32; the adapter
itself trains in fp32) and full fine-tuning keeps fp32 master weights with bf16 mixed precision; on a GPU without
bf16, fp32; on CPU, fp32. ``float16`` is refused, as torchtune does: fp16 without loss scaling overflows, and
with it DPO's log-ratio margins lose precision.

Gradient checkpointing is on by default on GPUs. With LoRA under DeepSpeed ZeRO-3 it must be the reentrant
kind (TRL forces ``use_reentrant=True`` there, trl#2514). TRL 1.16 writes that into the deprecated
``gradient_checkpointing_kwargs``, which transformers 5 no longer reads once the arguments exist, so the setting
is passed here under both names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UserError

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class Precision:
    load_dtype: str  # dtype the weights load in
    bf16: bool  # bf16 mixed precision (autocast)
    use_cpu: bool
    gradient_checkpointing: bool
    device: str  # where the weights load: cpu, cuda:N
    reentrant: bool = False  # reentrant checkpointing (LoRA under ZeRO-3)

    def describe(self) -> str:
        mixed = "bf16 mixed precision" if self.bf16 else "no mixed precision"
        gc = ("on (reentrant)" if self.reentrant else "on") if self.gradient_checkpointing else "off"
        return f"weights {self.load_dtype} on {self.device}, {mixed}, gradient checkpointing {gc}"


def zero_stage() -> int:
    """The DeepSpeed ZeRO stage accelerate launched with (0 without DeepSpeed)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in ("1", "true"):
        return 0
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0") or 0)


def sharded_launch() -> bool:
    """True under DeepSpeed or FSDP (accelerate sets these), where weights must load on CPU to be sharded."""
    return any(
        os.environ.get(k, "").lower() in ("1", "true")
        for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
    )


def decide(dtype: str, method: str, device: str, gradient_checkpointing: bool | None) -> Precision:
    import torch

    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"training device must be auto, cpu or cuda, got {device!r}")
    device = "cuda" if device.startswith("cuda") else device  # the launcher gives each process its GPU
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "float16":
        raise UserError(
            "float16 training is not supported: fp16 overflows without loss scaling and DPO's log-ratio margins "
            "lose precision with it; use --dtype bfloat16 (GPUs since Ampere) or float32"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked, but torch sees no GPU")
    gpu = device != "cpu" and torch.cuda.is_available()
    bf16_ok = gpu and torch.cuda.is_bf16_supported()
    if dtype == "bfloat16" and gpu and not bf16_ok:
        raise UserError("--dtype bfloat16 asked, but this GPU has no bfloat16 support; use float32")
    bf16 = dtype == "bfloat16" or (dtype == "auto" and bf16_ok)
    # LoRA trains an fp32 adapter over frozen weights, which may be bf16; full fine-tuning needs fp32 masters.
    load = "bfloat16" if bf16 and method == "lora" else "float32"
    gc = gpu if gradient_checkpointing is None else gradient_checkpointing
    if gpu and not sharded_launch():
        where = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    else:
        where = "cpu"
    return Precision(load, bf16, not gpu, gc, where, reentrant=gc and method == "lora" and zero_stage() == 3)


def trainer_arguments(p: Precision) -> dict:
    """The TrainingArguments fields for ``p`` (both names of checkpointing: TRL's default would win else)."""
    kwargs = {"use_reentrant": True} if p.reentrant else None
    return {
        "use_cpu": p.use_cpu,
        "bf16": p.bf16,
        "fp16": False,
        "activation_checkpointing": p.gradient_checkpointing,
        "gradient_checkpointing": p.gradient_checkpointing,
        "activation_checkpointing_kwargs": kwargs,
        "gradient_checkpointing_kwargs": kwargs,
    }


def ignore_checkpointing_deprecation() -> None:
    """PEFT and TRL's trainers ask transformers' deprecated ``is_gradient_checkpointing`` as they build and at
    every step: one FutureWarning per step otherwise, which buries the progress bar."""
    import warnings

    warnings.filterwarnings(
        "ignore", message="`(is_)?gradient_checkpointing.*` is deprecated", category=FutureWarning
    )
