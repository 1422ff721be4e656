"""Phrase grounding on Flickr30k Entities: recall@1 at IoU 0.5 under the ANY-BOX and MERGED-BOX protocols.

Each phrase with boxes is asked for with the family's referring-expression prompt (the phrase as the
expression); the first box of the answer is the top-1 prediction.

- ANY-BOX: correct when the prediction has IoU >= 0.5 with at least one of the entity's boxes;
- MERGED-BOX: correct when it has IoU >= 0.5 with the union (smallest enclosing box) of the entity's boxes.

An answer without a box or an unreadable image is a miss, counted in ``parse_fail`` / ``image_fail``.
Metrics over all phrases, per split and per phrase type (people, clothing, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spr import boxes as B
from spr.config import opt, required

from .flickr30k import PhraseSample, read_flickr30k
from .generation import parse_boxes
from .task import EvalConfig, Metric, Task, register_task

THRESHOLD = 0.5


@dataclass
class GroundingConfig(EvalConfig):
    """`spr eval grounding`: phrase grounding in the Flickr30k Entities layout."""

    data: str = opt(
        required, "Flickr30k Entities root (Sentences/, Annotations/, optional <split>.txt lists)"
    )
    images: str | None = opt(None, "image directory", default_text="DATA/flickr30k-images or DATA/images")


def _correct(pred_box, gt_boxes) -> tuple[bool, bool]:
    if pred_box is None or not gt_boxes:
        return False, False
    ious = B.iou([pred_box], gt_boxes)[0]
    merged = B.iou([pred_box], [B.union_box(gt_boxes)])[0, 0]
    return bool(ious.max() >= THRESHOLD), bool(merged >= THRESHOLD)


def _record(s: PhraseSample, box, text, status, problems) -> dict:
    return {
        "id": s.id,
        "split": s.split,
        "image": s.image,
        "phrase": s.phrase,
        "sentence": s.sentence,
        "phrase_type": s.phrase_type,
        "gt_boxes": [list(b) for b in s.boxes],
        "pred_box": box,
        "status": status,
        "text": text,
        "problems": problems,
    }


class GroundingTask(Task):
    name = "grounding"
    HELP = "Phrase grounding in the Flickr30k Entities layout: recall@1 under the ANY-BOX and MERGED-BOX protocols."
    Config = GroundingConfig
    metrics = (
        Metric("recall@1_any"),
        Metric("recall@1_merged"),
        Metric("parse_fail", higher_is_better=False),
        Metric("image_fail", higher_is_better=False),
    )
    caption = "recall@1: the answer's first box has IoU >= 0.5 with one of the entity's boxes (any) or their union (merged)"

    def read(self, config, problems):
        return read_flickr30k(config.data, config.images, config.splits, problems)

    def prompt(self, adapter, config, sample, view_size):
        return adapter.rec_prompt(sample.phrase)

    def record(self, adapter, config, s, text, image_size, error):
        if error:
            return _record(s, None, "", "image_error", [error])
        parsed = parse_boxes(adapter, text, image_size)
        box = list(parsed[0].box) if parsed else None
        problems = list(parsed.problems) + ([] if parsed else ["no box in the answer"])
        return _record(s, box, text, "ok" if box else "no_box", problems)

    def group_metrics(self, preds):
        n = len(preds)
        if n == 0:
            return {
                "n": 0,
                "recall@1_any": None,
                "recall@1_merged": None,
                "parse_fail": None,
                "image_fail": None,
            }
        hits = np.array([_correct(p.get("pred_box"), p.get("gt_boxes")) for p in preds], dtype=bool).reshape(
            -1, 2
        )
        return {
            "n": n,
            "recall@1_any": float(hits[:, 0].mean()),
            "recall@1_merged": float(hits[:, 1].mean()),
            "parse_fail": float(np.mean([p.get("status") == "no_box" for p in preds])),
            "image_fail": float(np.mean([p.get("status") == "image_error" for p in preds])),
        }

    def aggregate(self, records, config):
        """Per split as every task, and per phrase type (people, clothing, ...)."""
        metrics = super().aggregate(records, config)
        by_type: dict[str, list[dict]] = {}
        for r in records:
            for t in r.get("phrase_type") or ["other"]:
                by_type.setdefault(t, []).append(r)
        metrics["types"] = {name: self.group_metrics(by_type[name]) for name in sorted(by_type)}
        return metrics


TASK = register_task(GroundingTask())
