"""Referring expression comprehension: the model reads an expression and answers with a box.

Prediction: the family's REC prompt, greedy decoding, batched with left padding; the FIRST box of the answer,
parsed with the family's codec, in original-image pixels. Per-sample predictions go to ``predictions.jsonl``
(resumable), then metrics are computed from that file alone:

- ``acc@t`` for t in 0.5 .. 0.9: fraction of samples whose predicted box has IoU >= t with the referent;
- ``mean_iou``: mean IoU (0 for a miss);
- ``center_acc``: fraction whose predicted box centre lies inside the referent's box;
- ``parse_fail``: fraction whose answer held no readable box;
- ``image_fail``: fraction whose image could not be read.

An answer without a box and an unreadable image are misses (IoU 0), counted and reported, never a crash.
Metrics are given over all samples and per split (``splits``); a requested split absent from the data appears
with ``n = 0`` and ``missing: true``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import common, readers
from .generation import load_adapter, parse_boxes, run_predictions

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS = [f"acc@{t}" for t in THRESHOLDS] + ["mean_iou", "center_acc", "parse_fail", "image_fail", "n"]


def paired_iou(a, b) -> np.ndarray:
    """IoU of a[i] with b[i] for (N, 4) arrays (the diagonal of :func:`spr.boxes.iou`, in O(N))."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _group_metrics(preds: list[dict]) -> dict:
    n = len(preds)
    out: dict = {"n": n}
    if n == 0:
        out.update({k: None for k in METRIC_KEYS if k != "n"})
        return out
    has_box = np.array([p.get("pred_box") is not None for p in preds])
    gt = np.array([p["gt_box"] for p in preds], dtype=np.float64)
    pred = np.array(
        [p["pred_box"] if p.get("pred_box") is not None else [0, 0, 0, 0] for p in preds], np.float64
    )
    ious = np.where(has_box, paired_iou(pred, gt), 0.0)
    cx, cy = (pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2
    centre = has_box & (cx >= gt[:, 0]) & (cx <= gt[:, 2]) & (cy >= gt[:, 1]) & (cy <= gt[:, 3])
    for t in THRESHOLDS:
        out[f"acc@{t}"] = float(np.mean(ious >= t))
    out["mean_iou"] = float(ious.mean())
    out["center_acc"] = float(centre.mean())
    out["parse_fail"] = float(np.mean([p.get("status") == "no_box" for p in preds]))
    out["image_fail"] = float(np.mean([p.get("status") == "image_error" for p in preds]))
    return out


def rec_metrics(predictions: list[dict], splits=None) -> dict:
    """Metrics over all predictions and per split, from prediction records (``gt_box``, ``pred_box`` or None,
    ``status``, ``split``). IoU is recomputed from the boxes, never read from the records."""
    by_split: dict[str, list[dict]] = {}
    for p in predictions:
        by_split.setdefault(str(p.get("split", "all")), []).append(p)
    metrics = {"task": "rec", **_group_metrics(predictions), "splits": {}}
    for name in sorted(by_split):
        metrics["splits"][name] = _group_metrics(by_split[name])
    for name in common.missing_splits(splits, by_split):
        metrics["splits"][name] = {**_group_metrics([]), "missing": True}
    return metrics


def predict(adapter, samples: list[readers.RecSample], writer, batch_size: int = 8, max_new_tokens: int = 64):
    """Predict a box for every sample not yet in ``writer`` and append one record per sample."""

    def record_of(s, text, image_size, error):
        if error:
            return _record(s, None, "", "image_error", [error], None)
        parsed = parse_boxes(adapter, text, image_size)
        box = list(parsed[0].box) if parsed else None
        problems = list(parsed.problems) + ([] if parsed else ["no box in the answer"])
        return _record(s, box, text, "ok" if box else "no_box", problems, image_size)

    return run_predictions(
        adapter,
        samples,
        writer,
        lambda s, size: adapter.rec_prompt(s.expression),
        record_of,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc="rec",
    )


def _record(s, box, text, status, problems, image_size) -> dict:
    iou = float(paired_iou(box, s.box)[0]) if box is not None else 0.0
    return {
        "id": s.id,
        "split": s.split,
        "image": s.image,
        "expression": s.expression,
        "gt_box": list(s.box),
        "pred_box": box,
        "iou": iou,
        "status": status,
        "text": text,
        "problems": problems,
        "image_size": list(image_size) if image_size else None,
    }


def evaluate(
    model: str | Path | None,
    data: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    split_by: str | None = None,
    splits=None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    limit: int | None = None,
    family: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    adapter=None,
) -> dict:
    """Predict (resumably) and score; writes ``out/predictions.jsonl`` and ``out/metrics.json``."""
    problems: list[str] = []
    samples = readers.read_rec(data, images, split_by, splits, problems)
    if limit is not None:
        samples = samples[:limit]
    meta = {"task": "rec", "model": str(model), "data": str(data)}
    with common.open_run(out, meta, overwrite) as writer:
        if samples:
            if adapter is None and any(not writer.has(s.id) for s in samples):
                adapter = load_adapter(model, family=family, device=device)
            predict(adapter, samples, writer, batch_size, max_new_tokens)
    wanted = {s.id for s in samples}
    preds = [p for p in common.read_predictions(out) if p.get("id") in wanted]
    metrics = rec_metrics(preds, splits)
    problems = common.missing_split_problems(metrics) + _summarise(problems, preds)
    metrics.update(model=str(model), data=str(data), problems=problems)
    common.write_metrics(out, metrics)
    return metrics


def _summarise(problems: list[str], preds: list[dict]) -> list[str]:
    out = list(problems)
    for p in preds:
        if p.get("status") == "image_error":
            out.extend(f"{p['id']}: {m}" for m in p.get("problems", []))
    n_nobox = sum(p.get("status") == "no_box" for p in preds)
    if n_nobox:
        out.append(f"{n_nobox} answer(s) held no readable box (counted as misses)")
    return out
