"""Which parts of a VLM train: LoRA on the language model's linear layers, the vision encoder and projector
frozen unless asked. The module names come from the family's :class:`~spr.models.FamilySpec`."""

from __future__ import annotations

import re

from ..errors import UserError


def _present(model, names) -> list[str]:
    modules = dict(model.named_modules())
    return [n for n in names if n in modules]


def language_module(model, spec) -> str:
    if not _present(model, [spec.language_module]):
        raise UserError(
            f"{type(model).__name__}: no module {spec.language_module!r} (the {spec.name} family's language "
            "model); is --family right?"
        )
    return spec.language_module


def lora_config(config, model, spec):
    """The PEFT ``LoraConfig`` of a training config's ``lora_*`` fields (``spr train`` and ``spr grpo``): the
    family's LoRA targets unless ``lora_target_modules`` names others, inside the language model only unless
    ``train_vision``."""
    from peft import LoraConfig

    targets = config.lora_target_modules or list(spec.lora_targets)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(model, spec, targets, config.train_vision),
        task_type="CAUSAL_LM",
    )


def lora_target_regex(model, spec, targets, train_vision: bool) -> str:
    """A PEFT ``target_modules`` regex: the ``targets`` linears inside the language model, plus every linear of
    the vision parts when ``train_vision``. Checked to match at least one module."""
    import torch

    language = language_module(model, spec)
    patterns = [rf"{re.escape(language)}\..*\.(?:{'|'.join(map(re.escape, targets))})"]
    if train_vision:  # every linear layer of the vision parts, by its full name (leaf names such as "0" or
        # "proj" also name other modules there: a block, an MLP container)
        for v in _present(model, spec.vision_modules):
            patterns += [
                re.escape(n)
                for n, m in model.named_modules()
                if n.startswith(v + ".") and isinstance(m, torch.nn.Linear)
            ]
    regex = "^(?:" + "|".join(patterns) + ")$"
    matched = [
        n for n, m in model.named_modules() if re.fullmatch(regex, n) and isinstance(m, torch.nn.Linear)
    ]
    if not matched:
        raise UserError(
            f"no linear layer of the language model ({language}) is named one of {list(targets)}; "
            "set --lora-target-modules to names that exist"
        )
    return regex


def freeze_vision(model, spec) -> int:
    """Freeze the vision encoder and projector; returns the number of parameters frozen."""
    n = 0
    modules = dict(model.named_modules())
    for name in _present(model, spec.vision_modules):
        for p in modules[name].parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                n += p.numel()
    return n
