"""Load a model and its processor from a local directory: local files only, safetensors only, remote code only
when asked. Problems with the directory are reported as :class:`UserError` naming the file that is wrong."""

from __future__ import annotations

import json
from pathlib import Path

from ..clock import time_limit
from ..errors import UserError
from .adapter import ModelAdapter
from .families import FAMILIES, available_families, family_for_model_type, get_family
from .processors import load_processor as _load_family_processor

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
UNSAFE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.exists():
        raise UserError(f"{path}: no config.json (is this a saved model directory?)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: cannot read: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file}: expected a JSON object")
    return config


def resolve_family(config: dict, family: str | None, path: Path):
    if family:
        return get_family(family)  # an unknown name is a UserError listing the known ones
    model_type = config.get("model_type")
    spec = family_for_model_type(model_type) if model_type else None
    if spec is None:
        known = ", ".join(f"{name} (model_type {'/'.join(s.model_types)})" for name, s in FAMILIES.items())
        raise UserError(
            f"{path / 'config.json'}: model_type {model_type!r} is not a supported family. Supported: {known}. "
            "If the model is one of these under another name, pass its family explicitly (--family)."
        )
    return spec


def check_weights(path: Path, safe=WEIGHT_FILES, unsafe=UNSAFE_WEIGHT_FILES) -> None:
    """``path`` holds safetensors weights (one of ``safe``) that open (:func:`check_safetensors`); pickled
    weights (``unsafe``) are refused, since loading a pickle runs whatever code it holds."""
    path = Path(path)
    present = [path / f for f in safe if (path / f).exists()]
    if present:
        for f in present:
            check_safetensors(f)
        return
    found = [f for f in unsafe if (path / f).exists()]
    if found:
        raise UserError(
            f"{path}: weights only as {found[0]} (pickle); SPR loads safetensors only. Convert them, e.g. "
            "model.save_pretrained(DIR, safe_serialization=True) in a trusted environment."
        )
    raise UserError(f"{path}: no weights (expected {' or '.join(safe)})")


def check_safetensors(file: Path) -> None:
    """A safetensors file whose header reads, or an index whose every shard is a safetensors file inside the
    model directory that does: a corrupt, truncated, pickled or outside file is one line naming it."""
    if file.name.endswith(".index.json"):
        try:
            shards = set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise UserError(f"{file}: not a safetensors index ({type(e).__name__}: {e})") from None
        for shard in sorted(map(str, shards)):
            target = (file.parent / shard).resolve()
            if not shard.endswith(".safetensors") or target.parent != file.parent.resolve():
                raise UserError(
                    f"{file}: names the shard {shard!r}; a shard must be a .safetensors file in {file.parent}"
                )
            if not target.is_file():
                raise UserError(f"{file}: names the shard {shard!r}, which is not there")
            check_safetensors(target)
        return
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError ...: whatever the file is, it is not usable weights
        raise UserError(f"{file}: not a readable safetensors file ({e})") from None


def from_pretrained(cls, path: Path, what: str, **kwargs):
    """``cls.from_pretrained`` on a local directory whose weights :func:`check_weights` accepted: local files,
    safetensors only; any failure (a config of another architecture, shapes that do not fit) is one line."""
    check_weights(path)
    try:
        model, info = cls.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except Exception as e:
        raise UserError(f"{path}: cannot load the {what}: {type(e).__name__}: {e}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # transformers would start these from random numbers, with a warning only
        raise UserError(
            f"{path}: the weights do not fit the {what} config.json describes: {len(missing)} tensors missing "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); is config.json another model's?"
        )
    return model


# One short message takes milliseconds to render; a template this slow would take hours over a run's prompts.
TEMPLATE_SECONDS = 10.0


def resolve_dtype(dtype, device: str):
    import torch

    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        try:
            return getattr(torch, dtype)
        except AttributeError:
            raise UserError(f"unknown dtype {dtype!r} (e.g. float32, bfloat16, float16, auto)") from None
    return dtype


def load_processor(model_dir: str | Path, family: str | None = None, trust_remote_code: bool = False):
    """The full processor (image processor + tokenizer + chat template) of the model in ``model_dir``.

    Use this rather than ``AutoProcessor.from_pretrained``, which without torchvision fails on the Qwen2-VL,
    Qwen2.5-VL and InternVL families (their video processors need it) or returns only the tokenizer."""
    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such model directory")
    spec = resolve_family(read_config(path), family, path)
    return _load_family_processor(path, spec, trust_remote_code=trust_remote_code)


def load(
    model_dir: str | Path,
    family: str | None = None,
    device: str = "cpu",
    dtype=None,
    trust_remote_code: bool = False,
    fmt: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> ModelAdapter:
    """Load the model in ``model_dir`` and wrap it in the :class:`ModelAdapter` of its family.

    ``family`` overrides ``config.model_type`` (one of :func:`available_families`); ``fmt`` overrides the
    family's box format; ``dtype`` defaults to float32 on CPU and the checkpoint's own dtype elsewhere;
    ``min_pixels`` / ``max_pixels`` change the image processor's pixel budget (Qwen2-VL style processors)."""
    import transformers

    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such model directory")
    config = read_config(path)
    spec = resolve_family(config, family, path)
    check_weights(path)  # before the processor: the weights are the likelier problem, and cheap to check
    if fmt is not None:
        from .. import formats

        if fmt not in formats.available():
            raise UserError(f"unknown box format {fmt!r}; available: {', '.join(formats.available())}")
    processor = _load_family_processor(path, spec, trust_remote_code=trust_remote_code)
    model = from_pretrained(
        getattr(transformers, spec.model_class), path, spec.model_class,
        trust_remote_code=trust_remote_code,
        dtype=resolve_dtype(dtype, device),
        device_map=None if device == "cpu" else device,  # straight onto the GPU, no copy in host memory
    )  # fmt: skip
    model.to(device).eval()
    adapter = ModelAdapter(model, processor, spec, fmt=fmt, device=device)
    try:  # once here: a template that trips jinja's sandbox, its range limit or the clock fails now, not mid-run
        with time_limit(TEMPLATE_SECONDS, f"took more than {TEMPLATE_SECONDS:g} s for one short message"):
            adapter.chat_text("a check of the chat template")
    except Exception as e:
        raise UserError(f"{path}: the chat template does not render ({type(e).__name__}: {e})") from None
    if min_pixels or max_pixels:
        try:
            adapter.set_pixel_budget(min_pixels, max_pixels)
        except ValueError as e:
            raise UserError(f"{path}: --min-pixels / --max-pixels: {e}") from None
    return adapter


__all__ = ["available_families", "load", "load_processor"]
