"""One guard for every stage output: an exclusive lock while it is written, and a settings header beside it.

- **Lock.** ``<stem>.lock`` beside an output file (``.spr.lock`` inside an output directory) is held with
  ``flock`` for as long as the stage writes. A second writer stops at once with a message naming the process
  that holds it. The kernel releases the lock when its process dies, even by SIGKILL, so a lock left by a dead
  process never blocks anyone.
- **Settings header.** ``<stem>.settings.json`` beside a file (``spr_settings.json`` inside a directory) holds
  the settings that decide the records (model fingerprint, prompts, sampling, scorer, lambda, pixel budget ...).
  A stage resumes only under the same settings; other settings are refused with the differences named, and
  ``overwrite`` removes the old output and starts over. An output that holds records but no header (written by
  hand or by an older version) is refused too, because nobody can tell how it was made.
- **Inputs by content.** The input files a stage names (``inputs``) enter the header by size and content hash
  (:func:`content_id`), not by path: an input regenerated at the same path (``spr generate --overwrite`` into
  the same candidates.jsonl) is another input, and a resume over it is refused with the file named.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from ..errors import UserError

HEADER_VERSION = 1
# what an output directory holds that is not a record (a header left half-written by a full disk included)
NOT_RECORDS = (".spr.lock", "spr_settings.json", "spr_settings.json.tmp")


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output / ".spr.lock" if output.is_dir() else output.with_name(output.stem + ".lock")


def header_path(output: str | Path) -> Path:
    output = Path(output)
    return (
        output / "spr_settings.json" if output.is_dir() else output.with_name(output.stem + ".settings.json")
    )


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``path``; raises UserError naming the holder when taken."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.what} is being written by another process ({holder}); wait for it to finish, "
                    f"or choose another output (lock: {self.path})"
                ) from None
            # The holder before us may have removed the file after we opened it: lock the file that is there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv[:6])}  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # before unlocking: a waiter that opened it re-checks the inode
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    if not data:
        return "a process that has not said which"
    return f"pid {data.get('pid')} on {data.get('host')}, since {data.get('since')}: {data.get('command', '')}".strip()


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {_short(old.get(k, '(unset)'))} -> {_short(new.get(k, '(unset)'))}")
    return out


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "..."


def has_content(output: Path) -> bool:
    if output.is_dir():
        # a header alone holds no record: a run that stopped before writing any is not held to its settings
        return any(p.name not in NOT_RECORDS for p in output.iterdir())
    return output.exists() and output.stat().st_size > 0


def remove_output(output: Path, extra: tuple[Path, ...] = ()) -> None:
    """Delete an output (a directory's contents except its lock) and the ``extra`` files that belong to it."""
    if output.is_dir():
        for p in output.iterdir():
            if p.name == ".spr.lock":
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    elif output.exists():
        output.unlink()
    for p in extra:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


class StageOutput:
    """Lock ``output`` and check (or write) its settings header; use as a context manager around the writing.

    ``settings`` are compared as JSON, and so are the ``inputs`` (name -> file) by their content. ``resume=False`` is for stages that rewrite their output whole (pairs):
    lock and header, nothing to compare. ``extra`` are files that belong to the output (shards, summaries, the
    DPO rows beside the pairs) and go with it on ``overwrite``. ``directory=True`` treats ``output`` as a
    directory (created when missing)."""

    def __init__(
        self,
        output: str | Path,
        stage: str,
        settings: dict,
        overwrite: bool = False,
        extra: tuple[Path, ...] = (),
        directory: bool = False,
        resume: bool = True,
        inputs: dict[str, str | Path | None] | None = None,
    ):
        self.output = Path(output)
        self.stage, self.overwrite, self.extra, self.resume = stage, overwrite, tuple(extra), resume
        settings = {**settings, **{f"input {k}": content_id(p) for k, p in (inputs or {}).items() if p}}
        self.settings = json.loads(json.dumps(settings, default=str))
        if directory:
            self.output.mkdir(parents=True, exist_ok=True)
        elif self.output.is_dir():
            raise UserError(f"{self.output} is a directory; the {stage} stage writes a file there")
        self.lock = OutputLock(lock_path(self.output), str(self.output))
        self.header = header_path(self.output)

    def __enter__(self) -> StageOutput:
        self.lock.acquire()
        try:
            self._check()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()

    def _check(self) -> None:
        present = has_content(self.output) or any(p.exists() for p in self.extra)
        if not self.resume:
            pass  # the stage rewrites its output whole: only the header is renewed
        elif self.overwrite:
            remove_output(self.output, self.extra)
        elif present:
            old = self._read_header()
            if old is None:
                raise UserError(
                    f"{self.output} holds records but no settings header ({self.header.name}), so it cannot be "
                    "told whether they were made with these settings; pass --overwrite to start over, or choose "
                    "another output"
                )
            if old.get("stage") != self.stage or old.get("settings") != self.settings:
                diff = _differences(old.get("settings") or {}, self.settings)
                if old.get("stage") != self.stage:
                    diff.insert(0, f"stage: {old.get('stage')} -> {self.stage}")
                changed = [d.split(":")[0][len("input ") :] for d in diff if d.startswith("input ")]
                hint = f"; an input changed since ({', '.join(changed)})" if changed else ""
                raise UserError(
                    f"{self.output} was written with other settings ({'; '.join(diff)}){hint}; resume with the "
                    "same settings, choose another output, or pass --overwrite to start over"
                )
            return
        self.header.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.header.with_name(self.header.name + ".tmp")
        try:
            header = {"stage": self.stage, "version": HEADER_VERSION, "settings": self.settings}
            tmp.write_text(json.dumps(header, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.header)
        finally:  # a half-written header (disk full) must not be taken for a record by the next run
            tmp.unlink(missing_ok=True)

    def holds_these_settings(self, ignore: tuple[str, ...] = ()) -> bool:
        """Whether the output's header names this stage and these settings (``ignore``: keys left out on both
        sides), read without the lock: for a stage that can tell it has nothing to do before it loads a model."""
        old = self._read_header()
        if old is None or old.get("stage") != self.stage:
            return False
        return {k: v for k, v in (old.get("settings") or {}).items() if k not in ignore} == {
            k: v for k, v in self.settings.items() if k not in ignore
        }

    def _read_header(self) -> dict | None:
        try:
            data = json.loads(self.header.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def content_id(path: str | Path) -> str:
    """An input file by what it holds: its size and a hash of its bytes (a directory or a missing file by its
    path; the stage reading it says what is wrong)."""
    from .jsonl import file_sha256

    path = Path(path)
    if not path.is_file():
        return str(path)
    return f"{path.stat().st_size} bytes, sha256 {file_sha256(path)[:16]}"


def fingerprint(model_dir: str | Path) -> dict:
    """What identifies a model directory cheaply: a hash of its config.json and of 16 slices of 64 KiB spread
    over each weight file (two rounds of one model differ in their weights only; hashing gigabytes of weights
    on every resume would cost minutes)."""
    import hashlib

    path = Path(model_dir)
    h = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            for i in range(16):
                fh.seek(max(0, (size - 65536) * i // 15))
                h.update(fh.read(65536))
    return {"model": path.name, "fingerprint": h.hexdigest()[:16]}
