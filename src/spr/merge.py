"""`spr merge`: fold a LoRA adapter into its base model and save a complete model directory.

The output holds the merged weights (safetensors), config, generation config AND the processor, tokenizer and
chat template, so that ``from_pretrained`` / ``spr.models.load`` on it gives a model that runs like the base
with the adapter on (merged VLM checkpoints that lose their processor files are a common complaint).
The processor files come from the adapter directory (``spr train`` saves them there), else from the base.
The result is loaded once more before the command returns, to prove it is complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from spr.errors import UserError

HELP = "merge a LoRA adapter into its base model: a complete model directory with its processor"

PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)
DTYPES = ("float32", "bfloat16", "float16")


def base_of(adapter_dir: Path) -> str | None:
    """The base model recorded by `spr train` (spr_train.json) or by PEFT (adapter_config.json)."""
    for name, key in (("spr_train.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        f = adapter_dir / name
        if f.exists():
            try:
                value = json.loads(f.read_text(encoding="utf-8")).get(key)
            except json.JSONDecodeError:
                continue
            if value and Path(value).is_dir():
                return value
    return None


def _has_processor(path: Path) -> bool:
    return (path / "tokenizer_config.json").exists() and any(
        (path / f).exists() for f in ("processor_config.json", "preprocessor_config.json")
    )


def merge(
    adapter_dir: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    family: str | None = None,
    dtype: str = "float32",
    verify: bool = True,
) -> Path:
    """Merge ``adapter_dir`` into ``base`` and save the complete model to ``out``; returns ``out``."""
    import torch
    from peft import PeftModel

    from spr import models

    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").exists():
        if (adapter_dir / "config.json").exists():
            raise UserError(
                f"{adapter_dir}: a full model (no adapter_config.json): nothing to merge, load it as is"
            )
        raise UserError(f"{adapter_dir}: no adapter_config.json (expected the output of `spr train`)")
    base = base or base_of(adapter_dir)
    if base is None:
        raise UserError(f"{adapter_dir}: the base model is not recorded here; give it with --base DIR")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.resolve() in (Path(base).resolve(), adapter_dir.resolve()):
        raise UserError(f"--out {out} would overwrite an input; choose a new directory")

    loaded = models.load(str(base), family=family, device="cpu")
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)

    if _has_processor(adapter_dir):
        for name in PROCESSOR_FILES:
            if (adapter_dir / name).exists():
                shutil.copy2(adapter_dir / name, out / name)
    else:
        loaded.processor.save_pretrained(str(out))

    if verify:
        try:
            models.load(str(out), family=family, device="cpu")
        except UserError as e:
            raise UserError(f"the merged model in {out} does not load back: {e}") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory (output of `spr train`)")
    parser.add_argument("--out", required=True, help="directory for the merged model")
    parser.add_argument("--base", help="base model directory (default: the one recorded by `spr train`)")
    parser.add_argument("--family", help="model family when config.model_type does not tell")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights")


def run(args) -> int:
    out = merge(args.adapter, args.out, base=args.base, family=args.family, dtype=args.dtype)
    print(f"merged model with its processor: {out}")
    return 0
