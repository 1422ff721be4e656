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
from pathlib import Path

import numpy as np

from spr import boxes as B
from spr import formats
from spr.data.jsonl import read_records
from spr.data.records import Region
from spr.errors import UserError

from . import common
from .generation import load_adapter, run_predictions

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.75)
DEFAULT_PROMPT = "region_box"


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


def _group_metrics(preds: list[dict]) -> dict:
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


def description_metrics(predictions: list[dict]) -> dict:
    by_split: dict[str, list[dict]] = {}
    for p in predictions:
        by_split.setdefault(str(p.get("split", "all")), []).append(p)
    metrics = {"task": "description", **_group_metrics(predictions), "splits": {}}
    for name in sorted(by_split):
        metrics["splits"][name] = _group_metrics(by_split[name])
    return metrics


def predict(adapter, regions: list[Region], writer, batch_size=4, max_new_tokens=256, template=None) -> int:
    from spr import prompts

    template = template or template_for(None)
    rendered = {r.id: prompts.render(template, r, adapter.fmt, adapter.geometry) for r in regions}

    def view_of(r: Region, image):
        crop = rendered[r.id].crop_box
        return image.crop(tuple(crop)) if crop else image

    def record_of(r: Region, text, view_size, error):
        rp = rendered[r.id]
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
            dx, dy = (rp.crop_box[0], rp.crop_box[1]) if rp.crop_box else (0, 0)
            groundings = []
            for g in parsed:
                d = g.to_dict()
                d["box"] = [d["box"][0] + dx, d["box"][1] + dy, d["box"][2] + dx, d["box"][3] + dy]
                groundings.append(d)
            rec["groundings"] = groundings
            rec["pred_boxes"] = [g["box"] for g in groundings]
            rec["problems"] = list(parsed.problems)
            if not parsed:
                rec["status"] = "no_box"
        return rec

    return run_predictions(
        adapter,
        regions,
        writer,
        lambda r, size: rendered[r.id].text,
        record_of,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc="description",
        view_of=view_of,
    )


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
    images = common.ImageCache(size=2)
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


def evaluate(
    model: str | Path | None,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    limit: int | None = None,
    family: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    semantic: str | None = None,
    semantic_options: dict | None = None,
    prompt: str | None = None,
    adapter=None,
) -> dict:
    problems: list[str] = []
    template = template_for(prompt)
    try:
        regions = read_records(data, Region, skip_bad=True, problems=problems)
    except FileNotFoundError:
        raise UserError(f"{data}: no such file (expected regions.jsonl)") from None
    if limit is not None:
        regions = regions[:limit]
    meta = {"task": "description", "model": str(model), "data": str(data), "prompt": template.id}
    with common.open_run(out, meta, overwrite) as writer:
        if regions and adapter is None and any(not writer.has(r.id) for r in regions):
            adapter = load_adapter(model, family=family, device=device)
        if regions:
            predict(adapter, regions, writer, batch_size, max_new_tokens, template)
    wanted = {r.id for r in regions}
    preds = [p for p in common.read_predictions(out) if p.get("id") in wanted]
    if semantic:
        by_id = {r.id: r for r in regions}
        add_semantic_scores(preds, by_id, semantic, problems, device=device, **(semantic_options or {}))
    metrics = description_metrics(preds)
    problems += [f"{p['id']}: {m}" for p in preds if p.get("status") == "image_error" for m in p["problems"]]
    metrics.update(model=str(model), data=str(data), problems=problems)
    common.write_metrics(out, metrics)
    return metrics
