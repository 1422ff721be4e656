"""Stage summaries whose counters say what they count.

Each counter is declared in the module that counts it: its name, what it counts and per what (a text, a box, a
region, a group ...). A stage writes its summary (``<output stem>.summary.json``) through :meth:`Counters.write`,
which adds a ``declared`` section with the declaration of every key the summary holds, so that a reader (the
report) shows what each number means without knowing the stage, and a counter nobody declared is an error
at once, not a number without a meaning.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Count:
    meaning: str
    per: str  # what one is: "text", "box", "region", "line", "group", "pair", "candidate", "setting", "value"


class Counters(dict):
    """A stage's declared counters, ``{name: Count}``. A name ending in ``":"`` declares every key that starts
    with it (``"region skipped:"`` covers ``"region skipped: image missing"``)."""

    def of(self, key: str) -> Count | None:
        if key in self:
            return self[key]
        prefixes = [name for name in self if name.endswith(":") and key.startswith(name)]
        return self[max(prefixes, key=len)] if prefixes else None

    def write(self, path: str | Path, summary: dict) -> None:
        """``summary`` (its counters, and those of its ``problems`` mapping) with their declarations, written
        atomically to ``path``; ValueError for a key nobody declared."""
        keys = [k for k in summary if k != "problems"] + list(summary.get("problems") or {})
        missing = [k for k in keys if self.of(k) is None]
        if missing:
            raise ValueError(f"summary counters without a declaration: {', '.join(missing)}")
        declared = {k: asdict(self.of(k)) for k in keys}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**summary, "declared": declared}, indent=2), encoding="utf-8")
        os.replace(tmp, path)


def declared(summary: dict | None, key: str) -> Count | None:
    """The declaration a summary file carries for ``key`` (None: none, as in a summary of an older version)."""
    entry = ((summary or {}).get("declared") or {}).get(key)
    return Count(**entry) if isinstance(entry, dict) and set(entry) == {"meaning", "per"} else None
