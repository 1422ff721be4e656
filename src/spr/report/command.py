"""`spr report`: write report.html for a run directory (or for explicit record files)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import opt
from ..data.jsonl import read_records
from ..data.records import Candidate, Pair, Region, Score
from ..errors import UserError
from .data import ReportData
from .page import render_report

HELP = (
    "Write a static HTML report (results per IoU threshold, chosen vs rejected on their images, score "
    "histograms, what every counter counts)."
)
log = logging.getLogger(__name__)

FILES = {
    "regions": "regions.jsonl",
    "candidates": "candidates.jsonl",
    "scores": "scores.jsonl",
    "pairs": "pairs.jsonl",
    "results": "results.json",
}


@dataclass
class ReportConfig:
    """`spr report`: the HTML page of a run."""

    run: str | None = opt(
        None, "run directory holding regions.jsonl, candidates.jsonl, scores.jsonl, pairs.jsonl, results.json"
    )
    regions: str | None = opt(None, "regions file", default_text="RUN/regions.jsonl")
    candidates: str | None = opt(None, "candidates file", default_text="RUN/candidates.jsonl")
    scores: str | None = opt(None, "scores file", default_text="RUN/scores.jsonl")
    pairs: str | None = opt(None, "pairs file", default_text="RUN/pairs.jsonl")
    results: str | None = opt(
        None,
        'evaluation results: {"eval": {split, rec_n, description_n, note}, "models": {name: {metric: value}}}',
        default_text="RUN/results.json",
    )
    out: str | None = opt(
        None, "HTML file to write", default_text="RUN/report.html, else beside the scores file"
    )
    max_regions: int = opt(50, "show at most this many regions")
    title: str | None = opt(None, "page title", default_text="the run directory's name")

    def __post_init__(self):
        if self.max_regions < 0:
            raise ValueError("max_regions must be 0 or more")


Config = ReportConfig


def _read(path: Path | None, cls, required: bool, notes: list[str]):
    if path is None or not path.exists():
        if required:
            raise UserError(f"{path}: no such file (give --run DIR or the file itself)")
        if path is not None:
            notes.append(f"{path.name} not found: shown without it")
        return []
    bad: list[str] = []
    records = read_records(path, cls, skip_bad=True, problems=bad)
    if bad and not records:  # not one record of the kind: another stage's file (swapped), not a damaged one
        raise UserError(f"{path}: not one {cls.kind} record in it (another stage's file?); first: {bad[0]}")
    if required and not records:
        raise UserError(f"{path}: no {cls.kind} records; nothing to report")
    if bad:
        notes.append(f"{path.name}: {len(bad)} malformed record(s) skipped")
        for msg in bad[:3]:
            log.warning("skipped: %s", msg)
    return records


def _summary(path: Path | None) -> dict | None:
    if path is None:
        return None
    f = path.with_suffix(".summary.json")
    try:
        data = json.loads(f.read_text()) if f.exists() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_results(path: Path | None) -> tuple[dict | None, str]:
    """``results.json`` when it has a ``models`` mapping, else None and the one line saying why."""
    if path is None:
        return None, "No results: no results.json given (--results FILE or RUN/results.json)."
    if not path.exists():
        return None, f"No results: {path.name} not found (evaluate the models to get one)."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"No results: {path.name} is not readable JSON ({e})."
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or not data["models"]:
        return None, f'No results: {path.name} has no "models" mapping (an older format?).'
    return data, ""


def run(config: ReportConfig) -> int:
    run_dir = Path(config.run) if config.run else None
    if run_dir is not None and not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory")

    def path(name: str) -> Path | None:
        given = getattr(config, name)
        if given:
            return Path(given)
        return run_dir / FILES[name] if run_dir else None

    if run_dir is None and not (config.regions and config.scores):
        raise UserError("give --run DIR, or --regions and --scores (and optionally --candidates, --pairs)")
    notes: list[str] = []
    regions = _read(path("regions"), Region, True, notes)
    candidates = _read(path("candidates"), Candidate, False, notes)
    scores = _read(path("scores"), Score, True, notes)
    pairs = _read(path("pairs"), Pair, False, notes)
    pair_summary = _summary(path("pairs")) if path("pairs") and path("pairs").exists() else None
    if not pairs and candidates:
        from ..pairs import build_pairs

        pairs, _ = build_pairs({r.id: r for r in regions}, {c.id: c for c in candidates}, scores)
        notes.append("pairs computed from the scores with the default settings (no pairs file)")
    results, results_note = read_results(path("results"))
    data = ReportData(
        regions={r.id: r for r in regions},
        candidates={c.id: c for c in candidates},
        scores=scores,
        pairs=pairs,
        score_summary=_summary(path("scores")),
        pair_summary=pair_summary,
        notes=notes,
        results=results,
        results_note=results_note,
    )
    out = Path(config.out) if config.out else (run_dir or path("scores").parent) / "report.html"
    title = config.title or (f"SPR run: {run_dir.resolve().name}" if run_dir else "SPR run")
    render_report(data, out, max_regions=config.max_regions, title=title)
    print(f"wrote {out} ({min(len(regions), config.max_regions)} regions at most; open it in a browser)")
    return 0
