"""Tiny random CLIP and SigLIP models with a locally trained tokenizer: the semantic scorer's real code path,
offline (tests, benchmarks, and the shapes world's own CLIP recipe, which trains one)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TINY_CORPUS = (
    "a photo of a person riding a bicycle next to a red car on the street",
    "two dogs and a cat sit on a green sofa in the living room",
    "a table with a cup, a bottle, a bowl and a laptop",
    "the large blue square is to the left of the small yellow circle",
    "a green triangle above a red circle and a blue square below them",
    "people walking past a bus stop, a traffic light and a tree",
    "a boat on the water under a bridge near the city",
)


def train_clip_tokenizer(corpus: Sequence[str] = TINY_CORPUS, vocab_size: int = 1000):
    """A byte-level BPE tokenizer in CLIP's layout, trained locally; every byte is a token, so no text is
    unknown. Special tokens come last, as in the released CLIP vocabulary."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, end_of_word_suffix="</w>", initial_alphabet=alphabet, show_progress=False
    )
    # Each byte alone as a word too, so that "x</w>" exists for every byte x.
    tok.train_from_iterator([*corpus, " ".join(sorted(alphabet))], trainer)
    model = json.loads(tok.to_str())["model"]
    ordered = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, (t, _) in enumerate(ordered)}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges)


@dataclass
class TinyClipConfig:
    hidden_size: int = 32
    """Width of both towers."""
    layers: int = 2
    """Transformer layers in each tower."""
    heads: int = 2
    image_size: int = 64
    """Vision input side in pixels."""
    patch_size: int = 16
    """Vision patch side (image_size / patch_size patches per side)."""
    projection_dim: int = 32
    """Width of the shared image-text embedding space."""
    max_text_tokens: int = 32
    """Text encoder length limit (CLIP's is 77); small so that tests exercise splitting long texts."""
    mlp_ratio: int = 2
    """MLP width as a multiple of hidden_size."""
    vocab_size: int = 1000
    """Tokenizer vocabulary trained on the corpus."""


def build_tiny_clip(
    out_dir: str | Path,
    seed: int = 0,
    family: str = "clip",
    config: TinyClipConfig | None = None,
    corpus: Sequence[str] = TINY_CORPUS,
) -> Path:
    """Build a tiny randomly initialised CLIPModel (or SiglipModel) with a tokenizer trained locally on
    ``corpus`` and save it as a normal model directory that :func:`load_clip` (and transformers'
    ``AutoModel``/``AutoProcessor``) load. Random weights: deterministic for a seed but carrying no meaning."""
    import torch

    cfg = config or TinyClipConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_clip_tokenizer(corpus, vocab_size=cfg.vocab_size)
    tokenizer.model_max_length = cfg.max_text_tokens
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * cfg.mlp_ratio,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_text_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * cfg.mlp_ratio,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    torch.manual_seed(seed)
    if family == "clip":
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        model = CLIPModel(
            CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
        )
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": cfg.image_size},
            crop_size={"height": cfg.image_size, "width": cfg.image_size},
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    elif family == "siglip":
        from transformers import SiglipConfig, SiglipModel
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        text["projection_size"] = cfg.hidden_size
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        image_processor = SiglipImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size})
        processor = None
    else:
        raise ValueError(f"unknown tiny CLIP family {family!r}; use 'clip' or 'siglip'")
    model.eval()
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    else:
        tokenizer.save_pretrained(out)
        image_processor.save_pretrained(out)
    return out
