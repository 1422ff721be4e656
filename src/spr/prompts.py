"""Grounded region-description prompts, diversified as in the paper.

Three built-in views of one region:
- ``region_box``: the full image, with the region's box written in the model's own box format;
- ``crop``: only the cropped region is shown;
- ``hints``: the full image and region box, plus the labels of the annotated objects inside as hints.
Each asks for a detailed description that gives a box for every object it mentions. Every candidate records the
id of the prompt that produced it.

Own templates come from a JSON or YAML file holding a list of ``{id, view: full|crop, template}``; a template
may use ``{region}`` (the region box in the model's format, in coordinates of the image the model sees) and
``{hints}`` (the labels of the region's objects, e.g. ``"2 red box, 1 dog"``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import boxes as B
from . import formats
from .errors import UserError

VIEWS = ("full", "crop")
ASK = "Give a bounding box for every object you mention."


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    view: str
    """``full``: the whole image is shown; ``crop``: only the region is shown."""
    template: str
    """User-turn text; ``{region}`` and ``{hints}`` are filled in."""

    def __post_init__(self):
        if self.view not in VIEWS:
            raise UserError(f"prompt {self.id!r}: view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        try:
            self.template.format(region="", hints="")
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(
                f"prompt {self.id!r}: bad template (only {{region}} and {{hints}} may be used): {e}"
            ) from None


BUILTIN: dict[str, PromptTemplate] = {
    t.id: t
    for t in [
        PromptTemplate(
            "region_box", "full", f"Describe the region {{region}} of this image in detail. {ASK}"
        ),
        PromptTemplate("crop", "crop", f"Describe this image in detail. {ASK}"),
        PromptTemplate(
            "hints",
            "full",
            f"Describe the region {{region}} of this image in detail. It contains: {{hints}}. {ASK}",
        ),
    ]
}


@dataclass
class RenderedPrompt:
    """One prompt for one region, ready to send: the text and the view of the image it goes with."""

    prompt_id: str
    view: str
    text: str
    crop_box: list[int] | None
    """Crop of the original image shown to the model (integer pixels), None for the full image."""
    view_size: tuple[int, int]
    """(W, H) of the image the model sees: what box codecs need as ``image_size``."""
    geometry: dict = field(default_factory=dict)

    @property
    def origin(self) -> tuple[float, float]:
        """Where the view's top-left corner sits in the original image."""
        return (self.crop_box[0], self.crop_box[1]) if self.crop_box else (0, 0)

    def view_image(self, image):
        """The part of the original ``image`` (PIL) this prompt shows."""
        return image.crop(tuple(self.crop_box)) if self.crop_box else image

    def groundings_to_original(self, groundings) -> list[dict]:
        """Groundings parsed in view coordinates -> dicts with boxes in original-image pixels."""
        out = []
        for g in groundings:
            d = g.to_dict()
            d["box"] = list(B.shift(d["box"], *self.origin))
            out.append(d)
        return out


def crop_box_for(box, image_size) -> list[int]:
    """The integer crop that contains ``box`` (floor / ceil), clipped to the image, at least 1 px each side."""
    w, h = image_size
    x1 = min(max(0, math.floor(box[0])), w - 1)
    y1 = min(max(0, math.floor(box[1])), h - 1)
    x2 = max(min(w, math.ceil(box[2])), x1 + 1)
    y2 = max(min(h, math.ceil(box[3])), y1 + 1)
    return [x1, y1, x2, y2]


def hints_text(objects) -> str:
    """``"2 red box, 1 dog"``: the labels of the annotated objects, counted, in order of first appearance."""
    counts = Counter(str(o["label"]) for o in objects)
    return ", ".join(f"{n} {label}" for label, n in counts.items())


def render(template: PromptTemplate, region, fmt: str, geometry_fn=None) -> RenderedPrompt:
    """Fill ``template`` for ``region`` (a Region record) in box format ``fmt``.

    ``geometry_fn(view_size) -> dict`` gives the codec geometry of an image of that size (the model adapter's
    ``geometry``); the box text and the recorded geometry both use it."""
    image_size = tuple(int(v) for v in region.image_size)
    box = [float(v) for v in region.region_box]
    if template.view == "crop":
        crop = crop_box_for(box, image_size)
        view_size = (crop[2] - crop[0], crop[3] - crop[1])
        view_box = B.clip(B.shift(box, -crop[0], -crop[1]), view_size)
    else:
        crop, view_size, view_box = None, image_size, box
    geometry = dict(geometry_fn(view_size)) if geometry_fn else {}
    fields = {"region": "", "hints": hints_text(region.objects)}
    if "{region}" in template.template:
        fields["region"] = formats.format_box(view_box, fmt, image_size=view_size, **geometry)
    text = template.template.format(**fields)
    return RenderedPrompt(template.id, template.view, text, crop, view_size, geometry)


def load_templates(path: str | Path) -> list[PromptTemplate]:
    """Templates from a JSON or YAML file: a list of ``{id, view, template}`` objects."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read prompt templates: {e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        from .config import load_yaml

        data = load_yaml(raw, str(path))  # size, encoding, nesting and alias limits, one line each
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty list of {{id, view, template}} objects")
    out = []
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict) or not {"id", "view", "template"} <= item.keys():
            raise UserError(f"{path}: entry {i} must have the keys id, view and template, got {item!r}")
        out.append(PromptTemplate(str(item["id"]), str(item["view"]), str(item["template"])))
    return out


def select_templates(spec: str | None = None) -> list[PromptTemplate]:
    """Templates named by ``spec``: comma-separated built-in ids and/or template files (all of a file's
    templates). None or empty: every built-in template."""
    if not spec:
        return list(BUILTIN.values())
    out: list[PromptTemplate] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in BUILTIN:
            out.append(BUILTIN[item])
        elif Path(item).suffix.lower() in (".json", ".yaml", ".yml") or Path(item).exists():
            out.extend(load_templates(item))
        else:
            raise UserError(
                f"unknown prompt {item!r}: give built-in ids ({', '.join(BUILTIN)}) or a JSON/YAML template file"
            )
    ids = [t.id for t in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(
            f"prompt ids must be unique (they are part of candidate ids); repeated: {', '.join(dup)}"
        )
    bad = [i for i in ids if "/" in i]
    if bad:
        raise UserError(
            f"prompt ids may not contain '/' (candidate ids are region/prompt/sample): {', '.join(bad)}"
        )
    return out
