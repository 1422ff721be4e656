"""`spr report`: write report.html for a run directory (or for explicit record files)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..data.jsonl import read_records
from ..data.records import Candidate, Pair, Region, Score
from ..errors import UserError
from .page import ReportData, render_report

HELP = (
    "Write a static HTML report (images with boxes, chosen vs rejected, score histograms, pair statistics)."
)
log = logging.getLogger(__name__)

FILES = {
    "regions": "regions.jsonl",
    "candidates": "candidates.jsonl",
    "scores": "scores.jsonl",
    "pairs": "pairs.jsonl",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run", help="run directory holding regions.jsonl, candidates.jsonl, scores.jsonl, pairs.jsonl"
    )
    for name, default in FILES.items():
        p.add_argument(f"--{name}", help=f"{name} file (default: RUN/{default})")
    p.add_argument("--out", help="HTML file to write (default: RUN/report.html, else beside the scores file)")
    p.add_argument("--max-regions", type=int, default=50, help="show at most this many regions")
    p.add_argument("--title", default=None, help="page title (default: the run directory's name)")


def _read(path: Path | None, cls, required: bool, notes: list[str]):
    if path is None or not path.exists():
        if required:
            raise UserError(f"{path}: no such file (give --run DIR or the file itself)")
        if path is not None:
            notes.append(f"{path.name} not found: shown without it")
        return []
    bad: list[str] = []
    records = read_records(path, cls, skip_bad=True, problems=bad)
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
        return json.loads(f.read_text()) if f.exists() else None
    except ValueError:
        return None


def run(args) -> int:
    run_dir = Path(args.run) if args.run else None
    if run_dir is not None and not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory")

    def path(name: str) -> Path | None:
        given = getattr(args, name)
        if given:
            return Path(given)
        return run_dir / FILES[name] if run_dir else None

    if run_dir is None and not (args.regions and args.scores):
        raise UserError("give --run DIR, or --regions and --scores (and optionally --candidates, --pairs)")
    notes: list[str] = []
    regions = _read(path("regions"), Region, True, notes)
    candidates = _read(path("candidates"), Candidate, False, notes)
    scores = _read(path("scores"), Score, True, notes)
    pairs = _read(path("pairs"), Pair, False, notes)
    if not pairs and candidates:
        from ..pairs import build_pairs

        pairs, _ = build_pairs({r.id: r for r in regions}, {c.id: c for c in candidates}, scores)
        notes.append("pairs computed from the scores (no pairs file)")
    data = ReportData(
        regions={r.id: r for r in regions},
        candidates={c.id: c for c in candidates},
        scores=scores,
        pairs=pairs,
        score_summary=_summary(path("scores")),
        pair_summary=_summary(path("pairs")) if path("pairs") and path("pairs").exists() else None,
        notes=notes,
    )
    out = Path(args.out) if args.out else (run_dir or path("scores").parent) / "report.html"
    title = args.title or (f"SPR run: {run_dir.resolve().name}" if run_dir else "SPR run")
    render_report(data, out, max_regions=args.max_regions, title=title)
    print(f"wrote {out} ({min(len(regions), args.max_regions)} regions at most; open it in a browser)")
    return 0
