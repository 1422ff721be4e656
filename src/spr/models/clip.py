"""CLIP-style image-text encoders for the semantic score: loading from a local path, the two image views SPR
compares with the text (the region's crop and the region seen in the context of the full image), and a tiny
random CLIP for tests and benchmarks.

Any transformers ``CLIPModel`` or ``SiglipModel`` saved with its processor loads with :func:`load_clip`.

Image views. Both views are padded to a square (with the processor's mean colour, image centred) and resized to
the model's input size, instead of the processors' resize-and-centre-crop: a centre crop would cut off parts of
wide regions, and padding keeps the map from image pixels to vision patches linear, which the region-in-context
view needs.

Region in context (the paper's "local attention"; its exact form is left open). The full image goes through the
vision tower, so every patch feature carries context from the whole image; only the final pooling step is
restricted to the region:

- CLIP: all layers but the last run unchanged; in the last layer the class token may attend only to itself and
  to the patches whose centre lies inside the region box (the other tokens attend as usual, which does not change
  the class token's output). The class token then goes through the post-layernorm and the visual projection, so
  the embedding lives in the same space as the text embeddings.
- SigLIP: the attention-pooling head (a learned probe attending to all patch tokens) attends only to the patches
  inside the box.

A box too small to contain a patch centre uses the patch under the box centre.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pooled(out):
    """``get_*_features`` return a tensor in transformers 4 and an output with ``pooler_output`` in 5."""
    return out if hasattr(out, "shape") else out.pooler_output


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> tuple[Image.Image, int, int]:
    """The image centred on a square canvas of its longer side; returns the canvas and the image's offset."""
    w, h = image.size
    side = max(w, h)
    if w == h:
        return image, 0, 0
    canvas = Image.new("RGB", (side, side), fill)
    ox, oy = (side - w) // 2, (side - h) // 2
    canvas.paste(image, (ox, oy))
    return canvas, ox, oy


@dataclass
class ClipEncoder:
    """A loaded CLIP or SigLIP model with the preprocessing SPR uses. Embeddings are L2-normalized."""

    model: object
    tokenizer: object
    kind: str  # "clip" or "siglip"
    image_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_text_tokens: int
    device: str = "cpu"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    # ---------------------------------------------------------------- images
    def _fill(self) -> tuple[int, int, int]:
        return tuple(int(round(m * 255)) for m in self.mean)

    def preprocess(self, image: Image.Image):
        """Pixel values (1, 3, S, S) for ``image`` padded to a square; returns them and the (offset, scale) that
        maps image pixels to input pixels: ``input = (pixel + offset) * scale``."""
        import torch

        square, ox, oy = pad_to_square(image.convert("RGB"), self._fill())
        scale = self.image_size / square.size[0]
        resized = square.resize((self.image_size, self.image_size), Image.BICUBIC)
        arr = np.asarray(resized, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        pixels = torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]
        dtype = next(self.model.parameters()).dtype
        return pixels.to(self.device, dtype), (ox, oy), scale

    def encode_images(self, images: Sequence[Image.Image]):
        """Whole-image embeddings (N, D) of ``images`` (used for the region crops)."""
        import torch

        if not images:
            return torch.zeros(0, self.embed_dim)
        pixels = torch.cat([self.preprocess(im)[0] for im in images])
        with torch.inference_mode():
            emb = _pooled(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    def patch_mask(self, boxes, offset: tuple[int, int], scale: float) -> np.ndarray:
        """(B, grid*grid) bool: the patches whose centre lies inside each box (image pixels)."""
        g, p = self.grid, self.patch_size
        centres = (np.arange(g) + 0.5) * p
        cx, cy = np.meshgrid(centres, centres)  # row-major: patch index = row * g + col
        cx, cy = cx.ravel(), cy.ravel()
        out = np.zeros((len(boxes), g * g), dtype=bool)
        for i, box in enumerate(boxes):
            x1, y1, x2, y2 = ((v + offset[k % 2]) * scale for k, v in enumerate(box))
            inside = (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)
            if not inside.any():
                col = min(max(int(((x1 + x2) / 2) // p), 0), g - 1)
                row = min(max(int(((y1 + y2) / 2) // p), 0), g - 1)
                inside[row * g + col] = True
            out[i] = inside
        return out

    def encode_regions_in_context(self, image: Image.Image, boxes):
        """Embeddings (B, D) of each box seen in the context of the whole ``image`` (see the module docstring)."""
        import torch

        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return torch.zeros(0, self.embed_dim)
        pixels, offset, scale = self.preprocess(image)
        mask = torch.from_numpy(self.patch_mask(boxes, offset, scale)).to(self.device)
        with torch.inference_mode():
            emb = (
                self._clip_context(pixels, mask)
                if self.kind == "clip"
                else self._siglip_context(pixels, mask)
            )
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    def _clip_context(self, pixels, patch_mask):
        import torch

        vision = self.model.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixels))
        *early, last = vision.encoder.layers
        for layer in early:
            hidden = layer(hidden, None)
        b, n = patch_mask.shape[0], hidden.shape[1]
        allowed = torch.ones(b, n, n, dtype=torch.bool, device=hidden.device)
        allowed[:, 0, 1:] = patch_mask  # the class token sees itself and the region's patches only
        additive = torch.zeros(b, 1, n, n, dtype=hidden.dtype, device=hidden.device)
        additive.masked_fill_(~allowed[:, None], torch.finfo(hidden.dtype).min)
        out = last(hidden.expand(b, -1, -1), additive)
        cls = vision.post_layernorm(out[:, 0])
        return self.model.visual_projection(cls)

    def _siglip_context(self, pixels, patch_mask):
        vision = self.model.vision_model
        tokens = vision(pixel_values=pixels).last_hidden_state  # post-layernorm applied
        b = patch_mask.shape[0]
        tokens = tokens.expand(b, -1, -1)
        head = vision.head
        probe = head.probe.repeat(b, 1, 1)
        pooled = head.attention(probe, tokens, tokens, key_padding_mask=~patch_mask)[0]
        pooled = pooled + head.mlp(head.layernorm(pooled))
        return pooled[:, 0]

    # ---------------------------------------------------------------- texts
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in the text encoder, special tokens included."""
        return len(self.tokenizer(text)["input_ids"])

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64):
        """Text embeddings (N, D), in batches. Texts must fit ``max_text_tokens`` (split longer ones first)."""
        import torch

        if not texts:
            return torch.zeros(0, self.embed_dim)
        out = []
        pad = {"padding": "max_length"} if self.kind == "siglip" else {"padding": True}
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
                **pad,
            ).to(self.device)
            kwargs = {"input_ids": enc["input_ids"]}
            if self.kind == "clip":
                kwargs["attention_mask"] = enc["attention_mask"]
            with torch.inference_mode():
                out.append(_pooled(self.model.get_text_features(**kwargs)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()

    @property
    def embed_dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size)


def load_clip(model_dir: str | Path, device: str = "cpu", dtype=None) -> ClipEncoder:
    """Load a transformers CLIPModel or SiglipModel and its tokenizer and image settings from ``model_dir``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ..errors import UserError

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a model directory (no config.json); give a saved CLIP or SigLIP model")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    kind = {"clip": "clip", "siglip": "siglip"}.get(config.model_type)
    if kind is None:
        raise UserError(
            f"{path}: model type {config.model_type!r} is not supported for the semantic score; "
            "give a CLIPModel or SiglipModel"
        )
    from .loading import from_pretrained

    model = from_pretrained(AutoModel, path, f"{kind} model", dtype=dtype or torch.float32)
    model.eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    mean, std = _image_normalization(path, kind)
    vcfg, tcfg = config.vision_config, config.text_config
    image_size = vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0]
    patch = vcfg.patch_size if isinstance(vcfg.patch_size, int) else vcfg.patch_size[0]
    return ClipEncoder(
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        image_size=int(image_size),
        patch_size=int(patch),
        mean=mean,
        std=std,
        max_text_tokens=int(tcfg.max_position_embeddings),
        device=device,
    )


def _image_normalization(path: Path, kind: str) -> tuple[tuple, tuple]:
    """Mean and std from the saved image-processor settings, else the family's defaults."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        f = path / name
        if f.exists():
            cfg = json.loads(f.read_text())
            cfg = cfg.get("image_processor", cfg)
            if "image_mean" in cfg and "image_std" in cfg:
                return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    if kind == "siglip":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
