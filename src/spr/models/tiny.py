"""Tiny random models of the real transformers classes, with a locally trained tokenizer: offline smoke tests.

``build_tiny_model(family, out_dir)`` saves a normal model directory (config.json, model.safetensors,
generation_config.json, tokenizer files, processor config, chat_template.jinja) that :func:`spr.models.load`
(or plain transformers) loads. Sizes: text hidden 64, 2 layers, 4 heads; a 2-layer vision tower; a few image
tokens per image. The weights are random: the outputs are gibberish, the code paths are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import opt, required
from .families import FamilySpec, available_families, get_family

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
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}
    )
    processor = processor_class(spec)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=spec.chat_template
    )
    return qwen_config(spec.name, tokenizer, spec), processor


# Qwen3-VL and Qwen3.5 (dense and MoE): config class, and the text-config fields each adds to TEXT.
QWEN3_TEXT = {
    "Qwen3VLConfig": dict(head_dim=16),
    # one dense MLP layer, then experts: both MLP kinds, and LoRA reaches an MLP (experts are fused parameters)
    "Qwen3VLMoeConfig": dict(
        head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[0]
    ),
    # a linear-attention (gated delta net) layer and a full-attention one, as the released models alternate them
    "Qwen3_5Config": dict(
        head_dim=32,
        layer_types=["linear_attention", "full_attention"],
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    ),
}
QWEN3_TEXT["Qwen3_5MoeConfig"] = dict(
    QWEN3_TEXT["Qwen3_5Config"],
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
)


def qwen3(spec, tokenizer):
    """Qwen3-VL and Qwen3.5, dense and MoE (the spec's model class picks the config class). Patch 16, merge 2:
    32 px per image token, as the released checkpoints' preprocessor configs say (the shared image processor
    class defaults to patch 14, so the saved config must carry it). Qwen3-VL's deepstack merges the first
    vision layer's features into the language model."""
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from .processors import processor_class

    cls_name = spec.model_class.replace("ForConditionalGeneration", "Config")
    tid = tokenizer.convert_tokens_to_ids
    text = dict(TEXT, vocab_size=len(tokenizer), **_ids(tokenizer, spec), **QWEN3_TEXT[cls_name])
    qwen3_5 = cls_name.startswith("Qwen3_5")
    # the rotary part of a head (all of it in Qwen3-VL, a quarter in Qwen3.5) split over (t, h, w), interleaved
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True}
    if qwen3_5:
        rope.update(mrope_section=[2, 1, 1], partial_rotary_factor=0.25)
    else:
        rope.update(mrope_section=[2, 3, 3])
    text["rope_parameters"] = rope
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=TEXT["hidden_size"],
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=16,  # a 4x4 grid of learned positions, interpolated to the image's grid
    )
    if not qwen3_5:
        vision["deepstack_visual_indexes"] = [0]
    config = getattr(transformers, cls_name)(
        text_config=text,
        vision_config=vision,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
    )
    # between 4 and 16 image tokens per image, in the processor's own size convention
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16}
    )
    processor = processor_class(spec)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=spec.chat_template
    )
    return config, processor


# GLM-4.1V / 4.6V-Flash (glm4v), GLM-4.5V (glm4v_moe), GLM-4.6V (glm46v): config and image processor classes.
GLM_CLASSES = {
    "Glm4vForConditionalGeneration": ("Glm4vConfig", "Glm4vImageProcessorPil"),
    "Glm4vMoeForConditionalGeneration": ("Glm4vMoeConfig", "Glm4vImageProcessorPil"),
    "Glm46VForConditionalGeneration": ("Glm46VConfig", "Glm46VImageProcessorPil"),
}


def glm4v(spec, tokenizer):
    """GLM-4.1V, 4.5V, 4.6V and 4.6V-Flash: patch 14, merge 2 (28 px per image token); M-RoPE over half of
    each head, as the released configs (partial_rotary_factor 0.5)."""
    import transformers

    from .processors import processor_class

    config_name, image_processor_name = GLM_CLASSES[spec.model_class]
    tid = tokenizer.convert_tokens_to_ids
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 1, 1],
        "partial_rotary_factor": 0.5,
    }
    text = dict(TEXT, vocab_size=len(tokenizer), rope_parameters=rope, **_ids(tokenizer, spec))
    if config_name == "Glm4vMoeConfig":  # one dense layer, then routed experts plus a shared one
        text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                    first_k_dense_replace=1)  # fmt: skip
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=TEXT["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        image_size=28,
    )
    config = getattr(transformers, config_name)(
        text_config=text,
        vision_config=vision,
        image_token_id=tid("<|image|>"),
        video_token_id=tid("<|video|>"),
        image_start_token_id=tid("<|begin_of_image|>"),
        image_end_token_id=tid("<|end_of_image|>"),
        video_start_token_id=tid("<|begin_of_video|>"),
        video_end_token_id=tid("<|end_of_video|>"),
    )
    image_processor = getattr(transformers, image_processor_name)(
        size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}
    )
    processor = processor_class(spec)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=spec.chat_template
    )
    return config, processor


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


# The tiny builder of each built-in family (a registered family may bring its own: FamilySpec.tiny).
BUILDERS = {
    "qwen2_vl": qwen,
    "qwen2_5_vl": qwen,
    "llava": llava,
    "llava_onevision": llava_onevision,
    "idefics3": idefics3,
    "internvl": internvl,
    **dict.fromkeys(("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"), qwen3),
    **dict.fromkeys(("glm4v", "glm4v_moe", "glm46v"), glm4v),
}


def make_tiny(family: str, seed: int = 0):
    """(model, processor) of a tiny random model of ``family``, in memory."""
    import torch
    import transformers
    from transformers import GenerationConfig

    spec = get_family(family)
    build = spec.tiny or BUILDERS.get(spec.name)
    if build is None:
        raise ValueError(f"the {family} family has no tiny model builder")
    tokenizer = make_tokenizer(spec)
    config, processor = build(spec, tokenizer)
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

    family: str = opt(
        required, "model family (`spr.models.available_families()`: qwen2_vl, qwen3_vl, glm4v, ...)"
    )
    out: str = opt(required, "directory to write the model to")
    seed: int = opt(0, "seed of the random weights")


Config = TinyModelConfig


def run(config: TinyModelConfig) -> int:
    from ..errors import UserError

    if config.family not in available_families():
        raise UserError(f"unknown family {config.family!r}; choose from {', '.join(available_families())}")
    out = build_tiny_model(config.family, config.out, seed=config.seed)
    files = sorted(f.name for f in out.iterdir())
    print(f"tiny {config.family} model written to {out}: {', '.join(files)}")
    return 0
