"""JSONL reading and the append-only writer that makes every stage resumable and shardable.

A stage opens its output with :class:`JsonlWriter`; ids already in the file are skipped, so a killed run that is
started again ends with exactly one record per id. A process killed mid-write can leave a partial last line:
the writer cuts it off when it reopens the file, and readers report it instead of crashing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from .records import Record, RecordError

R = TypeVar("R", bound=Record)
log = logging.getLogger(__name__)


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
    with path.open("rb") as f:  # line by line: memory holds one line, not the file
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                obj = _decode(path, lineno, raw, skip_bad, problems)
                if obj is not None:
                    yield obj


def _decode(path: Path, lineno: int, raw: bytes, skip_bad: bool, problems: list[str] | None) -> dict | None:
    """One line of ``iter_jsonl``'s file as a dict; None when it is skipped."""
    is_last_partial = not raw.endswith(b"\n")  # only the last line can lack its newline
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
        msg = f"{path}:{lineno}: {'partial last line (interrupted write?)' if is_last_partial else 'bad JSON'}: {e}"
        if skip_bad or is_last_partial:
            if problems is not None:
                problems.append(msg)
            return None
        raise JsonlError(msg) from None
    return obj


def iter_records(
    path: str | Path, cls: type[R], *, skip_bad: bool = False, problems: list[str] | None = None
) -> Iterator[R]:
    """Each record of type ``cls``, one at a time; errors name the file and line."""
    path = Path(path)
    for lineno, obj in enumerate(iter_jsonl(path, skip_bad=skip_bad, problems=problems), start=1):
        try:
            yield cls.from_dict(obj)
        except (RecordError, TypeError) as e:
            msg = f"{path}: record {lineno}: {e}"
            if not skip_bad:
                raise JsonlError(msg) from None
            if problems is not None:
                problems.append(msg)


def read_records(
    path: str | Path, cls: type[R], *, skip_bad: bool = False, problems: list[str] | None = None
) -> list[R]:
    """Read every record of type ``cls``; errors name the file and line."""
    return list(iter_records(path, cls, skip_bad=skip_bad, problems=problems))


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
        self.repaired = 0
        if self.path.exists() and not resume:
            self.path.unlink()
        if self.path.exists():
            self._repair_and_load()
        self._f = self.path.open("a", encoding="utf-8")
        self._fsync = fsync
        self.written = 0

    def _repair_and_load(self) -> None:
        """Read the ids written so far, line by line (memory: the ids, not the file); cut a partial last line
        and remove unreadable or repeated lines."""
        if _cut_partial_last_line(self.path):
            # A killed writer left half a line: cut, its record will be written again.
            self.dropped_partial = True
        bad = []
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    rid = line_id(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as e:
                    bad.append((lineno, f"line {lineno}: {e}"))
                    continue
                if rid is not None:
                    if rid in self.ids:
                        bad.append((lineno, f"line {lineno}: a second record with id {rid!r}"))
                        continue
                    self.ids.add(rid)
        if bad:
            # A torn line in the middle (a crash, a disk error) is written again, so it goes, or the file would
            # hold an unreadable line forever; a repeated id (two writers before locks existed) keeps the first.
            log.warning("%s: %d unreadable or repeated line(s) removed; missing records are written again (%s)",
                        self.path, len(bad), "; ".join(m for _, m in bad[:3]))  # fmt: skip
            self.repaired = len(bad)
            drop = {lineno for lineno, _ in bad}
            tmp = self.path.with_name(self.path.name + ".tmp")
            with self.path.open("rb") as f, tmp.open("wb") as out:
                out.writelines(
                    raw for lineno, raw in enumerate(f, start=1) if raw.strip() and lineno not in drop
                )
            os.replace(tmp, self.path)

    def has(self, record_id: str) -> bool:
        return record_id in self.ids

    def write(self, record: Record | dict) -> bool:
        """Append one record unless its id is already written. Returns True when written."""
        data = record.to_dict() if isinstance(record, Record) else record
        rid = str(data["id"])
        if rid in self.ids:
            return False
        try:
            self._f.write(_dumps(data) + "\n")  # one write call per full line
            self._f.flush()
            if self._fsync:
                os.fsync(self._f.fileno())
        except OSError as e:  # a full disk says which file (a buffered write's error names none)
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, str(self.path)) from e
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


def _cut_partial_last_line(path: Path) -> bool:
    """Truncate ``path`` after its last newline when it does not end in one; True when it cut something."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        if not size or (f.seek(size - 1), f.read(1))[1] == b"\n":
            return False
        end = size
        while end > 0:  # back to the last newline, a block at a time
            start = max(0, end - 65536)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return True
            end = start
        f.truncate(0)
        return True


def shard_path(path: str | Path, rank: int, world_size: int) -> Path:
    """Where process ``rank`` of ``world_size`` writes its part of ``path`` (the path itself for one process)."""
    path = Path(path)
    if world_size <= 1:
        return path
    return path.with_name(f"{path.stem}.shard{rank:02d}-of-{world_size:02d}{path.suffix}")


def reorder(path: str | Path, order: list[str]) -> None:
    """Rewrite ``path`` with its records in the order of their ids in ``order`` (others after them, as they
    were), atomically: the file of a sharded or resumed run then reads like that of one uninterrupted run."""
    path = Path(path)
    rank = {rid: i for i, rid in enumerate(order)}
    lines = [raw for raw in path.read_bytes().split(b"\n") if raw.strip()]
    keyed = sorted(
        enumerate(lines), key=lambda il: (rank.get(str(json.loads(il[1]).get("id")), len(rank)), il[0])
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for _, line in keyed))
    os.replace(tmp, path)


def shards_of(path: str | Path) -> list[Path]:
    """Every shard file of ``path``, whatever process count wrote it."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.stem}.shard*-of-*{path.suffix}"))


def ends_a_line(path: str | Path) -> bool:
    """Whether ``path`` is missing, empty or ends with a newline (a killed append leaves part of a line)."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return True
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def line_id(raw: bytes) -> str | None:
    """The id of one JSONL line (None: it has none). A line as this module writes it (``{"id": "...", ...}``,
    complete) gives its id without decoding the rest (10x quicker: a resume reads a million of them); any other
    is decoded in full, and a line that is not a JSON object raises ValueError."""
    line = raw.rstrip(b"\r\n")
    if line.startswith(b'{"id": "') and line.endswith(b"}"):
        end = line.find(b'"', 8)
        if end > 0 and b"\\" not in line[8:end]:
            return line[8:end].decode("utf-8")
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return str(obj["id"]) if "id" in obj else None


def ids_in(paths) -> set[str]:
    """The record ids in the files ``paths`` that exist (unreadable lines skipped), read line by line."""
    ids: set[str] = set()
    for p in paths:
        if Path(p).exists():
            with Path(p).open("rb") as f:
                for raw in f:
                    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
                        if raw.strip() and (rid := line_id(raw)) is not None:
                            ids.add(rid)
    return ids


def merge_shards(path: str | Path) -> int:
    """Merge every shard file of ``path`` into ``path`` (keeping records already there) without duplicate
    ids, then delete the shards. Returns the number of records in ``path``."""
    path = Path(path)
    shards = shards_of(path)
    with JsonlWriter(path) as w:
        for shard in shards:
            for obj in iter_jsonl(shard, skip_bad=True):
                w.write(obj)
        total = len(w.ids)
    for shard in shards:
        shard.unlink()
    return total


# ------------------------------------------------------------------------------ files committed together


def manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".manifest.json")


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit_together(files: dict[Path, Iterable], manifest: Path, owner: Path) -> None:
    """Write several record files that belong together (pairs.jsonl and its DPO rows) so that a reader can
    always tell whether they do: ``manifest`` says "writing" while the files are replaced one by one, then
    names ``owner`` and every file's hash. A kill in between leaves "writing", which :func:`check_manifest`
    refuses. A manifest of another owner is refused here, so two outputs never overwrite each other's rows."""
    import json as _json

    owner = Path(owner)
    if manifest.exists():
        try:
            old = _json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("owner") not in (None, owner.name):
            raise_for_owner(manifest, old["owner"], owner)
    _write_manifest(manifest, {"state": "writing", "owner": owner.name})
    for path, records in files.items():
        write_jsonl(path, records)
    _write_manifest(manifest, {"state": "complete", "owner": owner.name,
                               "files": {p.name: file_sha256(p) for p in files}})  # fmt: skip


def raise_for_owner(manifest: Path, other: str, owner: Path):
    from ..errors import UserError

    raise UserError(
        f"{manifest.parent}: its DPO rows belong to {other} ({manifest.name}); writing those of {owner.name} "
        "there would overwrite them: give another --dpo-out"
    )


def _write_manifest(manifest: Path, data: dict) -> None:
    import json as _json

    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(_json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)


def check_manifest(path: str | Path) -> str | None:
    """Why the file ``path`` cannot be trusted as a member of its manifest (None when it can, or when it has
    no manifest: a file written by hand)."""
    import json as _json

    path = Path(path)
    manifest = manifest_path(path)
    if not manifest.exists():
        return None
    try:
        data = _json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{manifest} is unreadable ({e})"
    if data.get("state") != "complete":
        return f"{manifest} says the files were being written when the process stopped"
    expected = (data.get("files") or {}).get(path.name)
    if expected is None:
        return f"{manifest} does not list {path.name}"
    if file_sha256(path) != expected:
        return f"{path.name} changed after {data.get('owner')} was written with it"
    for name, sha in (data.get("files") or {}).items():
        other = path.with_name(name)
        if other != path and other.exists() and file_sha256(other) != sha:
            return f"{name} changed after {path.name} was written with it"
    return None
