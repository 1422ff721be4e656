"""JSONL reading and the append-only writer that makes every stage resumable and shardable.

A stage opens its output with :class:`JsonlWriter`; ids already in the file are skipped, so a killed run that is
started again ends with exactly one record per id. A process killed mid-write can leave a partial last line:
the writer cuts it off when it reopens the file, and readers report it instead of crashing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from .records import Record, RecordError

R = TypeVar("R", bound=Record)


class JsonlError(ValueError):
    """A line of a JSONL file that cannot be read; the message names the file and the line."""


def iter_jsonl(
    path: str | Path, *, skip_bad: bool = False, problems: list[str] | None = None
) -> Iterator[dict]:
    """Yield each JSON object of ``path``. A bad line raises :class:`JsonlError` naming ``path:line``,
    or, with ``skip_bad``, is reported into ``problems`` and skipped. A partial last line (no newline, not
    valid JSON: a killed writer) is always skipped and reported."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_last_partial = lineno == len(lines) and not data.endswith(b"\n")
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except (ValueError, UnicodeDecodeError) as e:
            msg = f"{path}:{lineno}: {'partial last line (interrupted write?)' if is_last_partial else 'bad JSON'}: {e}"
            if skip_bad or is_last_partial:
                if problems is not None:
                    problems.append(msg)
                continue
            raise JsonlError(msg) from None
        yield obj


def read_records(
    path: str | Path, cls: type[R], *, skip_bad: bool = False, problems: list[str] | None = None
) -> list[R]:
    """Read every record of type ``cls``; errors name the file and line."""
    out = []
    path = Path(path)
    for lineno, obj in enumerate(iter_jsonl(path, skip_bad=skip_bad, problems=problems), start=1):
        try:
            out.append(cls.from_dict(obj))
        except (RecordError, TypeError) as e:
            msg = f"{path}: record {lineno}: {e}"
            if not skip_bad:
                raise JsonlError(msg) from None
            if problems is not None:
                problems.append(msg)
    return out


def write_jsonl(path: str | Path, records: Iterable[Record | dict]) -> int:
    """Write records to ``path`` atomically (temporary file, then rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(_dumps(r) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _dumps(record: Record | dict) -> str:
    data = record.to_dict() if isinstance(record, Record) else record
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


class JsonlWriter:
    """Append-only writer keyed by ``id``.

    >>> with JsonlWriter("out.jsonl") as w:          # doctest: +SKIP
    ...     if not w.has(rid): w.write(record)
    """

    def __init__(self, path: str | Path, *, resume: bool = True, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ids: set[str] = set()
        self.dropped_partial = False
        if self.path.exists() and not resume:
            self.path.unlink()
        if self.path.exists():
            self._repair_and_load()
        self._f = self.path.open("a", encoding="utf-8")
        self._fsync = fsync
        self.written = 0

    def _repair_and_load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A killed writer left half a line: cut it, its record will be written again.
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)
            self.dropped_partial = True
        for obj in iter_jsonl(self.path, skip_bad=True):
            if "id" in obj:
                self.ids.add(str(obj["id"]))

    def has(self, record_id: str) -> bool:
        return record_id in self.ids

    def write(self, record: Record | dict) -> bool:
        """Append one record unless its id is already written. Returns True when written."""
        data = record.to_dict() if isinstance(record, Record) else record
        rid = str(data["id"])
        if rid in self.ids:
            return False
        self._f.write(_dumps(data) + "\n")  # one write call per full line
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self.ids.add(rid)
        self.written += 1
        return True

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def shard_path(path: str | Path, rank: int, world_size: int) -> Path:
    """Where process ``rank`` of ``world_size`` writes its part of ``path`` (the path itself for one process)."""
    path = Path(path)
    if world_size <= 1:
        return path
    return path.with_name(f"{path.stem}.shard{rank:02d}-of-{world_size:02d}{path.suffix}")


def merge_shards(path: str | Path, world_size: int) -> int:
    """Merge the shard files of ``path`` into ``path`` (keeping records already there), without duplicate ids,
    then delete the shards. Returns the number of records in ``path``."""
    path = Path(path)
    with JsonlWriter(path) as w:
        for rank in range(world_size):
            shard = shard_path(path, rank, world_size)
            if shard == path or not shard.exists():
                continue
            for obj in iter_jsonl(shard, skip_bad=True):
                w.write(obj)
        total = len(w.ids)
    for rank in range(world_size):
        shard = shard_path(path, rank, world_size)
        if shard != path and shard.exists():
            shard.unlink()
    return total
