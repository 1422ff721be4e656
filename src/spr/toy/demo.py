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

    values = {
        **C.read_yaml(CONFIG),
        "out": config.out,
        "overwrite": config.overwrite,
        "set": list(config.set),
    }
    return C.build(RunConfig, values, source=str(CONFIG))


def tiny_model_threads() -> None:
    """One torch thread unless OMP_NUM_THREADS says otherwise: the shapes world's tiny models run as fast on one
    (eval rec of the base: 11.2 s on one, 13.3 s on two, idle 2-core machine), and two threads next to any other
    busy process stall (the base's description eval went from 0.2 to 9 s per sample)."""
    import os

    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def run(config: DemoConfig) -> int:
    from ..pipeline import run_pipeline

    tiny_model_threads()
    run_pipeline(demo_config(config))
    return 0
