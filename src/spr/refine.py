"""Refinement (the paper's): in a description's text, every box that matches a reference box with IoU above a
threshold (0.5) is replaced by that reference box, written in the candidate's own box format.

How a box is replaced: the reference box is shifted into the view the model saw (the crop when the prompt showed
a crop, clipped to it), written with ``formats.format_box`` in the candidate's format and geometry, and put at the
box's ``span`` in the text; spans are replaced right to left so earlier spans stay valid. The refined text is
then parsed again, so its groundings (and spans) are exactly what a reader of the text gets.

Unmatched boxes (no reference above the threshold): ``unmatched="keep"`` (default) leaves them as written, so the
refined text still says everything the model said; ``unmatched="drop"`` removes the box's own text (the phrase
stays in the sentence), so the refined text keeps only boxes backed by a reference; ``unmatched="median"`` (not
in the paper: label-free) writes the coordinate-wise median of the model's own boxes for that object across the
samples of the same prompt (the box and, from each other sample, its best-overlapping box with IoU above the
threshold), when at least ``MEDIAN_MIN_SAMPLES`` samples agree on the object; else the box is kept. Sampling
spreads a model's boxes around its mean belief, and the median of several is closer to the object than one draw.

This module also holds the candidate helpers the scoring stage shares: the view a candidate was written in and
its usable groundings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import boxes as B
from . import formats
from .data.records import Candidate, Region
from .data.summary import Count, Counters

UNMATCHED = ("keep", "drop", "median")
MEDIAN_MIN_SAMPLES = 3
"""Samples (this box's own included) that must hold a box of the object before their median replaces it."""


@dataclass
class RefineConfig:
    threshold: float = 0.5
    """A box is replaced when its IoU with a reference box is greater than this."""
    unmatched: str = "keep"
    """'keep' boxes without a matching reference as written, 'drop' their box text, or write the 'median' of the
    prompt's sampled boxes for that object."""
    matching: str = "best"
    """'best': each box snaps to its best reference (two boxes may snap to one reference);
    'one_to_one': Hungarian assignment, a reference replaces at most one box."""

    def __post_init__(self):
        if self.unmatched not in UNMATCHED:
            raise ValueError(
                f"refine unmatched must be one of {', '.join(UNMATCHED)}, got {self.unmatched!r}"
            )
        if self.matching not in ("best", "one_to_one"):
            raise ValueError(f"refine matching must be 'best' or 'one_to_one', got {self.matching!r}")


@dataclass
class View:
    """What the model saw: its size, and where its top-left corner sits in the original image."""

    size: tuple[int, int]
    offset: tuple[float, float] = (0.0, 0.0)

    def to_view(self, box) -> tuple[float, float, float, float]:
        return B.clip(B.shift(box, -self.offset[0], -self.offset[1]), self.size)

    def to_original(self, box) -> tuple[float, float, float, float]:
        return B.shift(box, *self.offset)


def view_of(candidate: Candidate, region: Region) -> View:
    """The view of ``candidate``'s prompt: the crop when ``crop_box`` is set, else the full image."""
    crop = candidate.crop_box
    if crop is not None and B.problem(crop) is None:
        x1, y1, x2, y2 = (float(v) for v in crop)
        return View((int(round(x2 - x1)), int(round(y2 - y1))), (x1, y1))
    return View(tuple(int(v) for v in region.image_size))


@dataclass
class Usable:
    """The groundings of a candidate that can be scored (boxes valid, inside the image) and what was wrong."""

    groundings: list[dict] = field(default_factory=list)  # {"phrase", "box", "span"}, original pixels
    problems: list[str] = field(default_factory=list)  # "kind: detail"

    @property
    def boxes(self) -> np.ndarray:
        return B.as_array([g["box"] for g in self.groundings])

    @property
    def phrases(self) -> list[str | None]:
        return [g.get("phrase") for g in self.groundings]


def usable_groundings(candidate: Candidate, region: Region) -> Usable:
    """Validated groundings of ``candidate``. Stored groundings are used as they are; a candidate without stored
    groundings but with a known format is parsed. Never raises; every problem is named by kind."""
    out = Usable()
    text = candidate.text if isinstance(candidate.text, str) else ""
    if not text.strip():
        out.problems.append("empty text")
    if candidate.problems:
        out.problems.extend(f"codec problem: {p}" for p in candidate.problems)
    raw = candidate.groundings
    if not raw and text.strip() and candidate.fmt:
        raw = parse_in_view(text, candidate, region, out.problems)
    size = tuple(region.image_size)
    for i, g in enumerate(raw or []):
        where = f"grounding {i + 1}"
        box = g.get("box") if isinstance(g, dict) else None
        try:
            vals = [float(v) for v in box]
        except (TypeError, ValueError):
            vals = []
        if len(vals) != 4:
            out.problems.append(f"malformed grounding: {where}: {g!r}"[:200])
            continue
        if not all(np.isfinite(vals)):
            out.problems.append(f"non-finite box: {where}: {vals}")
            continue
        if not (vals[2] > vals[0] and vals[3] > vals[1]):
            out.problems.append(f"degenerate box: {where}: {vals}")
            continue
        clipped = B.clip(vals, size)
        if clipped != tuple(vals):
            out.problems.append(f"box outside the image: {where}: {vals} clipped to {size[0]}x{size[1]}")
            if not B.is_valid(clipped):
                continue
        span = g.get("span")
        out.groundings.append(
            {"phrase": g.get("phrase"), "box": list(clipped), "span": list(span) if span else None}
        )
    if not out.groundings:
        out.problems.append("no box: no parseable box in the text")
    return out


def parse_in_view(text: str, candidate: Candidate, region: Region, problems: list[str]) -> list[dict]:
    """Parse ``text`` in the candidate's format and view; boxes come back in original-image pixels."""
    view = view_of(candidate, region)
    try:
        parsed = formats.parse(text, candidate.fmt, image_size=view.size, **(candidate.geometry or {}))
    except (KeyError, ValueError) as e:
        problems.append(f"codec problem: cannot parse with format {candidate.fmt!r}: {e}")
        return []
    problems.extend(f"codec problem: {p}" for p in parsed.problems)
    return [
        {"phrase": g.phrase, "box": list(view.to_original(g.box)), "span": list(g.span) if g.span else None}
        for g in parsed
    ]


def problem_kind(problem: str) -> str:
    return problem.split(":", 1)[0]


# The kinds of problem found in a text (each counted once per text that has it, :func:`count_kinds`).
PROBLEM_KINDS = Counters({
    "codec problem": Count(
        "scored texts (originals and refined texts) with at least one piece the box codec could not read, once per "
        "text however many pieces it has; a refined text is parsed again and keeps the original's unreadable piece, "
        "so one candidate can count twice. Not the same count as generate's candidates with parse problems", "text"),
    "empty text": Count("scored texts that are empty (semantic score 0)", "text"),
    "no box": Count("scored texts without a usable box (localization score 0)", "text"),
    "malformed grounding": Count("scored texts with a stored grounding that is not a box (skipped)", "text"),
    "non-finite box": Count("scored texts with a box holding NaN or infinity (dropped)", "text"),
    "degenerate box": Count("scored texts with a box of zero or negative width or height (dropped)", "text"),
    "box outside the image": Count("scored texts with a box reaching outside the image (clipped to it)", "text"),
    "not refined": Count("refined texts in which some box could not be replaced (kept as written)", "text"),
})  # fmt: skip


@dataclass
class Refined:
    text: str
    groundings: list[dict]  # parsed from the refined text, original-image pixels
    replaced: int = 0  # boxes whose text changed to a reference box
    medians: int = 0  # unmatched boxes whose text changed to the samples' median box
    exact: int = 0  # boxes that matched a reference and already read as it
    dropped: int = 0
    kept: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.replaced > 0 or self.dropped > 0 or self.medians > 0


def assign_references(predictions, references, config: RefineConfig) -> list[int]:
    """For each predicted box, the index of the reference that replaces it, or -1."""
    pred, ref = B.as_array(predictions), B.as_array(references)
    out = [-1] * len(pred)
    if not len(pred) or not len(ref):
        return out
    ious = B.iou(pred, ref)
    if config.matching == "best":
        cols, vals = B.best_match(ious)
        return [int(c) if v > config.threshold else -1 for c, v in zip(cols, vals)]
    for i, j, v in B.hungarian_match(ious):
        if v > config.threshold:
            out[i] = j
    return out


def sample_median(box, siblings: list[np.ndarray], threshold: float):
    """The coordinate-wise median of ``box`` and, from each sibling sample's boxes (each (K, 4)), the one that
    overlaps it most with IoU above ``threshold``; None when fewer than ``MEDIAN_MIN_SAMPLES`` samples hold one."""
    found = [B.as_array([box])[0]]
    for boxes in siblings:
        if len(boxes):
            ious = B.iou(B.as_array([box]), boxes)[0]
            k = int(np.argmax(ious))
            if ious[k] > threshold:
                found.append(boxes[k])
    if len(found) < MEDIAN_MIN_SAMPLES:
        return None
    return tuple(float(v) for v in np.median(np.stack(found), axis=0))


def refine_candidate(
    candidate: Candidate,
    region: Region,
    references,
    config: RefineConfig | None = None,
    usable: Usable | None = None,
    siblings: list[np.ndarray] = (),
) -> Refined:
    """The refined text of ``candidate`` against reference boxes (R, 4) (module docstring); ``siblings`` are the
    usable boxes (original pixels) of the other samples of the same prompt, read by ``unmatched="median"``."""
    cfg = config or RefineConfig()
    usable = usable or usable_groundings(candidate, region)
    text = candidate.text if isinstance(candidate.text, str) else ""
    result = Refined(text=text, groundings=[dict(g) for g in usable.groundings])
    if not usable.groundings:
        return result
    try:
        formats.get(candidate.fmt)
    except KeyError:
        result.problems.append(f"not refined: unknown box format {candidate.fmt!r}")
        return result
    view = view_of(candidate, region)
    refs = B.as_array(references)
    target = assign_references(usable.boxes, refs, cfg)
    edits: list[tuple[int, int, str]] = []
    medians: set[int] = set()  # span starts of median edits
    for g, j in zip(usable.groundings, target):
        span = g.get("span")
        median = (
            sample_median(g["box"], siblings, cfg.threshold) if j < 0 and cfg.unmatched == "median" else None
        )
        if j < 0 and median is None and cfg.unmatched != "drop":
            result.kept += 1
            continue
        if not span or not (0 <= span[0] <= span[1] <= len(text)):
            result.problems.append("not refined: box without a span in the text")
            result.kept += 1
            continue
        if j < 0 and median is None:
            edits.append((span[0], span[1], ""))
            continue
        try:
            new = formats.format_box(
                view.to_view(refs[j] if j >= 0 else median),
                candidate.fmt,
                image_size=view.size,
                **(candidate.geometry or {}),
            )
        except ValueError as e:  # the reference lies outside the crop the model saw
            result.problems.append(f"not refined: {e}")
            result.kept += 1
            continue
        if new == text[span[0] : span[1]]:
            result.exact += 1 if j >= 0 else 0
            result.kept += 1 if j < 0 else 0
            continue
        edits.append((span[0], span[1], new))
        if j < 0:
            medians.add(span[0])
    out, last_start = text, len(text) + 1
    for start, end, new in sorted(edits, reverse=True):
        if end > last_start:  # overlapping spans: keep the text as it is there
            continue
        if new and start in medians:
            result.medians += 1
        elif new:
            result.replaced += 1
        else:
            result.dropped += 1
            if start > 0 and out[start - 1 : start] == " " and out[end : end + 1] in (" ", ""):
                start -= 1
        out = out[:start] + new + out[end:]
        last_start = start
    if not result.changed:
        return result
    result.text = out
    problems: list[str] = []
    result.groundings = parse_in_view(out, candidate, region, problems)
    result.problems.extend(problems)
    return result


def count_kinds(problems: list[str], counter: Counter) -> None:
    """Count each kind of problem once per candidate."""
    for kind in {problem_kind(p) for p in problems}:
        counter[kind] += 1
