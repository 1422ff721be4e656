"""The samples the evaluation readers make: one module of records that every reader (:mod:`.readers`,
:mod:`.layouts_parquet`, :mod:`.refl4`) imports, so that the readers do not import each other for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Box = tuple[float, float, float, float]


@dataclass
class RecSample:
    """One referring expression and the box of its referent."""

    id: str
    image: str
    expression: str
    box: Box
    split: str = "all"
    file_name: str | None = None
    """The image's name in the benchmark, where the image path does not carry it (images embedded in parquet
    are cached under their hash): the train/eval overlap check compares names."""
    source_id: Any = None
    """The annotation id as the benchmark spells it (Ref-L4's submission file wants its integer ids)."""
    benchmark: str = ""
    """Set where a benchmark-specific output applies (``"ref-l4"``: the submission file)."""
    size: float | None = None
    """The referent's size as the benchmark computes it, ``sqrt(w * h)`` on its own ``[x, y, w, h]`` (Ref-L4):
    the size buckets read it, since the width of the converted box can differ in the last bit. None: from box."""


@dataclass
class CaptionSample:
    """One region and its reference captions."""

    id: str
    image: str
    box: Box
    captions: list[str] = field(default_factory=list)
    split: str = "all"
