"""The shapes world's ceiling chart (docs/img/ceiling.svg): change against the base at each IoU threshold after
120, 480 and 1920 optimizer steps of continued SFT on ground truth and of one-round SPR, validation scenes.

    .venv/bin/python scripts/ceiling_plot.py runs/select runs/ceiling/steps480 runs/ceiling/steps1920 \\
        --steps 120 480 1920 --seed 0 --out docs/img/ceiling.svg

Each directory is a `spr toy ablate --eval-split val` experiment holding the arms ``continued`` and ``spr``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from spr.report.svg import line_chart_svg

THRESHOLDS = ("acc@0.5", "acc@0.7", "acc@0.8", "acc@0.9", "mean_iou")
COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#7f7f7f")
ARMS = {"continued": "continued SFT (ground truth)", "spr": "SPR (one round)"}


def changes(run: Path) -> dict[str, float | None]:
    if not (run / "results.json").exists():  # not run (yet): a gap in the line
        return dict.fromkeys(THRESHOLDS)
    models = json.loads((run / "results.json").read_text())["models"]
    base, last = models["base"], list(models.values())[-1]
    return {k: last[k] - base[k] for k in THRESHOLDS}


def tick_range(lo: float, hi: float) -> tuple[float, float]:
    """A y range of five equal steps of 0.01, 0.02, 0.04 ... with 0 on a tick, holding ``lo`` and ``hi``."""
    step = 0.01
    while True:
        below = math.ceil(max(-lo, 0) / step - 1e-9)
        if below + math.ceil(max(hi, 0) / step - 1e-9) <= 5:
            return (-below * step, (5 - below) * step)
        step *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", type=Path)
    parser.add_argument("--steps", nargs="+", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/img/ceiling.svg"))
    args = parser.parse_args()
    per_arm = {}
    for arm in ARMS:
        rows = [changes(e / f"{arm}-seed{args.seed}") for e in args.experiments]
        for steps, row in zip(args.steps, rows):
            print(
                arm, steps, " ".join(f"{k} {v:+.3f}" if v is not None else f"{k} -" for k, v in row.items())
            )
        per_arm[arm] = [dict.fromkeys(THRESHOLDS, 0.0), *rows]  # the base itself at step 0
    values = [v for rows in per_arm.values() for r in rows for v in r.values() if v is not None]
    y_range = tick_range(min(values), max(values))
    charts = []
    for arm, rows in per_arm.items():
        series = {k: ([r[k] for r in rows], c) for k, c in zip(THRESHOLDS, COLOURS)}
        charts.append(line_chart_svg(f"{ARMS[arm]}: change against the base", list(range(len(rows))), series,
                                     "optimizer steps (4 examples each)", "change", y_range=y_range,
                                     x_labels=["0 (base)", *map(str, args.steps)]))  # fmt: skip
    width, height = 520, 300
    body = "".join(f'<g transform="translate(0,{i * height})">{c}</g>' for i, c in enumerate(charts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height * len(charts)}" font-family="sans-serif">{body}</svg>\n'
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
