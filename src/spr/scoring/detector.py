"""Open-vocabulary detector for the reference set (optional, off by default): OWL-ViT / OWLv2 or Grounding DINO
through transformers, loaded from a local path, queried with the phrases a region's descriptions mention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import boxes as B
from ..errors import UserError
from .references import Detection

SUPPORTED = ("owlv2", "owlvit", "grounding-dino")


@dataclass
class DetectorConfig:
    model_dir: str
    """Local directory of a saved OWLv2 / OWL-ViT / Grounding DINO model with its processor."""
    threshold: float = 0.3
    """Keep detections scoring at least this (box confidence)."""
    text_threshold: float = 0.25
    """Grounding DINO only: token confidence for the label."""
    max_phrases: int = 16
    """Query at most this many distinct phrases per region (the most frequent first)."""
    device: str = "cpu"


class OpenVocabDetector:
    def __init__(self, config: DetectorConfig):
        import torch  # noqa: F401
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        path = Path(config.model_dir)
        if not (path / "config.json").exists():
            raise UserError(
                f"{path}: not a model directory (no config.json); give a saved OWLv2 or Grounding DINO"
            )
        self.model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if self.model_type not in SUPPORTED:
            raise UserError(
                f"{path}: detector type {self.model_type!r} is not supported; use one of {', '.join(SUPPORTED)}"
            )
        self.config = config
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        from ..models.loading import from_pretrained

        self.model = from_pretrained(AutoModelForZeroShotObjectDetection, path, "detector")
        self.model.eval().to(config.device)

    def detect(self, image: Image.Image, phrases: Sequence[str]) -> list[Detection]:
        """Boxes (original-image pixels) of ``phrases`` in ``image``, each labelled with its phrase."""
        import torch

        queries = [p for p in dict.fromkeys(p.strip() for p in phrases if p and p.strip())]
        queries = queries[: self.config.max_phrases]
        if not queries:
            return []
        image = image.convert("RGB")
        inputs = self.processor(images=image, text=[queries], return_tensors="pt", padding=True)
        inputs = inputs.to(self.config.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        target = [(image.height, image.width)]
        if self.model_type == "owlv2":
            # OWLv2 pads the image to a square (bottom and right) before predicting: its boxes are relative to
            # that square, so they scale by the longer side, then anything on the padding is clipped away.
            side = max(image.size)
            target = [(side, side)]
        if self.model_type == "grounding-dino":
            result = self.processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.config.threshold,
                text_threshold=self.config.text_threshold,
                target_sizes=target,
            )[0]
        else:
            result = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.config.threshold, target_sizes=target, text_labels=[queries]
            )[0]
        labels = result.get("text_labels") or [queries[int(i)] for i in result["labels"]]
        out = []
        for label, box, score in zip(labels, result["boxes"].tolist(), result["scores"].tolist()):
            clipped = B.clip(box, image.size) if B.problem(box) is None else None
            if clipped is not None and B.is_valid(clipped):
                out.append(Detection(str(label), clipped, float(score)))
        return out
