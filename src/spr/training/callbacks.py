"""The training log: every log entry as one JSON line in ``train_log.jsonl``, and one compact line per log
step on stderr (step, loss, and the trainer's main metrics) instead of transformers' raw metric dicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm
from transformers import TrainerCallback

# metric name in the logs -> short name on the console, in this order
SHOWN = {
    "loss": "loss",
    "rewards/accuracies": "reward acc",
    "rewards/margins": "margin",
    "reward": "reward",
    "frac_reward_zero_std": "no-signal groups",
    "completions/mean_length": "length",
    "learning_rate": "lr",
}


def compact(step: int, max_steps: int, logs: dict) -> str:
    parts = [f"step {step}/{max_steps}"]
    for key, name in SHOWN.items():
        v = logs.get(key)
        if isinstance(v, int | float):
            parts.append(f"{name} {v:.3g}" if key == "learning_rate" else f"{name} {v:.4f}")
    return " | ".join(parts)


class TrainLog(TrainerCallback):
    """Appends each log to ``path`` (main process only) and prints its compact line unless ``quiet``."""

    def __init__(self, path: Path, quiet: bool = False):
        self.path, self.quiet = Path(path), quiet

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        if not self.quiet and any(k in logs for k in SHOWN):
            tqdm.write(compact(state.global_step, state.max_steps, logs), file=sys.stderr)


def quiet_transformers_logs(trainer) -> None:
    """Drop transformers' own printing of the metric dicts (its progress bar stays)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in list(trainer.callback_handler.callbacks):
        if isinstance(cb, ProgressCallback):
            cb.on_log = lambda *a, **k: None  # the bar, without `tqdm.write(str(logs))`
        elif isinstance(cb, PrinterCallback):
            trainer.remove_callback(cb)
