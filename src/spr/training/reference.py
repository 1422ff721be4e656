"""Reference log-probs once: the frozen reference's log-probabilities of every pair's chosen and rejected answer,
computed in the step that first trains on the pair (beside the policy's forward, sharing its image features and
packed prompt) and stored beside ``dpo.jsonl``; later epochs and later runs on the same pairs read them and run
no reference forward at all.

The file is ``<dpo stem>.ref.<reference fingerprint>.<conditions>.jsonl``: the reference model's
:func:`~spr.data.guard.fingerprint` and a short hash of what else decides the numbers (weights dtype, mixed
precision, ``max_length``, pixel budget, family). Its settings header (``.settings.json`` beside it) holds the
same; a file whose header names another reference or other conditions is refused, never used. One record per
pair: ``{"id", "digest", "chosen", "rejected"}``, where ``digest`` hashes the pair's stored row (image path,
crop, prompt and answers), so a pair that ``spr pairs`` rewrote under the same id is computed again. Records are
appended as steps compute them (a killed run keeps what its steps computed); under data parallelism every
process sends what it computed to all, and the main process writes.
"""

from __future__ import annotations

import hashlib
import json
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


class ReferenceCache:
    """The reference's log-probs of the pairs ``rows``, by id: ``values`` holds those known (read from ``path``
    at the start, then added by :meth:`add` as steps compute them). Opening it checks the file's settings header
    (another reference or other conditions are refused) and drops records of pairs that changed or left."""

    def __init__(self, rows: list[dict], path: Path, settings: dict, accelerator):
        from ..data.guard import StageOutput
        from ..data.jsonl import ends_a_line

        self.path, self.accelerator = path, accelerator
        self.digests = {row["id"]: row_digest(row) for row in rows}
        self.values, others = _stored(path, self.digests)
        accelerator.wait_for_everyone()  # every process has read the file before the main one rewrites it
        if accelerator.is_main_process:
            with StageOutput(path, STAGE, settings):
                if others or not ends_a_line(path):
                    from ..data.jsonl import write_jsonl

                    write_jsonl(path, [self._record(rid, *v) for rid, v in self.values.items()])
        accelerator.wait_for_everyone()

    @property
    def complete(self) -> bool:
        return len(self.values) == len(self.digests)

    def add(self, computed: list[tuple[str, float, float]]) -> None:
        """The ``(id, chosen, rejected)`` values a step computed; every process calls it in every step until the
        cache is complete (with none where its batch was known), and all of them learn every process's values."""
        from accelerate.utils import gather_object

        from ..data.guard import OutputLock, lock_path

        if self.accelerator.num_processes > 1:
            computed = gather_object(computed)
        new = [(rid, c, r) for rid, c, r in computed if rid not in self.values]
        for rid, c, r in new:
            self.values[rid] = (c, r)
        if new and self.accelerator.is_main_process:
            with OutputLock(lock_path(self.path), str(self.path)), self.path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(self._record(rid, c, r)) + "\n" for rid, c, r in new)

    def _record(self, rid: str, chosen: float, rejected: float) -> dict:
        return {"id": rid, "digest": self.digests[rid], "chosen": chosen, "rejected": rejected}
