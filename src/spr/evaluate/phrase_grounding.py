"""Phrase grounding on Flickr30k Entities: recall@1 at IoU 0.5 under the ANY-BOX and MERGED-BOX protocols.

Each phrase with boxes is asked for with the family's referring-expression prompt (the phrase as the
expression); the first box of the answer is the top-1 prediction.

- ANY-BOX: correct when the prediction has IoU >= 0.5 with at least one of the entity's boxes;
- MERGED-BOX: correct when it has IoU >= 0.5 with the union (smallest enclosing box) of the entity's boxes.

An answer without a box or an unreadable image is a miss, counted in ``parse_fail`` / ``image_fail``.
Metrics over all phrases, per split and per phrase type (people, clothing, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spr import boxes as B

from . import common
from .flickr30k import PhraseSample, read_flickr30k
from .generation import load_adapter, parse_boxes, run_predictions

THRESHOLD = 0.5


def _correct(pred_box, gt_boxes) -> tuple[bool, bool]:
    if pred_box is None or not gt_boxes:
        return False, False
    ious = B.iou([pred_box], gt_boxes)[0]
    merged = B.iou([pred_box], [B.union_box(gt_boxes)])[0, 0]
    return bool(ious.max() >= THRESHOLD), bool(merged >= THRESHOLD)


def _group_metrics(preds: list[dict]) -> dict:
    n = len(preds)
    if n == 0:
        return {"n": 0, "recall@1_any": None, "recall@1_merged": None, "parse_fail": None, "image_fail": None}
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


def grounding_metrics(predictions: list[dict], splits=None) -> dict:
    """Recall@1 (ANY-BOX and MERGED-BOX) over all, per split and per phrase type."""
    by_split: dict[str, list[dict]] = {}
    by_type: dict[str, list[dict]] = {}
    for p in predictions:
        by_split.setdefault(str(p.get("split", "all")), []).append(p)
        for t in p.get("phrase_type") or ["other"]:
            by_type.setdefault(t, []).append(p)
    metrics = {"task": "grounding", **_group_metrics(predictions), "splits": {}, "types": {}}
    for name in sorted(by_split):
        metrics["splits"][name] = _group_metrics(by_split[name])
    for name in common.missing_splits(splits, by_split):
        metrics["splits"][name] = {**_group_metrics([]), "missing": True}
    for name in sorted(by_type):
        metrics["types"][name] = _group_metrics(by_type[name])
    return metrics


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


def predict(
    adapter, samples: list[PhraseSample], writer, batch_size: int = 8, max_new_tokens: int = 64
) -> int:
    def record_of(s, text, image_size, error):
        if error:
            return _record(s, None, "", "image_error", [error])
        parsed = parse_boxes(adapter, text, image_size)
        box = list(parsed[0].box) if parsed else None
        problems = list(parsed.problems) + ([] if parsed else ["no box in the answer"])
        return _record(s, box, text, "ok" if box else "no_box", problems)

    return run_predictions(
        adapter,
        samples,
        writer,
        lambda s, size: adapter.rec_prompt(s.phrase),
        record_of,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc="grounding",
    )


def evaluate(
    model: str | Path | None,
    data: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    splits=None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    limit: int | None = None,
    family: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    adapter=None,
) -> dict:
    problems: list[str] = []
    samples = read_flickr30k(data, images, splits, problems)
    if limit is not None:
        samples = samples[:limit]
    meta = {"task": "grounding", "model": str(model), "data": str(data)}
    with common.open_run(out, meta, overwrite) as writer:
        if samples and adapter is None and any(not writer.has(s.id) for s in samples):
            adapter = load_adapter(model, family=family, device=device)
        if samples:
            predict(adapter, samples, writer, batch_size, max_new_tokens)
    wanted = {s.id for s in samples}
    preds = [p for p in common.read_predictions(out) if p.get("id") in wanted]
    metrics = grounding_metrics(preds, splits)
    problems += [f"{p['id']}: {m}" for p in preds if p.get("status") == "image_error" for m in p["problems"]]
    problems = common.missing_split_problems(metrics) + problems
    metrics.update(model=str(model), data=str(data), problems=problems)
    common.write_metrics(out, metrics)
    return metrics
