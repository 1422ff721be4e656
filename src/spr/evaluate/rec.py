"""Referring expression comprehension: the model reads an expression and answers with a box.

Prediction: the family's REC prompt, greedy decoding, batched with left padding; the FIRST box of the answer,
parsed with the family's codec, in original-image pixels. Per-sample predictions go to ``predictions.jsonl``
(resumable), then metrics are computed from that file alone. The threshold rule is IoU >= t (t included):

- ``acc@t`` for t in 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95: fraction of samples whose predicted box has
  IoU >= t with the referent;
- ``acc@0.5:0.95``: the mean of acc@t over t = 0.5, 0.55, ..., 0.95 (ten thresholds; COCO's AP-style summary,
  Ref-L4's "mAcc" and the SPR paper's);
- ``acc@0.5_<size>``, ``acc@0.5:0.95_<size>`` for the referent's size, by its box area in original pixels:
  ``small`` < 128², ``medium`` 128² .. 256² (both ends included), ``large`` > 256² (Ref-L4's buckets: its
  ``sqrt(w * h)`` < 128, <= 256, > 256, which Ref-L4 data is bucketed by, on the file's own ``[x, y, w, h]``);
  ``n_<size>`` counts the samples of each;
- ``mean_iou``: mean IoU (0 for a miss);
- ``width_error``, ``height_error``, ``centre_dx``, ``centre_dy``: mean signed error in original pixels
  (predicted minus true width, height, centre x, centre y) over the boxes that hit (IoU >= 0.5): a
  systematically loose, tight or shifted model shows here, random error averages out;
- ``center_acc``: fraction whose predicted box centre lies inside the referent's box;
- ``parse_fail``: fraction whose answer held no readable box;
- ``image_fail``: fraction whose image could not be read.

Ref-L4's own evaluator counts IoU > t (strictly); the two differ only for an IoU exactly equal to a threshold.
For Ref-L4 data the run directory also gets ``refl4_predictions.json``, the benchmark's submission form, to
score with its code: every id of the requested splits, a ground-truth row spr cannot use or an id without an
answer written as a miss (:func:`spr.evaluate.refl4.submit`); a ``--limit`` run writes none. An answer
without a box and an unreadable image are misses (IoU 0), counted and reported, never a crash. Metrics are
given over all samples and per split (``splits``); a requested split absent from the data appears with
``n = 0`` and ``missing: true``.

Every metric is a ratio of per-sample sums (:func:`sample_columns`), which is also what ``spr eval compare``
resamples for its bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spr import boxes as B
from spr.config import opt, required

from . import readers, refl4
from .generation import parse_boxes
from .task import EvalConfig, Metric, Task, register_task

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95)
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.5:0.05:0.95
MACC = "acc@0.5:0.95"
SIZES = ("small", "medium", "large")
SMALL_AREA, LARGE_AREA = 128**2, 256**2
SIZE_METRICS = [f"{m}_{s}" for s in SIZES for m in ("acc@0.5", MACC)]
BOX_ERRORS = ("width_error", "height_error", "centre_dx", "centre_dy")
METRIC_KEYS = (
    [f"acc@{t}" for t in THRESHOLDS]
    + [MACC, "mean_iou", "center_acc", *SIZE_METRICS, *BOX_ERRORS, "parse_fail", "image_fail", "n"]
    + [f"n_{s}" for s in SIZES]
)


@dataclass
class RecConfig(EvalConfig):
    """`spr eval rec`: referring expression comprehension."""

    data: str = opt(
        required,
        "REC JSONL file; RefCOCO 'refer' directory (refs(unc).p); lmms-lab RefCOCO parquet file or directory; "
        "Ref-L4 parquet/JSON file or directory",
    )
    images: str | None = opt(
        None, "image directory (refer layout, Ref-L4, parquet rows that give a path)",
        default_text="DATA/images (Ref-L4: also DATA)",
    )  # fmt: skip
    split_by: str | None = opt(
        None, "refer layout: which refs(<split_by>).p (unc, umd, google)", default_text="the only one"
    )
    image_cache: str | None = opt(
        None, "where images embedded in parquet files (and Ref-L4's images.tar.gz) are written, once",
        default_text="OUT.images, beside the run directory", output=False,
    )  # fmt: skip


def image_cache_dir(config) -> Path | None:
    if getattr(config, "image_cache", None):
        return Path(config.image_cache)
    if not config.out:
        return None
    out = Path(config.out)
    return out.parent / f"{out.name}.images"


def size_of(box) -> str:
    """Ref-L4's size bucket of a box (x1, y1, x2, y2): by area, < 128² small, > 256² large, else medium."""
    area = max(0.0, float(box[2]) - float(box[0])) * max(0.0, float(box[3]) - float(box[1]))
    return "small" if area < SMALL_AREA else "large" if area > LARGE_AREA else "medium"


def bucket_of(record: dict) -> str:
    """The size bucket of a prediction record: from ``gt_size`` where the benchmark gave one (Ref-L4's
    ``sqrt(w * h)`` on its own numbers, compared as its evaluator does), else from ``gt_box``."""
    size = record.get("gt_size")
    if size is None:
        return size_of(record["gt_box"])
    return "small" if size < SMALL_AREA**0.5 else "large" if size > LARGE_AREA**0.5 else "medium"


def sample_ious(preds: list[dict]) -> np.ndarray:
    """IoU of each record's predicted box with its referent (0 without a box)."""
    if not preds:
        return np.zeros(0)
    has_box = np.array([p.get("pred_box") is not None for p in preds])
    gt = np.array([p["gt_box"] for p in preds], dtype=np.float64).reshape(-1, 4)
    pred = np.array(
        [p["pred_box"] if p.get("pred_box") is not None else [0, 0, 0, 0] for p in preds], np.float64
    )
    return np.where(has_box, B.paired_iou(pred.reshape(-1, 4), gt), 0.0)


def sample_columns(preds: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric, per-sample (numerator, denominator) arrays: the metric is ``num.sum() / den.sum()``."""
    n = len(preds)
    ones = np.ones(n)
    ious = sample_ious(preds)
    gt = np.array([p["gt_box"] for p in preds], dtype=np.float64).reshape(-1, 4)
    has_box = np.array([p.get("pred_box") is not None for p in preds], dtype=bool)
    pred = np.array(
        [p["pred_box"] if p.get("pred_box") is not None else [0, 0, 0, 0] for p in preds], np.float64
    )
    pred = pred.reshape(-1, 4)
    cx, cy = (pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2
    centre = has_box & (cx >= gt[:, 0]) & (cx <= gt[:, 2]) & (cy >= gt[:, 1]) & (cy <= gt[:, 3])
    cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in THRESHOLDS:
        cols[f"acc@{t}"] = ((ious >= t).astype(float), ones)
    macc = np.mean([ious >= t for t in COCO_THRESHOLDS], axis=0) if n else np.zeros(0)
    cols[MACC] = (macc, ones)
    cols["mean_iou"] = (ious, ones)
    cols["center_acc"] = (centre.astype(float), ones)
    sizes = np.array([bucket_of(p) for p in preds])
    for s in SIZES:
        mask = (sizes == s).astype(float)
        cols[f"acc@0.5_{s}"] = ((ious >= 0.5) * mask, mask)
        cols[f"{MACC}_{s}"] = (macc * mask, mask)
    hit = (has_box & (ious >= 0.5)).astype(float)
    errors = (
        (pred[:, 2] - pred[:, 0]) - (gt[:, 2] - gt[:, 0]),
        (pred[:, 3] - pred[:, 1]) - (gt[:, 3] - gt[:, 1]),
        cx - (gt[:, 0] + gt[:, 2]) / 2,
        cy - (gt[:, 1] + gt[:, 3]) / 2,
    )
    for key, err in zip(BOX_ERRORS, errors):
        cols[key] = (err * hit, hit)
    cols["parse_fail"] = (np.array([p.get("status") == "no_box" for p in preds], dtype=float), ones)
    cols["image_fail"] = (np.array([p.get("status") == "image_error" for p in preds], dtype=float), ones)
    return cols


def _group_metrics(preds: list[dict]) -> dict:
    n = len(preds)
    out: dict = {"n": n}
    if n == 0:
        out.update({k: None for k in METRIC_KEYS if k != "n"})
        out.update({f"n_{s}": 0 for s in SIZES})
        return out
    for key, (num, den) in sample_columns(preds).items():
        out[key] = float(num.sum() / den.sum()) if den.sum() > 0 else None
    sizes = [bucket_of(p) for p in preds]
    out.update({f"n_{s}": sizes.count(s) for s in SIZES})
    return {k: out[k] for k in METRIC_KEYS}


class RecTask(Task):
    name = "rec"
    HELP = "Referring expression comprehension: accuracy at IoU 0.5 ... 0.95, their 0.5:0.95 mean, per box size, mean IoU."  # fmt: skip
    Config = RecConfig
    metrics = (
        *(Metric(f"acc@{t}") for t in THRESHOLDS),
        Metric(MACC),
        Metric("mean_iou"),
        Metric("center_acc"),
        *(Metric(m) for m in SIZE_METRICS),
        *(Metric(m, higher_is_better=None) for m in BOX_ERRORS),
        Metric("parse_fail", higher_is_better=False),
        Metric("image_fail", higher_is_better=False),
    )
    caption = (
        "acc@t: share of expressions whose predicted box has IoU >= t with the referent (t included; Ref-L4's "
        "evaluator uses IoU > t); acc@0.5:0.95: mean of acc@t over t = 0.5, 0.55, ..., 0.95;\n"
        "_small/_medium/_large: referent box area < 128^2, 128^2..256^2, > 256^2 px (Ref-L4's buckets);\n"
        "width/height_error, centre_dx/dy: mean signed error (predicted - true, px) of the boxes with IoU >= 0.5; "
        "no box in the answer or an unreadable image = a miss (IoU 0)"
    )

    def columns(self) -> list[str]:
        """The printed table (metrics.json has every metric): the per-size 0.5:0.95 means and center_acc are
        left out to keep it readable."""
        hidden = {f"{MACC}_{s}" for s in SIZES} | {"center_acc"}
        return [m.name for m in self.metrics if m.name not in hidden] + ["n"]

    def read(self, config, problems):
        return readers.read_rec(
            config.data, config.images, config.split_by, config.splits, problems,
            cache_dir=image_cache_dir(config), limit=config.limit,
        )  # fmt: skip

    def prompt(self, adapter, config, sample, view_size):
        return adapter.rec_prompt(sample.expression)

    def record(self, adapter, config, s, text, image_size, error):
        if error:
            return _record(s, None, "", "image_error", [error], None)
        parsed = parse_boxes(adapter, text, image_size)
        box = list(parsed[0].box) if parsed else None
        problems = list(parsed.problems) + ([] if parsed else ["no box in the answer"])
        return _record(s, box, text, "ok" if box else "no_box", problems, image_size)

    def group_metrics(self, records):
        return _group_metrics(records)

    def aggregate(self, records, config):
        metrics = super().aggregate(records, config)
        n_nobox = sum(r.get("status") == "no_box" for r in records)
        metrics["problems"] = (
            [f"{n_nobox} answer(s) held no readable box (counted as misses)"] if n_nobox else []
        )
        if getattr(config, "out", None) and any(r.get("benchmark") == refl4.BENCHMARK for r in records):
            refl4.submit(config, records, metrics, readers.rec_layout(config.data)[1])
        return metrics


def _record(s, box, text, status, problems, image_size) -> dict:
    iou = float(B.paired_iou(box, s.box)[0]) if box is not None else 0.0
    rec = {
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
    if getattr(s, "benchmark", ""):
        rec.update(benchmark=s.benchmark, source_id=s.source_id)
    if getattr(s, "size", None) is not None:
        rec["gt_size"] = s.size
    return rec


TASK = register_task(RecTask())
