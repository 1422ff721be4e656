"""Tiny random models of the real transformers classes, with a locally trained tokenizer: offline smoke tests.

``build_tiny_model(family, out_dir)`` saves a normal model directory (config.json, model.safetensors,
generation_config.json, tokenizer files, processor config, chat_template.jinja) that :func:`spr.models.load`
(or plain transformers) loads. Sizes: text hidden 64, 2 layers, 4 heads; a 2-layer vision tower; a few image
tokens per image. The weights are random: the outputs are gibberish, the code paths are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import opt, required

if TYPE_CHECKING:  # families.py imports this module for its specs' tiny builders
    from .families import FamilySpec

TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)


# The vision towers of the LLaVA, LLaVA-OneVision, Idefics3 and InternVL tiny models.
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def make_tokenizer(spec: FamilySpec):
    from transformers import PreTrainedTokenizerFast

    from .tokenizer import train_tokenizer

    tok = train_tokenizer(list(spec.special_tokens))
    kwargs = dict(eos_token=spec.eos_token, pad_token=spec.pad_token)
    if spec.bos_token:
        kwargs["bos_token"] = spec.bos_token
    if spec.extra_tokenizer_tokens:
        kwargs["extra_special_tokens"] = dict(spec.extra_tokenizer_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _ids(tokenizer, spec: FamilySpec) -> dict:
    ids = dict(eos_token_id=tokenizer.convert_tokens_to_ids(spec.eos_token))
    ids["pad_token_id"] = tokenizer.convert_tokens_to_ids(spec.pad_token)
    # No bos token in the family (Qwen): say so, or configs fall back to the real vocabulary's id.
    ids["bos_token_id"] = tokenizer.convert_tokens_to_ids(spec.bos_token) if spec.bos_token else None
    return ids


token_ids = _ids  # public name: the special-token ids a config and generation config need


def qwen_config(
    name: str,
    tokenizer,
    spec: FamilySpec,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
):
    """Config of a Qwen2-VL / Qwen2.5-VL of the tiny size, or of another size given by ``text`` and ``vision``
    overrides, with the special-token ids of ``tokenizer``."""
    import transformers

    tid = tokenizer.convert_tokens_to_ids
    text = dict(
        TEXT,
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        **_ids(tokenizer, spec),
    )
    text.update(text_overrides or {})
    if name == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2)
        cls = transformers.Qwen2VLConfig
    else:
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=TEXT["hidden_size"],
            window_size=56,
            fullatt_block_indexes=[1],
        )
        cls = transformers.Qwen2_5_VLConfig
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, **(vision_overrides or {}))
    return cls(
        text_config=text,
        vision_config=vision,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
    )


def qwen(spec, tokenizer):
    """Qwen2-VL and Qwen2.5-VL (the spec's name picks the config class)."""
    from transformers import Qwen2VLImageProcessorPil

    from .processors import processor_class

    # 28 px per image token (patch 14, merge 2): between 4 and 16 image tokens per image.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = processor_class(spec)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=spec.chat_template
    )
    return qwen_config(spec.name, tokenizer, spec), processor


def llava(spec, tokenizer):
    import transformers

    image_size, patch = 28, 7
    config = transformers.LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            **VISION,
            image_size=image_size,
            patch_size=patch,
            projection_dim=32,
        ),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tokenizer), **_ids(tokenizer, spec)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    # Whole image squashed to a square (no centre crop), so normalized boxes cover the whole image.
    image_processor = transformers.CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_center_crop=False
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=spec.chat_template,
    )
    return config, processor


def llava_onevision(spec, tokenizer):
    import transformers

    from .processors import processor_class

    image_size, patch = 28, 7
    config = transformers.LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            **VISION,
            image_size=image_size,
            patch_size=patch,
        ),
        text_config=dict(TEXT, model_type="qwen2", vocab_size=len(tokenizer), **_ids(tokenizer, spec)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]],
    )
    image_processor = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]],
    )
    processor = processor_class(spec)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=spec.chat_template,
    )
    return config, processor


def idefics3(spec, tokenizer):
    import transformers

    image_size, patch, scale = 28, 7, 2
    config = transformers.Idefics3Config(
        vision_config=dict(
            **VISION,
            image_size=image_size,
            patch_size=patch,
        ),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tokenizer), **_ids(tokenizer, spec)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        **_ids(tokenizer, spec),
    )
    image_processor = transformers.Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = transformers.Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch) ** 2 // scale**2,
        chat_template=spec.chat_template,
    )
    return config, processor


def internvl(spec, tokenizer):
    import transformers

    from .processors import processor_class

    image_size, patch = 28, 7
    seq_len = (image_size // patch) ** 2 // 4  # pixel shuffle with downsample ratio 0.5
    config = transformers.InternVLConfig(
        vision_config=dict(
            **VISION,
            image_size=[image_size, image_size],
            patch_size=[patch, patch],
        ),
        text_config=dict(TEXT, model_type="qwen2", vocab_size=len(tokenizer), **_ids(tokenizer, spec)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=seq_len,
        downsample_ratio=0.5,
    )
    image_processor = transformers.GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = processor_class(spec)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=seq_len,
        chat_template=spec.chat_template,
    )
    return config, processor


def make_tiny(family: str, seed: int = 0):
    """(model, processor) of a tiny random model of ``family``, in memory."""
    import torch
    import transformers
    from transformers import GenerationConfig

    from .families import get_family

    spec = get_family(family)
    if spec.tiny is None:
        raise ValueError(f"the {family} family has no tiny model builder")
    tokenizer = make_tokenizer(spec)
    config, processor = spec.tiny(spec, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).eval()
    model.generation_config = GenerationConfig(**_ids(tokenizer, spec))
    return model, processor


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random model of ``family`` and save it as a normal model directory; returns ``out_dir``."""
    out = Path(out_dir)
    model, processor = make_tiny(family, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------- CLI

HELP = "Build a tiny random model of a supported family (real transformers classes) for offline smoke tests."


@dataclass
class TinyModelConfig:
    """`spr tiny-model`: a tiny random model of a family, saved as a normal model directory."""

    family: str = opt(required, "model family (qwen2_vl, qwen2_5_vl, llava, llava_onevision, idefics3, internvl)")
    out: str = opt(required, "directory to write the model to")
    seed: int = opt(0, "seed of the random weights")


Config = TinyModelConfig


def run(config: TinyModelConfig) -> int:
    from ..errors import UserError
    from .families import available_families

    if config.family not in available_families():
        raise UserError(f"unknown family {config.family!r}; choose from {', '.join(available_families())}")
    out = build_tiny_model(config.family, config.out, seed=config.seed)
    files = sorted(f.name for f in out.iterdir())
    print(f"tiny {config.family} model written to {out}: {', '.join(files)}")
    return 0
