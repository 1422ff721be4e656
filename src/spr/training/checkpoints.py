"""Resuming from the newest *complete* checkpoint.

A process killed while ``checkpoint-N/`` is written leaves a directory that transformers would pick and then
fail on ("Can't find a valid checkpoint") on every later run. transformers writes ``trainer_state.json`` last, so
a checkpoint is complete when that file reads as JSON for step N and the weights are there; incomplete ones are
named and skipped. The log of a resumed run is cut back to the checkpoint's step, so no step is listed twice.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def why_incomplete(checkpoint: Path) -> str | None:
    step = int(checkpoint.name.rsplit("-", 1)[1])
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json (the save was interrupted)"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({e})"
    if state.get("global_step") != step:
        return f"trainer_state.json is for step {state.get('global_step')}, not {step}"
    if not any((checkpoint / w).exists() for w in WEIGHTS):
        return "no weights"
    return None


def last_complete_checkpoint(out: str | Path) -> Path | None:
    out = Path(out)
    if not out.is_dir():
        return None
    found = [p for p in out.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    for checkpoint in sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True):
        why = why_incomplete(checkpoint)
        if why is None:
            return checkpoint
        log.warning("skipping %s: %s", checkpoint, why)
    return None


def cut_log(path: Path, step: int) -> None:
    """Keep only the entries of the JSONL log ``path`` up to ``step`` (those of a resumed run come again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by the kill
        if entry.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
