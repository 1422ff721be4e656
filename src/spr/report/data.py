"""What a report shows: the run's records, the stages' summaries and the results, read by :mod:`.command`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.records import Candidate, Pair, Region, Score


@dataclass
class ReportData:
    regions: dict[str, Region]
    candidates: dict[str, Candidate] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    score_summary: dict | None = None
    pair_summary: dict | None = None
    notes: list[str] = field(default_factory=list)
    results: dict | None = None  # results.json: {"eval": {...}, "models": {name: {metric: value}}}
    results_note: str = ""  # why there are no results, when there are none
