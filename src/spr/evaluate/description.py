"""Grounded region description on held-out regions (SPR's own task).

For each region (a :class:`spr.data.records.Region`), the model gets one grounded-description prompt of
:mod:`spr.prompts` (default ``region_box``: the full image with the region box in the model's format) and writes
a description with boxes, greedily. Its boxes (original pixels) are matched one-to-one (Hungarian, on IoU) with
the region's annotated objects:

- precision = matched boxes / predicted boxes, recall = matched objects / annotated objects, F1, at IoU >= 0.5
  and IoU >= 0.75, summed over regions (micro average); ``mean_boxes`` = predicted boxes per region;
- ``semantic``: mean semantic score of the descriptions with a ``spr.scoring`` scorer (``labels``, ``clip``),
  when one is chosen.

A description without a box scores 0 recall and is counted in ``no_box``; an unreadable image is a miss
counted in ``image_fail``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spr import boxes as B
from spr import formats
from spr.config import opt, required
from spr.data.images import ImageCache
from spr.data.jsonl import read_records
from spr.data.records import Region
from spr.errors import UserError
from spr.options import resolve_device
from spr.scoring.options import SemanticModels

from .task import EvalConfig, Metric, Task, register_task

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.75)
DEFAULT_PROMPT = "region_box"


@dataclass
class DescriptionConfig(EvalConfig, SemanticModels):
    """`spr eval description`: grounded region descriptions of held-out regions."""

    data: str = opt(required, "regions.jsonl of held-out regions (spr regions)")
    prompt: str = opt(DEFAULT_PROMPT, "spr.prompts template id or file (one prompt)")
    semantic: str | None = opt(
        None, "also score the text with this spr.scoring semantic scorer (labels, clip)"
    )
    batch_size: int = opt(4, "prompts per batch", output=False)
    max_new_tokens: int = opt(256, "answer length limit, in tokens", min=1)


def template_for(spec: str | None):
    """The one prompt template used for evaluation: a built-in id of :mod:`spr.prompts` or a template file."""
    from spr import prompts

    templates = prompts.select_templates(spec or DEFAULT_PROMPT)
    if len(templates) != 1:
        raise UserError(f"evaluation uses one prompt; {spec!r} gives {len(templates)}")
    return templates[0]


def _counts(pred_boxes, ref_boxes) -> dict:
    out = {"n_pred": len(pred_boxes), "n_ref": len(ref_boxes)}
    ious = (
        B.iou(pred_boxes, ref_boxes)
        if pred_boxes and ref_boxes
        else np.zeros((len(pred_boxes), len(ref_boxes)))
    )
    for t in THRESHOLDS:
        out[f"tp@{t}"] = len(B.hungarian_match(ious, threshold=t))
    return out


def _prf(tp: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_ref if n_ref else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


class DescriptionTask(Task):
    name = "description"
    HELP = "Grounded region description: box precision / recall / F1 at IoU 0.5 and 0.75 against the annotations."
    Config = DescriptionConfig
    metrics = (
        Metric("precision@0.5"), Metric("recall@0.5"), Metric("f1@0.5"), Metric("f1@0.75"),
        Metric("mean_boxes"), Metric("semantic"),
    )  # fmt: skip
    caption = (
        "a predicted box is a true positive when matched one-to-one (Hungarian) to an object with IoU >= t"
    )

    def read(self, config, problems):
        template_for(config.prompt)  # a bad prompt fails before the model loads
        try:
            return read_records(config.data, Region, skip_bad=True, problems=problems)
        except FileNotFoundError:
            raise UserError(f"{config.data}: no such file (expected regions.jsonl)") from None

    def _rendered(self, adapter, config, region):
        from spr import prompts

        return prompts.render(template_for(config.prompt), region, adapter.fmt, adapter.geometry)

    def prompt(self, adapter, config, region, view_size):
        return self._rendered(adapter, config, region).text

    def view(self, adapter, config, region, image):
        return self._rendered(adapter, config, region).view_image(image)

    def record(self, adapter, config, r, text, view_size, error):
        rp = self._rendered(adapter, config, r)
        rec = {
            "id": r.id,
            "split": "all",
            "image": r.image,
            "prompt_id": rp.prompt_id,
            "region_box": list(r.region_box),
            "ref_boxes": [list(o["box"]) for o in r.objects],
            "ref_labels": [o.get("label") for o in r.objects],
            "text": text,
            "groundings": [],
            "pred_boxes": [],
            "problems": [error] if error else [],
            "status": "image_error" if error else "ok",
        }
        if not error:
            parsed = formats.parse(text, adapter.fmt, image_size=view_size, **adapter.geometry(view_size))
            rec["groundings"] = rp.groundings_to_original(parsed)
            rec["pred_boxes"] = [g["box"] for g in rec["groundings"]]
            rec["problems"] = list(parsed.problems)
            if not parsed:
                rec["status"] = "no_box"
        return rec

    def group_metrics(self, preds):
        n = len(preds)
        out: dict = {"n": n}
        if n == 0:
            for t in THRESHOLDS:
                out.update({f"precision@{t}": None, f"recall@{t}": None, f"f1@{t}": None})
            out.update(mean_boxes=None, no_box=None, image_fail=None, semantic=None)
            return out
        counts = [_counts(p.get("pred_boxes") or [], p.get("ref_boxes") or []) for p in preds]
        n_pred = sum(c["n_pred"] for c in counts)
        n_ref = sum(c["n_ref"] for c in counts)
        for t in THRESHOLDS:
            p, r, f = _prf(sum(c[f"tp@{t}"] for c in counts), n_pred, n_ref)
            out.update({f"precision@{t}": p, f"recall@{t}": r, f"f1@{t}": f})
        out["mean_boxes"] = n_pred / n
        out["no_box"] = float(np.mean([p.get("status") == "no_box" for p in preds]))
        out["image_fail"] = float(np.mean([p.get("status") == "image_error" for p in preds]))
        sem = [p["semantic"] for p in preds if p.get("semantic") is not None]
        out["semantic"] = float(np.mean(sem)) if sem else None
        return out

    def aggregate(self, records, config):
        problems: list[str] = []
        if config.semantic:
            regions = {r.id: r for r in read_records(config.data, Region, skip_bad=True)}
            options = {
                k: v for k, v in (("clip_model", config.clip_model), ("label_model", config.label_model)) if v
            }
            add_semantic_scores(
                records, regions, config.semantic, problems, device=resolve_device(config.device), **options
            )
        metrics = super().aggregate(records, config)
        metrics["problems"] = problems
        return metrics


def add_semantic_scores(
    preds: list[dict], regions: dict[str, Region], scorer: str, problems: list[str], **options
):
    """Fill ``semantic`` of each prediction with the ``spr.scoring`` semantic scorer named ``scorer`` (as
    ``spr score`` computes it). A scorer that cannot be built is reported and the box metrics stand."""
    from spr import scoring

    try:
        sem = scoring.make_semantic_scorer(scorer, **options)
    except UserError:
        raise
    except Exception as e:  # a scorer model that cannot load must not lose the box metrics
        problems.append(f"semantic score skipped: {type(e).__name__}: {e}")
        return
    images = ImageCache(size=2)
    for p in preds:
        region = regions.get(p["id"])
        if region is None or p.get("status") == "image_error":
            continue
        image = None
        if sem.needs_image:
            image, error = images.get(region.image)
            if image is None:
                problems.append(f"{region.id}: semantic score skipped: {error}")
                continue
        state = sem.prepare(region, image, scoring.region_references(region))
        groundings = p.get("groundings") or []
        item = scoring.SemanticItem(
            text=scoring.description_text(p.get("text", ""), groundings),
            phrases=[g["phrase"] for g in groundings if g.get("phrase")],
        )
        p["semantic"] = float(sem.score(state, [item])[0])


TASK = register_task(DescriptionTask())
