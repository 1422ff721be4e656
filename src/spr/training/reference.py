"""Reference log-probs once: the frozen reference's log-probabilities of every pair's chosen and rejected answer,
computed in one pass before training and stored beside ``dpo.jsonl``, so that the training steps run no
reference forward at all.

The file is ``<dpo stem>.ref.<reference fingerprint>.<conditions>.jsonl``: the reference model's
:func:`~spr.data.guard.fingerprint` and a short hash of what else decides the numbers (weights dtype, mixed
precision, ``max_length``, pixel budget, family). Its settings header (``.settings.json`` beside it) holds the
same; a file whose header names another reference or other conditions is refused, never used. One record per
pair: ``{"id", "digest", "chosen", "rejected"}``, where ``digest`` hashes the pair's stored row (image path,
crop, prompt and answers), so a pair that ``spr pairs`` rewrote under the same id is computed again. The pass
is resumable (records are appended as they are computed; a killed pass goes on where it stopped) and shared
between data-parallel processes (each computes a slice, the main process writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

STAGE = "reference log-probs"
ROW_FIELDS = ("image", "crop_box", "prompt", "chosen", "rejected")


def _short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def row_digest(row: dict) -> str:
    """What a stored reference value was computed from (the dataset row's strings)."""
    return _short_hash([row[k] for k in ROW_FIELDS])


def reference_settings(model_dir, precision, max_length, adapter) -> dict:
    """Everything that decides the reference's log-probs besides the pairs themselves."""
    from ..data.guard import fingerprint

    return {
        "reference": fingerprint(model_dir),
        "weights_dtype": precision.load_dtype,
        "bf16": precision.bf16,
        "max_length": max_length,
        "pixel_budget": adapter.pixel_budget(),
        "family": adapter.family,
    }


def cache_path(data: str | Path, settings: dict) -> Path:
    data = Path(data)
    conditions = _short_hash({k: v for k, v in settings.items() if k != "reference"})[:8]
    return data.with_name(f"{data.stem}.ref.{settings['reference']['fingerprint']}.{conditions}.jsonl")


def _stored(path: Path, digests: dict[str, str]) -> tuple[dict[str, tuple[float, float]], bool]:
    """The stored values of the current pairs, and whether the file holds others (stale or removed pairs)."""
    from ..data.jsonl import iter_jsonl

    values, others = {}, False
    if not path.exists():
        return values, others
    for rec in iter_jsonl(path, skip_bad=True):
        rid = str(rec.get("id"))
        if digests.get(rid) == rec.get("digest") and rid not in values:
            values[rid] = (float(rec["chosen"]), float(rec["rejected"]))
        else:
            others = True
    return values, others


@contextlib.contextmanager
def _writer(path: Path, settings: dict, keep: dict, digests: dict, rewrite: bool, main: bool):
    """``write(id, chosen, rejected)`` appending to ``path`` under its lock and settings header (main process);
    a no-op elsewhere. ``rewrite`` first drops the records that are not in ``keep``."""
    from ..data.guard import StageOutput
    from ..data.jsonl import JsonlWriter, write_jsonl

    if not main:
        yield lambda *_: None
        return
    with StageOutput(path, STAGE, settings):
        if rewrite:
            write_jsonl(path, [_record(rid, digests[rid], *v) for rid, v in keep.items()])
        with JsonlWriter(path) as out:
            yield lambda rid, chosen, rejected: out.write(_record(rid, digests[rid], chosen, rejected))


def _record(rid: str, digest: str, chosen: float, rejected: float) -> dict:
    return {"id": rid, "digest": digest, "chosen": chosen, "rejected": rejected}


def _batches(trainer, indices: list[int], batch_size: int, count: int):
    """``count`` ``(indices, batch)`` of this process's pairs, loaded as training loads them (the trainer's
    collator and dataloader workers, so that images are decoded while the model runs); ``([], None)`` once this
    process has none left, so that every process takes part in every exchange."""
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(
        Subset(trainer.train_dataset, indices),
        batch_size=batch_size,
        collate_fn=trainer.data_collator,
        num_workers=trainer.args.dataloader_num_workers,
    )
    batches = iter(loader)
    for k in range(count):
        chunk = indices[k * batch_size : (k + 1) * batch_size]
        yield chunk, next(batches) if chunk else None


def _batch_logps(trainer, model, rows: list[dict], indices: list[int], batch, shared_vision) -> list[tuple]:
    """``(id, chosen, rejected)`` of the pairs at ``indices``, from TRL's own reference computation."""
    with shared_vision():
        chosen, rejected = trainer.compute_ref_log_probs(model, trainer._prepare_inputs(batch))
    return [
        (rows[i]["id"], c, r) for i, c, r in zip(indices, chosen.float().tolist(), rejected.float().tolist())
    ]


def compute_reference(trainer, rows: list[dict], path: Path, settings: dict, batch_size: int, shared_vision):
    """Every pair's ``(chosen, rejected)`` reference log-probs by id: stored ones read from ``path``, the others
    computed in batches of ``batch_size`` per process and appended. ``rows`` are the dataset's rows, in order."""
    from accelerate.utils import gather_object

    acc = trainer.accelerator
    digests = {row["id"]: row_digest(row) for row in rows}
    values, others = _stored(path, digests)
    missing = [i for i, row in enumerate(rows) if row["id"] not in values]
    acc.wait_for_everyone()  # every process has read the file before the main one writes it
    model = trainer.ref_model or trainer.model
    mine = missing[acc.process_index :: acc.num_processes]
    count = math.ceil(math.ceil(len(missing) / acc.num_processes) / batch_size)  # the same in every process
    with _writer(path, settings, dict(values), digests, others, acc.is_main_process) as write:
        for indices, batch in _batches(trainer, mine, batch_size, count):
            computed = _batch_logps(trainer, model, rows, indices, batch, shared_vision) if indices else []
            for rid, chosen, rejected in gather_object(computed) if acc.num_processes > 1 else computed:
                values[rid] = (chosen, rejected)
                write(rid, chosen, rejected)
    acc.wait_for_everyone()
    return values
