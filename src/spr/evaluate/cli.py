"""`spr eval <task>`: one subcommand per registered evaluation task (:mod:`spr.evaluate.task`), plus `compare`."""

from __future__ import annotations

from .task import TASKS

HELP = "Evaluate a model: referring expressions, grounded descriptions, phrase grounding, captions; compare runs."


def __getattr__(name: str):
    # Computed on access, so that tasks registered after import (a user's own) appear too.
    if name == "SUBCOMMANDS":
        return {**TASKS, "compare": "spr.evaluate.compare"}
    raise AttributeError(name)
