"""`spr merge`: fold a LoRA adapter into its base model and save a complete model directory.

The output holds the merged weights (safetensors), config, ``generation_config.json`` AND every processor file:
tokenizer, chat template, preprocessor settings, video preprocessor config, so that plain transformers
(``AutoModelForImageTextToText`` / ``AutoProcessor``) and ``spr.models.load`` on it give a model that runs like
the base with the adapter on (merged VLM checkpoints that lose these files are a common complaint). The
processor files are the base's; the image processor settings `spr train` saved beside the adapter replace the
base's (they carry the pixel budget the adapter was trained with). The result is loaded once more before the command returns.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from spr.config import opt, required
from spr.errors import UserError
from spr.options import Dtype, ModelFamily

HELP = "Merge a LoRA adapter into its base model: a complete model directory with its processor."

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
IMAGE_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
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
    dtype: str | None = "float32",
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Merge ``adapter_dir`` into ``base`` and save the complete model to ``out``; returns ``out``. ``out`` is
    guarded like every stage output (:class:`spr.data.guard.StageOutput`): one writer at a time, and a directory
    that holds another model (or a merge of other weights) is replaced only with ``overwrite``."""
    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").exists():
        if (adapter_dir / "config.json").exists():
            raise UserError(
                f"{adapter_dir}: a full model (no adapter_config.json): nothing to merge, load it as is"
            )
        raise UserError(f"{adapter_dir}: no adapter_config.json (expected the output of `spr train`)")
    from spr.models.loading import check_weights

    base = base or base_of(adapter_dir)
    if base is None:
        raise UserError(f"{adapter_dir}: the base model is not recorded here; give it with --base DIR")
    check_weights(adapter_dir, safe=("adapter_model.safetensors",), unsafe=("adapter_model.bin",))
    dtype = (
        "float32" if dtype in (None, "auto") else dtype
    )  # the Dtype group's default: weights saved in fp32
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.resolve() in (Path(base).resolve(), adapter_dir.resolve()):
        raise UserError(f"--out {out} would overwrite an input; choose a new directory")

    from spr.data.guard import StageOutput, fingerprint

    settings = {"base": fingerprint(base), "family": family, "dtype": dtype}
    weights = {"adapter": adapter_dir / "adapter_model.safetensors"}
    with StageOutput(out, "merge", settings, overwrite, directory=True, inputs=weights):
        _merge_into(adapter_dir, out, Path(base), family, dtype, verify)
    return out


def _merge_into(adapter_dir: Path, out: Path, base: Path, family: str | None, dtype: str, verify: bool):
    import torch
    from peft import PeftModel

    from spr import models

    loaded = models.load(str(base), family=family, device="cpu")
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)

    # The base's files; of the adapter's, only the image processor's settings (the pixel budget it trained
    # with): a tokenizer saved after loading can drop named special tokens the processor needs (InternVL).
    for source, names in ((Path(base), PROCESSOR_FILES), (adapter_dir, IMAGE_PROCESSOR_FILES)):
        for name in names:
            if (source / name).exists():
                shutil.copy2(source / name, out / name)
    if not _has_processor(out):
        loaded.processor.save_pretrained(str(out))
    if (Path(base) / "generation_config.json").exists() and not (out / "generation_config.json").exists():
        shutil.copy2(Path(base) / "generation_config.json", out / "generation_config.json")

    if verify:
        try:
            models.load(str(out), family=family, device="cpu")
        except UserError as e:
            raise UserError(f"the merged model in {out} does not load back: {e}") from None


@dataclass
class MergeConfig(ModelFamily, Dtype):
    """`spr merge`: an adapter folded into its base, saved as a complete model directory."""

    adapter: str = opt(required, "LoRA adapter directory (output of `spr train`)")
    out: str = opt(required, "directory for the merged model")
    base: str | None = opt(None, "base model directory", default_text="the one recorded by `spr train`")
    overwrite: bool = opt(False, "replace what --out holds (another model, another merge)", output=False)


Config = MergeConfig


def run(config: MergeConfig) -> int:
    out = merge(
        config.adapter, config.out, base=config.base, family=config.family, dtype=config.dtype,
        overwrite=config.overwrite,
    )  # fmt: skip
    print(f"merged model with its processor: {out}")
    return 0
