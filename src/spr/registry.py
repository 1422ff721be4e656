"""One shape for every registry of named things (commands, evaluation tasks, semantic scorers, rewards ...):
``register(name, entry)`` once, ``get(name)``, ``available()``.

One rule for each mistake: registering a second entry under a taken name is a ValueError (a plug-in that
would silently replace a built-in is a bug); asking for an unknown name is an :class:`UnknownName`, a
UserError (and a KeyError) that lists the known names.

>>> colours = Registry("colour")
>>> colours.register("red", (255, 0, 0))
(255, 0, 0)
>>> colours.get("blue")
Traceback (most recent call last):
...
spr.registry.UnknownName: unknown colour 'blue'; available: red
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class UnknownName(UserError, KeyError):
    """A name no entry is registered under; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Entries by name, in registration order; ``what`` names an entry in messages ("evaluation task")."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it; a name already taken is a ValueError."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.what} needs a name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove ``name`` (tests that register a throwaway entry)."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(
                f"unknown {self.what} {name!r}; available: {', '.join(self.available())}"
            ) from None

    def available(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    # read like a mapping: `name in registry`, `for name in registry`, `{**registry}`
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def keys(self):
        return self._entries.keys()

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
