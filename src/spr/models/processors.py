"""Loading processors, with an image-only path for families whose transformers processor wants a video processor.

transformers 5 builds the Qwen2-VL, Qwen2.5-VL and InternVL video processors on torchvision. Without torchvision,
``AutoProcessor.from_pretrained`` either raises ("Can't load video processor") or, on some directories, silently
returns only the tokenizer; with torchvision, the full class refuses a directory saved without a video processor
(every tiny model, the shipped shapes-world base: "Can't load video processor", seen on a GPU machine) and cannot
be built without one. SPR reads images only, so these families always use :func:`image_only`, a processor class
without that attribute: it builds, runs, saves and reloads like the original (the saved files name the original
class, so the directory stays a normal one).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from ..errors import UserError
from .families import FamilySpec


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


@cache
def image_only(processor_cls: type) -> type:
    """``processor_cls`` without its video processor (the image processor and tokenizer only)."""

    class ImageOnly(processor_cls):
        @classmethod
        def get_attributes(cls):
            return [a for a in super().get_attributes() if a != "video_processor"]

    # Saved configs record the class name; keep the original so the directory stays a normal one.
    ImageOnly.__name__ = processor_cls.__name__
    ImageOnly.__qualname__ = processor_cls.__name__
    ImageOnly.__module__ = __name__
    ImageOnly.spr_image_only = True
    # Reachable by module and name, so that processors pickle (datasets.map, multiprocessing).
    globals()[processor_cls.__name__] = ImageOnly
    return ImageOnly


def __getattr__(name: str):
    # A fresh process unpickling an image-only processor finds its class here.
    from .families import FAMILIES

    if any(s.has_video_processor and s.processor_class == name for s in FAMILIES.values()):
        import transformers

        return image_only(getattr(transformers, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def processor_class(spec: FamilySpec) -> type:
    import transformers

    cls = getattr(transformers, spec.processor_class)
    return image_only(cls) if spec.has_video_processor else cls


def is_full_processor(processor) -> bool:
    """True when ``processor`` is a multimodal processor (not a bare tokenizer) with an image processor."""
    from transformers.processing_utils import ProcessorMixin

    return isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_processor_files(path: Path) -> None:
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer files (expected tokenizer.json or tokenizer_config.json)")
    if not any((path / f).exists() for f in PROCESSOR_FILES):
        raise UserError(
            f"{path}: no image processor configuration (expected {' or '.join(PROCESSOR_FILES)}); "
            "save the processor with processor.save_pretrained(DIR)"
        )


def load_processor(path: str | Path, spec: FamilySpec, trust_remote_code: bool = False):
    """The family's full processor from a local directory (image-only for families with a video processor)."""
    path = Path(path)
    check_processor_files(path)
    cls = processor_class(spec)
    try:
        processor = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # a config of another architecture fails in any way: one line naming the directory
        raise UserError(f"{path}: cannot load the {spec.processor_class}: {type(e).__name__}: {e}") from None
    if not is_full_processor(processor):
        raise UserError(
            f"{path}: loaded a {type(processor).__name__}, not a {spec.processor_class} with an image processor"
        )
    if processor.chat_template is None:
        raise UserError(
            f"{path}: the processor has no chat template (expected chat_template.jinja or chat_template.json)"
        )
    for name in GEOMETRY_FIELDS:  # the processor divides by them when it resizes an image
        value = getattr(processor.image_processor, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and not value > 0:
            raise UserError(f"{path}: the image processor's {name} is {value}; it must be a positive number")
    return processor


GEOMETRY_FIELDS = ("patch_size", "merge_size", "temporal_patch_size")
