"""The records that stages exchange, one JSON object per line. All boxes are original-image pixels.

Each record has a stable ``id``; stages skip ids already written, which is what makes them resumable.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

Box = list[float]


class RecordError(ValueError):
    """A record that does not have the fields its type needs."""


@functools.cache
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class Record:
    kind: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, values as they are (no deep copy: records hold JSON values, written as read;
        ``dataclasses.asdict`` cost 6x the JSON encoding)."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise RecordError(f"{cls.kind} record must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - data.keys())
        if missing:
            raise RecordError(
                f"{cls.kind} record {data.get('id', '?')!r} is missing field(s): {', '.join(missing)}"
            )
        bad = [k for k in names if (k == "id" or k.endswith("_id")) and isinstance(data.get(k), list | dict)]
        if bad:  # ids key dicts and sets: a list or an object there would fail far from the file
            raise RecordError(
                f"{cls.kind} record: {bad[0]} must be a string or a number, got {type(data[bad[0]]).__name__}"
            )
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Region(Record):
    """A query region: several annotated objects and the box that unites them."""

    kind: ClassVar[str] = "region"
    id: str
    image: str  # path to the image file, as given (absolute or relative to the working directory)
    image_size: list[int]  # [W, H] of the original image
    region_box: Box
    objects: list[dict]  # [{"label": str, "box": [x1, y1, x2, y2]}]
    source: str = ""  # where the region came from, e.g. "coco:instances_val2017.json:image=139"
    image_id: Any = None

    def __post_init__(self):
        def four_numbers(v) -> bool:
            return (
                isinstance(v, list | tuple)
                and len(v) == 4
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            )

        where = f"region record {self.id!r}"
        if not isinstance(self.image, str):
            raise RecordError(f"{where}: 'image' must be a path, got {self.image!r}")
        size = self.image_size
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise RecordError(f"{where}: 'image_size' must be [width, height], got {size!r}")
        if not four_numbers(self.region_box):
            raise RecordError(f"{where}: 'region_box' must be four numbers, got {self.region_box!r}")
        if not isinstance(self.objects, list):
            raise RecordError(f"{where}: 'objects' must be a list, got {type(self.objects).__name__}")
        for i, o in enumerate(self.objects):
            if not (isinstance(o, dict) and "label" in o and four_numbers(o.get("box"))):
                raise RecordError(
                    f"{where}: objects[{i}] must be {{label, box: [x1, y1, x2, y2]}}, got {o!r:.80}"
                )


@dataclass
class Candidate(Record):
    """One sampled grounded description of a region."""

    kind: ClassVar[str] = "candidate"
    id: str  # "{region_id}/{prompt_id}/{sample}"
    region_id: str
    prompt_id: str
    prompt: str  # the user-turn text as sent to the model
    sample: int
    text: str  # the raw model output
    # [{"phrase": str|None, "box": [..], "span": [s, e]}]
    groundings: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the codec could not read
    fmt: str = ""  # box codec the text is written in
    geometry: dict = field(default_factory=dict)  # codec geometry (e.g. resized input size) for re-rendering
    # the processor's {min_pixels, max_pixels} when it has one
    pixel_budget: dict = field(default_factory=dict)
    image: str = ""  # the image the prompt showed (the crop path is not stored: crops are recomputed)
    crop_box: Box | None = None  # set when the prompt showed only this part of the image
    new_tokens: int = 0  # tokens the model generated for it (its end-of-sequence token included)


@dataclass
class Score(Record):
    """Scores of one candidate (original or refined) and the matches that explain them."""

    kind: ClassVar[str] = "score"
    id: str  # candidate id, with the suffix "#refined" for a refined candidate
    candidate_id: str
    region_id: str
    refined: bool
    text: str
    semantic: float
    localization: float
    total: float
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    matches: list[dict] = field(default_factory=list)  # [{"reference": i, "prediction": j, "iou": x}]
    groundings: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Pair(Record):
    """A preference pair: two answers to one prompt of one region, chosen and rejected by a pairing rule."""

    kind: ClassVar[str] = "pair"
    id: str
    region_id: str
    image: str
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    chosen_id: str = ""
    rejected_id: str = ""
    crop_box: Box | None = None
    chosen_groundings: list[dict] = field(default_factory=list)
    rejected_groundings: list[dict] = field(default_factory=list)
    rule: str = "paper"  # the pairing rule that made it (spr.pairs)
    fmt: str = ""  # box format of both texts
    geometry: dict = field(default_factory=dict)  # codec geometry of the view the prompt showed
    # the processor's pixel budget the texts were written under
    pixel_budget: dict = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score
