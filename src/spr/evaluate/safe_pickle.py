"""Load a pickle that holds only plain data, refusing anything that could run code.

Unpickling a file from the internet runs whatever callables it names (``os.system``, ``subprocess.Popen``,
``builtins.eval`` ...). Every such callable reaches the unpickler through ``find_class``; plain containers,
numbers and strings never do. This unpickler admits a handful of harmless container types and refuses every
other global, so a malicious ``refs(unc).p`` fails with a message instead of running.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from spr.errors import UserError

# Plain-data types that pickles of lists / dicts / sets legitimately name (Python 2 and 3 spellings).
_ALLOWED = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "list"),
    ("__builtin__", "dict"),
    ("__builtin__", "tuple"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(UserError):
    """The pickle names a callable that is not plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        # Python 2 pickles (the RefCOCO files) store text as byte strings: decode them as UTF-8.
        super().__init__(file, encoding="utf-8", errors="replace")
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refused to load: the pickle names {module}.{name}, which is not plain data "
            "(only lists, dicts, tuples, sets, strings and numbers are accepted, because unpickling anything "
            "else can run code). Re-create the file from a trusted source."
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refused to load: the pickle uses persistent ids")


def loads(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` admitting only plain containers, numbers and strings."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or corrupt data: say so, name the file
        raise UserError(f"{source}: not a readable pickle: {type(e).__name__}: {e}") from None


def load(path: str | Path):
    """Unpickle the file at ``path`` with :func:`loads`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return loads(data, source=str(path))
