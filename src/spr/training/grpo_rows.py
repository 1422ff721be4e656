"""`spr grpo`'s prompts as a dataset: grounded-description prompts of regions and the family's REC prompt of
referring expressions, one row each, carrying what the rewards read (:mod:`spr.rewards`); images load when a
batch is drawn. ``config`` is `spr grpo`'s GrpoConfig (not imported: grpo imports this module)."""

from __future__ import annotations

import json


def _checked_image(path: str, config, seen: dict, problems: list[str], expected_size=None) -> bool:
    """Whether the image at ``path`` decodes (once per path); a problem is recorded when it does not."""
    from ..data.images import ImageProblem, load_image

    if path not in seen:
        try:
            seen[path] = list(load_image(path, config.max_image_pixels, expected_size).size)
        except ImageProblem as e:
            seen[path] = None
            problems.append(f"skipped: {e}")
    return seen[path] is not None


def region_rows(config, adapter, problems: list[str]) -> list[dict]:
    """One row per region and description prompt."""
    from ..generate import read_regions
    from ..prompts import select_templates
    from ..rewards import region_columns

    templates = select_templates(config.prompts)
    rows, seen = [], {}
    for region in read_regions(config.regions, config.limit):
        if not _checked_image(region.image, config, seen, problems, region.image_size):
            continue
        for prompt in adapter.description_prompts(region, templates):
            rows.append(
                {
                    "image": region.image,
                    "crop_box": json.dumps(prompt.crop_box) if prompt.crop_box else "",
                    "prompt": json.dumps(adapter.messages(prompt.text)),
                    **region_columns(region, prompt, adapter.fmt, adapter.pixel_budget()),
                }
            )
    return rows


def rec_rows(config, adapter, problems: list[str]) -> list[dict]:
    """One row per referring expression, with the family's REC prompt on the full image."""
    from ..evaluate.readers import read_rec
    from ..rewards import rec_columns

    read_problems: list[str] = []
    samples = read_rec(
        config.rec, config.rec_images, None, config.rec_splits, read_problems, limit=config.limit
    )
    problems += read_problems
    rows, seen = [], {}
    for s in samples[: config.limit]:
        if not _checked_image(s.image, config, seen, problems):
            continue
        size = seen[s.image]
        text = adapter.rec_prompt(s.expression)
        rows.append(
            {
                "image": s.image,
                "crop_box": "",
                "prompt": json.dumps(adapter.messages(text)),
                **rec_columns(
                    s.id, s.image, size, s.expression, s.box, text, adapter.fmt, adapter.geometry(size)
                ),
            }
        )
    return rows


def _materialize(batch: dict) -> dict:
    """datasets transform: the stored strings -> TRL's conversational prompt with its image (the view)."""
    from .rows import load_view

    out = {k: v for k, v in batch.items() if k not in ("image", "crop_box", "prompt")}
    out["prompt"] = [json.loads(p) for p in batch["prompt"]]
    out["image"] = [load_view(p, c) for p, c in zip(batch["image"], batch["crop_box"])]
    return out


def build_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of prompts that holds strings only; images load when a batch is drawn."""
    from datasets import Dataset

    return Dataset.from_list(rows).with_transform(_materialize)
