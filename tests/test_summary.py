"""Stage summaries carry the declaration of every counter they hold (spr.data.summary): what it counts and per
what, declared where it is counted; the report shows the declared meaning."""

from __future__ import annotations

import json

import pytest

from spr.data.summary import Count, Counters, declared


def test_a_summary_carries_its_declarations_and_refuses_an_undeclared_counter(tmp_path):
    counts = Counters({"written": Count("records this run wrote", "record"),
                       "region skipped:": Count("regions not scored, by reason", "region")})  # fmt: skip
    path = tmp_path / "x.summary.json"
    counts.write(path, {"written": 3, "problems": {"region skipped: image missing": 1}})
    data = json.loads(path.read_text())
    assert data["written"] == 3 and declared(data, "written") == Count("records this run wrote", "record")
    assert declared(data, "region skipped: image missing").per == "region"  # a declared prefix
    with pytest.raises(ValueError, match="without a declaration: typo"):
        counts.write(path, {"written": 3, "typo": 1})
    assert json.loads(path.read_text()) == data  # the file as it was
    assert declared({"written": 3}, "written") is None  # an older summary: no declarations


def test_every_stage_counter_is_declared_with_a_unit():
    from spr import generate, pairs
    from spr.scoring import command

    for counts in (generate.COUNTS, pairs.COUNTS, command.COUNTS):
        for name, count in counts.items():
            assert count.meaning and count.per, name
