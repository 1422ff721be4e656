"""`spr demo`: the whole SPR method offline in the shapes world.

It is `spr run` with the config shipped beside this module (demo.yaml): shapes world -> regions -> candidates of
the shipped base -> scores (tiny CLIP + localization) -> pairs -> DPO (LoRA) -> merge -> evaluation of the base
and the SPR model on held-out test scenes -> results.md, results.json, report.html. The demo and a user's run are
the same code path; copy demo.yaml to change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import opt

CONFIG = Path(__file__).with_name("demo.yaml")
HELP = "Run the whole SPR method offline in the synthetic shapes world and show what it changed (spr run demo.yaml)."


@dataclass
class DemoConfig:
    """`spr demo`: `spr run --config demo.yaml`, with the run directory and overrides given here."""

    out: str = opt("runs/demo", "run directory (re-running with the same settings resumes)")
    set: list[str] = opt([], "override a field of demo.yaml: section.field=value (e.g. generate.samples=4)")
    overwrite: bool = opt(False, "discard what --out holds and start afresh")


Config = DemoConfig


def demo_config(config: DemoConfig):
    from .. import config as C
    from ..pipeline import RunConfig

    values = {**C.read_yaml(CONFIG), "out": config.out, "overwrite": config.overwrite, "set": list(config.set)}
    return C.build(RunConfig, values, source=str(CONFIG))


def run(config: DemoConfig) -> int:
    from ..pipeline import run_pipeline

    run_pipeline(demo_config(config))
    return 0
