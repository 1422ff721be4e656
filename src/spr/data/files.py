"""Reading a file a user hands us: any failure is one line naming the file (:class:`~spr.errors.UserError`), and
a path read from a data file stays inside the folder it is relative to."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError


def read_json(path: str | Path, expected: str = "JSON"):
    """The parsed contents of ``path``; missing, unreadable, not UTF-8, not JSON or nested beyond Python's
    recursion limit is a UserError naming the file and what was ``expected``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected {expected})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected {expected}"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: not valid JSON (truncated or corrupt?) at line {e.lineno} column {e.colno}: {e.msg}; "
            f"expected {expected}"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read; expected {expected}") from None


def is_key(v) -> bool:
    """An id a record can be keyed by: a number or a string (a list or an object in a data file is not one)."""
    return isinstance(v, int | float | str) and not isinstance(v, bool)


def inside(root: Path, name) -> Path | None:
    """``root / name`` when ``name`` is a relative path that stays inside ``root`` (judged on the text, so a
    folder of symlinks the user made still works); None for an absolute path, ``..`` out of it, or no string."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\0" in name:
        return None
    normal = os.path.normpath(name)
    if normal == ".." or normal.startswith(".." + os.sep):
        return None
    return Path(root) / normal
