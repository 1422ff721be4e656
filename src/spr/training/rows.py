"""The training rows: ``dpo.jsonl`` (written by ``spr pairs``) read and checked in full before any step runs.

A row is ``{"id", "images": [path], "crop_box": null | [x1, y1, x2, y2], "prompt": [user turn], "chosen":
[assistant turn], "rejected": [assistant turn], "geometry": {"format", "pixel_budget", "codec"}}``. Every field
is checked for its type, every image is decoded (a truncated file is caught here, not in the middle of an
epoch), crop boxes must lie inside their image, no text may hold the processor's image or video placeholder
token, the image parts must be where TRL's vision DPO collator puts the row's image (:func:`image_slots`), and
the box format and pixel budget the answers were written under must be the ones the model trains
with. A problem names ``file:line`` and stops, or with ``skip_bad`` skips that row and is counted.

The dataset holds strings only: images load from their paths when a batch is built (cropped to ``crop_box``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_image
from ..data.jsonl import JsonlError, check_manifest, iter_jsonl
from ..errors import UserError

REQUIRED = ("images", "prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant", "tool")  # the roles TRL's prepare_multimodal_messages accepts


class RowProblem(ValueError):
    """A row that cannot be trained on; the message says why."""


def _texts(messages, name: str, role: str) -> list[str]:
    """The texts of a conversational field, checked: a non-empty list of {role, content} messages (roles of
    :data:`ROLES`) ending with a ``role`` message, content a string or a list of {"type": "text", "text": str} /
    {"type": "image"} parts."""
    if not isinstance(messages, list) or not messages:
        raise RowProblem(f"field {name!r} must be a non-empty list of chat messages, got {messages!r:.80}")
    texts = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise RowProblem(f"field {name!r} has a message without a 'role' string and 'content': {m!r:.80}")
        if m["role"] not in ROLES:
            raise RowProblem(f"field {name!r} has a message of role {m['role']!r}; roles: {', '.join(ROLES)}")
        content = m["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise RowProblem(f"field {name!r}: content must be text or a list of parts, got {content!r:.80}")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image" and "image" in part:
                raise RowProblem(f"field {name!r}: an image part carries its own image ({part!r:.80}); the row's image comes from 'images'")  # fmt: skip
            elif kind != "image":
                raise RowProblem(f"field {name!r}: a content part must be {{type: text, text: str}} or {{type: image}}, got {part!r:.80}")  # fmt: skip
    if messages[-1]["role"] != role:
        raise RowProblem(f"field {name!r} must end with a {role!r} message, got {messages[-1]['role']!r}")
    return texts


def image_slots(messages, n_images: int) -> int:
    """How many image placeholders TRL's collator finds in a checked field given ``n_images`` images (TRL 1.16
    ``prepare_multimodal_messages``: the first user message written as a plain string gets one per image; every
    {"type": "image"} part outside tool messages is one). It stops a batch unless this equals the images it
    was given: the row's images for the prompt, none for chosen and rejected."""
    plain_user = any(m["role"] == "user" and isinstance(m["content"], str) for m in messages)
    parts = sum(
        isinstance(p, dict) and p.get("type") == "image"
        for m in messages
        if m["role"] != "tool" and isinstance(m["content"], list)
        for p in m["content"]
    )
    return parts + (n_images if plain_user else 0)


def _check_slots(row: dict, n_images: int) -> None:
    slots = image_slots(row["prompt"], n_images)
    if slots != n_images:
        raise RowProblem(
            f"field 'prompt' has {slots} image slot(s) for the row's {n_images} image (an image part each, or the "
            "first user message written as plain text); TRL's collator needs exactly one per image"
        )
    for name in ("chosen", "rejected"):
        if image_slots(row[name], 0):
            raise RowProblem(f"field {name!r} has an image part; the image belongs in the prompt (TRL's collator gives the answers none)")  # fmt: skip


def _crop(value, size) -> list[float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise RowProblem(f"'crop_box' must be null or four numbers [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = value
    if not (0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]):
        raise RowProblem(f"crop_box {value} is not inside the {size[0]}x{size[1]} image")
    return [float(v) for v in value]


def check_row(row: dict, base_dir: Path, adapter=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """The row as the dataset stores it (JSON strings), or RowProblem. With ``adapter`` the placeholder tokens
    and the geometry are checked against the model that will train."""
    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise RowProblem(f"missing field(s) {', '.join(missing)} (need {', '.join(REQUIRED)})")
    images = [row["images"]] if isinstance(row["images"], str) else row["images"]
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        raise RowProblem(f"'images' must be a list with one image path, got {row['images']!r:.80}")
    texts = _texts(row["prompt"], "prompt", "user")
    answers = _texts(row["chosen"], "chosen", "assistant") + _texts(row["rejected"], "rejected", "assistant")
    _check_slots(row, len(images))
    image = images[0]
    if not Path(image).is_absolute() and not Path(image).exists() and (base_dir / image).exists():
        image = str(base_dir / image)
    try:
        size = load_image(image, max_pixels).size  # decoded in full: a truncated file fails here
    except ImageProblem as e:
        raise RowProblem(str(e)) from None
    crop = _crop(row.get("crop_box"), size)
    if adapter is not None:
        for token in adapter.placeholder_tokens():
            if any(token in t for t in texts + answers):
                raise RowProblem(
                    f"a text contains the placeholder token {token!r} (the collator would expand it)"
                )
        _check_geometry(
            row.get("geometry"), adapter, (crop[2] - crop[0], crop[3] - crop[1]) if crop else size
        )
    return {
        "id": str(row.get("id")),
        "image": image,
        "crop_box": json.dumps(crop) if crop is not None else "",
        "prompt": json.dumps(row["prompt"]),
        "chosen": json.dumps(row["chosen"]),
        "rejected": json.dumps(row["rejected"]),
    }


def _check_geometry(geometry, adapter, view_size) -> None:
    """The answers' box format and pixel budget must be the model's: boxes in resized-input pixels (Qwen2.5-VL)
    mean other places under another budget."""
    if not geometry:
        return  # rows written by hand: nothing recorded to check
    fmt = geometry.get("format")
    if fmt and fmt != adapter.fmt:
        raise RowProblem(
            f"the answers are in box format {fmt!r}; the model writes {adapter.fmt!r} (--format)"
        )
    budget = geometry.get("pixel_budget")
    if budget and budget != adapter.pixel_budget():
        raise RowProblem(
            f"made under pixel budget {budget}; the model trains with {adapter.pixel_budget()} "
            "(give --min-pixels / --max-pixels as generate had them)"
        )
    codec = geometry.get("codec") or {}
    if "input_size" in codec and list(codec["input_size"]) != adapter.geometry(view_size).get("input_size"):
        raise RowProblem(
            f"boxes written for a model input of {codec['input_size']} px; this model resizes the "
            f"{view_size[0]}x{view_size[1]} view to {adapter.geometry(view_size)['input_size']}"
        )


def read_pairs(
    path: str | Path, skip_bad: bool = False, problems: list[str] | None = None, adapter=None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[dict]:  # fmt: skip
    """Every row of ``path`` checked (module docstring). Problems name ``path:line``; with ``skip_bad`` they
    are appended to ``problems`` and the row is skipped."""
    path = Path(path)
    problems = problems if problems is not None else []
    if not path.exists():
        raise UserError(f"{path}: no such file (the dpo.jsonl written by `spr pairs`)")
    stale = check_manifest(path)
    if stale:
        raise UserError(
            f"{path}: not the DPO rows of a finished `spr pairs` run ({stale}); run `spr pairs` again"
        )
    try:
        lines = list(enumerate(iter_jsonl(path), start=1))
    except JsonlError as e:
        raise UserError(str(e)) from None
    rows = []
    for lineno, row in lines:
        where = f"{path}:{lineno} (id {row.get('id', '?')!r})"
        try:
            rows.append(check_row({**row, "id": row.get("id", lineno)}, path.parent, adapter, max_pixels))
        except RowProblem as e:
            if not skip_bad:
                raise UserError(f"{where}: {e}; fix it or pass --skip-bad") from None
            problems.append(f"{where}: {e}; skipped")
    if not rows:
        raise UserError(f"{path}: no usable pairs" + (f" ({len(problems)} skipped)" if problems else ""))
    return rows


def load_view(image_path: str, crop_json: str):
    image = load_image(image_path, max_pixels=0)
    if crop_json:
        image = image.crop(tuple(int(round(float(v))) for v in json.loads(crop_json)))
    return image


def _materialize(batch: dict) -> dict:
    """datasets transform: the stored strings -> the conversational example TRL expects, with the image."""
    return {
        "id": batch["id"],
        "images": [[load_view(p, c)] for p, c in zip(batch["image"], batch["crop_box"])],
        "prompt": [json.loads(x) for x in batch["prompt"]],
        "chosen": [json.loads(x) for x in batch["chosen"]],
        "rejected": [json.loads(x) for x in batch["rejected"]],
    }


def build_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of the pairs whose rows come out as TRL's vision preference examples
    (``images``, ``prompt``, ``chosen``, ``rejected``); images load on access."""
    from datasets import Dataset

    return Dataset.from_list(rows).with_transform(_materialize)
