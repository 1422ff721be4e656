import json

import pytest

from spr.data.jsonl import JsonlError, JsonlWriter, iter_jsonl, merge_shards, read_records, shard_path
from spr.data.records import Pair, Region


def region(i):
    return Region(id=f"r{i}", image="a.png", image_size=[10, 10], region_box=[0, 0, 5, 5], objects=[])


def test_writer_skips_written_ids_and_repairs_a_partial_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    with JsonlWriter(path) as w:
        for i in range(3):
            assert w.write(region(i))
    path.write_bytes(path.read_bytes() + b'{"id": "r3", "ima')  # killed mid-write
    problems = []
    assert [o["id"] for o in iter_jsonl(path, problems=problems)] == ["r0", "r1", "r2"]
    assert "partial last line" in problems[0]
    with JsonlWriter(path) as w:
        assert w.dropped_partial
        assert not w.write(region(1))
        assert w.write(region(3))
    assert [r.id for r in read_records(path, Region)] == ["r0", "r1", "r2", "r3"]


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(region(0).to_dict()) + "\nnot json\n")
    with pytest.raises(JsonlError, match=r"x.jsonl:2: bad JSON"):
        read_records(path, Region)
    problems = []
    assert len(read_records(path, Region, skip_bad=True, problems=problems)) == 1 and problems


def test_missing_field_names_the_record(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "p1", "region_id": "r"}) + "\n")
    with pytest.raises(
        JsonlError, match=r"pairs.jsonl: record 1: pair record 'p1' is missing field\(s\): chosen"
    ):
        read_records(path, Pair)


def test_non_finite_numbers_are_refused_at_write(tmp_path):
    with JsonlWriter(tmp_path / "x.jsonl") as w, pytest.raises(ValueError):
        w.write({"id": "a", "score": float("nan")})


def test_shards_merge_into_one_file_without_duplicates(tmp_path):
    out = tmp_path / "c.jsonl"
    for rank in range(2):
        with JsonlWriter(shard_path(out, rank, 2)) as w:
            for i in range(rank, 6, 2):
                w.write(region(i))
            w.write(region(0))  # a duplicate across shards
    assert merge_shards(out) == 6
    assert sorted(r.id for r in read_records(out, Region)) == [f"r{i}" for i in range(6)]
    assert not shard_path(out, 0, 2).exists()
