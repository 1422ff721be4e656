"""One training lifecycle for `spr train` and `spr grpo`: guard -> resume -> train -> save -> tear down.

- **Guard**: the output directory's lock and settings header (:class:`spr.data.guard.StageOutput`), held by the
  main process for the whole run.
- **Finished stays finished**: the record (``spr_train.json``) is written last, so a directory that has one
  holds a completed run, and running the same command again is a no-op that returns the recorded summary.
- **Resume** from the newest complete checkpoint, with the logs cut back to its step. A checkpoint at the run's
  last step (killed after saving it, before the final weights) is not trained from: transformers would run one
  step past ``max_steps`` there; its weights are the final ones and are copied out as they are.
- **Train** with :class:`SprTrainer`'s checks (a non-finite loss, gradient or weight stops the run), **save** the
  weights, the processor and the record, and **tear down** the process group, also on failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .. import distributed
from ..config import to_dict
from ..errors import UserError
from .callbacks import quiet_transformers_logs
from .checkpoints import WEIGHTS, cut_log, last_complete_checkpoint
from .finite import StopOnNonFinite, check_loss

log = logging.getLogger(__name__)

RECORD_FILE = "spr_train.json"  # the config, the base model, the summary; read by `spr merge`
# what a checkpoint holds besides the files save_model writes
DISK_FULL = 1 << 20  # bytes free below which a failed save is taken for a full disk
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")


class SprTrainer:
    """Mixed into every SPR trainer (before TRL's class): what the run knows before the trainer exists comes
    through the constructor, and a non-finite loss, gradient or weight stops training
    (:mod:`spr.training.finite`)."""

    def __init__(self, *args, precision, skipped: int = 0, callbacks=(), **kwargs):
        self.spr_precision = precision  # spr.training.precision.Precision
        self.spr_skipped = skipped  # input rows that could not be used (--skip-bad)
        super().__init__(*args, callbacks=[*callbacks, StopOnNonFinite()], **kwargs)
        quiet_transformers_logs(self)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        check_loss(loss, self.state.global_step + 1, self.args)
        return loss


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


def finished_summary(out: Path) -> dict | None:
    """The recorded summary of a completed run in ``out`` (its record and its weights there), or None."""
    if not any((out / w).exists() for w in WEIGHTS):
        return None
    try:
        record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {k: v for k, v in record.items() if k not in ("config", "base_model")}


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))


def at_last_step(checkpoint: Path) -> bool:
    state = _state(checkpoint)
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def copy_final_weights(checkpoint: Path, out: Path) -> None:
    """The files save_model wrote into ``checkpoint`` (weights, config, processor), copied into ``out``."""
    for f in sorted(checkpoint.iterdir()):
        if f.is_dir() or f.name in TRAINER_STATE_FILES or f.name.startswith("rng_state"):
            continue
        tmp = out / (f.name + ".tmp")
        shutil.copyfile(f, tmp)
        os.replace(tmp, out / f.name)


def restore_final(trainer, checkpoint: Path, out: Path):
    """The trainer's state and the output weights of a run that had already reached its last step."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    log.info("%s is the run's last step: its weights are the final ones", checkpoint)
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if trainer.is_world_process_zero():
        copy_final_weights(checkpoint, out)
    total, last = logged_loss(trainer.state.log_history)
    return TrainOutput(trainer.state.global_step, total / max(last, 1), {})


def logged_loss(log_history: list[dict], upto: int | None = None) -> tuple[float, int]:
    """The sum of the logged mean losses times the steps each covers (those since the log before it), and the
    last logged step, over the logs up to step ``upto``."""
    total, last = 0.0, 0
    for e in log_history:
        if isinstance(e.get("loss"), int | float) and (upto is None or e["step"] <= upto):
            total, last = total + e["loss"] * (e["step"] - last), e["step"]
    return total, last


def whole_run(result, start: int, logs: list[dict]):
    """``result`` with the mean loss of every step of the run: after a resume from step ``start``, transformers'
    ``training_loss`` is the mean of the resumed steps only. The steps before come from the checkpoint's logged
    means ``logs`` (exact when its step was a logging step; else the steps since the last log count at its
    mean)."""
    if not start or result.global_step <= start:
        return result
    before, last = logged_loss(logs, upto=start)
    before = before / last * start if last else 0.0
    mean = (before + result.training_loss * (result.global_step - start)) / result.global_step
    return result._replace(training_loss=mean)


def _continue_counts(trainer, logs: list[dict]) -> None:
    """TRL's DPO token count goes on from the checkpoint's (it is not in the trainer state; GRPO's is)."""
    logged = [e["num_tokens"] for e in logs if "num_tokens" in e]
    if logged and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = int(logged[-1])


def resumed(trainer, checkpoint: Path | None):
    """``trainer.train()`` from ``checkpoint``; a file there that torch's weights-only loader refuses (a pickle
    that is more than tensors: planted, or from another version) is one line naming the checkpoint."""
    import pickle

    # read before training: the checkpoint may be rotated away by the time it ends (save_total_limit)
    logs = (_state(checkpoint).get("log_history") or []) if checkpoint else []
    _continue_counts(trainer, logs)
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return whole_run(result, checkpoint_step(checkpoint), logs)
    except RuntimeError as e:  # torch.save on a full disk says "unexpected pos" in its zip writer, not ENOSPC
        if shutil.disk_usage(trainer.args.output_dir).free < DISK_FULL:
            raise OSError(errno.ENOSPC, f"No space left on device ({type(e).__name__} while saving)",
                          trainer.args.output_dir) from None  # fmt: skip
        raise
    except pickle.UnpicklingError as e:
        if checkpoint is None:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{checkpoint}: a file holds a pickle that torch's weights-only loader refuses ({first[:120]}); "
            "remove this checkpoint to resume from the one before, or pass --overwrite"
        ) from None


def save_record(trainer, config, out: Path, summary: dict) -> None:
    """Beside the trained weights (main process): the processor (tokenizer, chat template) and the record, last
    (its presence says the run is complete)."""
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        meta = {"config": to_dict(config), "base_model": str(Path(config.model).resolve()), **summary}
        tmp = out / (RECORD_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / RECORD_FILE)


def run_training(
    config,
    stage: str,
    settings: dict,
    build: Callable[[], object],
    summarize: Callable[[object, object, float], dict],
    logs: tuple[str, ...] = ("train_log.jsonl",),
) -> dict:
    """Guard ``config.out``, resume, train the trainer ``build()`` returns, save, tear down; returns
    ``summarize(trainer, train_output, seconds)`` (or, for a run already complete, its recorded summary)."""
    from ..data.guard import StageOutput

    out = Path(config.out)
    main = distributed.is_main_process()
    try:
        with contextlib.ExitStack() as held:
            if main:
                held.enter_context(StageOutput(out, stage, settings, config.overwrite, directory=True))
            done = None if config.overwrite else finished_summary(out)
            if done is not None:
                log.warning("%s holds a completed run (step %s): nothing to do; --overwrite trains it again",
                            out, done.get("global_step"))  # fmt: skip
                return done
            resume_from = last_complete_checkpoint(out) if config.resume else None
            if main:
                for name in logs:
                    cut_log(out / name, checkpoint_step(resume_from))
            if resume_from:
                log.info("resuming from %s", resume_from)
            trainer = build()
            start = time.perf_counter()
            if resume_from is not None and at_last_step(resume_from):
                result = restore_final(trainer, resume_from, out)
            else:
                result = resumed(trainer, resume_from)
                trainer.save_model(str(out))  # the adapter or full model, plus the processing class
            summary = summarize(trainer, result, time.perf_counter() - start)
            save_record(trainer, config, out, summary)
            return summary
    finally:
        distributed.teardown(timeout=distributed.TRAINING_TEARDOWN)
