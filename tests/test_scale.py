"""Linear paths at real sizes: what was quadratic before issue 28 finishes in seconds at tens of thousands of
records, with the same messages."""

from __future__ import annotations

import json
import time

import pytest

from spr.data.coco import Problems, load_coco
from spr.data.jsonl import write_jsonl
from spr.data.records import Region
from spr.errors import UserError
from spr.generate import read_regions


def test_annotations_of_missing_images_are_skipped_in_linear_time(tmp_path):
    n = 40_000  # every image file missing: each annotation's image was skipped (was: a scan of all images each)
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(n)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(n)]
        + [{"id": n, "image_id": "nowhere", "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "cup"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    problems = Problems()
    start = time.perf_counter()
    images = load_coco(path, tmp_path, problems=problems)
    assert time.perf_counter() - start < 30  # about an hour before
    assert images == []
    assert problems.counts["missing image file"] == n
    assert problems.counts["unknown image id"] == 1  # the one whose image is not listed at all


def test_a_repeated_region_id_is_named_in_linear_time(tmp_path):
    path = tmp_path / "regions.jsonl"
    n = 60_000  # was: ids.count per id, about 40 s at this size
    region = dict(image="x.png", image_size=[10, 10], region_box=[0, 0, 5, 5], objects=[], image_id=1)
    write_jsonl(path, [Region(id=f"r{i}", **region) for i in [*range(n), 17, 5]])
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"region ids must be unique; repeated: r17, r5$"):
        read_regions(path)
    assert time.perf_counter() - start < 20


def test_records_serialise_as_asdict_did():
    from dataclasses import asdict

    from spr.data.records import Candidate, Score

    cand = Candidate(id="r/p/0", region_id="r", prompt_id="p", prompt="q", sample=0, text="a <box>",
                     groundings=[{"phrase": "a", "box": [1.0, 2.0, 3.0, 4.0], "span": [0, 1]}], geometry={"w": 3})  # fmt: skip
    score = Score(id="r/p/0", candidate_id="r/p/0", region_id="r", refined=False, text="a", semantic=0.5,
                  localization=0.25, total=0.75, matches=[{"reference": 0, "prediction": 0, "iou": 0.5}])  # fmt: skip
    for record in (cand, score):
        assert record.to_dict() == asdict(record)
        assert list(record.to_dict()) == list(asdict(record))  # the same key order: the same bytes on disk


def test_writer_reads_a_file_line_by_line_and_still_repairs_it(tmp_path):
    from spr.data.jsonl import JsonlWriter, ids_in

    path = tmp_path / "c.jsonl"
    torn = b'{"id": "b", "te\n'  # a line cut short in the middle of the file
    escaped = b'{"id": "q\\"x", "n": 1}\n'  # an id the quick path leaves to the JSON decoder
    path.write_bytes(b'{"id": "a"}\n' + torn + b'{"id": "a"}\n\n' + escaped + b'{"id": "d"}\n{"id": "e", "x')
    with JsonlWriter(path) as writer:
        assert writer.ids == {"a", 'q"x', "d"} and writer.dropped_partial and writer.repaired == 2
        writer.write({"id": "e"})
    assert path.read_bytes() == b'{"id": "a"}\n' + escaped + b'{"id": "d"}\n{"id": "e"}\n'
    assert ids_in([path]) == {"a", 'q"x', "d", "e"}
    path.write_bytes(b'{"id": "half')  # no newline at all
    with JsonlWriter(path) as writer:
        assert writer.ids == set() and writer.dropped_partial
    assert path.read_bytes() == b""


@pytest.mark.parametrize("pairing", ["paper", "self_refined", "best_vs_worst"])
def test_pairs_from_files_equal_pairs_from_records_in_memory(tmp_path, pairing):
    """`spr pairs` reads its files one record at a time (summaries first, then the chosen and rejected
    records): the pairs and counts are those of build_pairs on every record in memory."""
    import random

    from spr.data.records import Candidate, Score
    from spr.pairs import PairConfig, build_pairs, pairs_from_files

    rng = random.Random(0)
    regions = [Region(id=f"r{i}", image=f"{i}.png", image_size=[100, 80], region_box=[1, 1, 50, 50], objects=[])
               for i in range(6)]  # fmt: skip
    candidates, scores = [], []
    for r in regions:
        for prompt in ("region_box", "crop"):
            for sample in range(4):
                cid = f"{r.id}/{prompt}/{sample}"
                text = "same" if r.id == "r2" else f"a cup {rng.random():.3f}"  # r2: identical texts
                candidates.append(Candidate(id=cid, region_id=r.id, prompt_id=prompt, prompt="Describe.",
                                            sample=sample, text=text, image=r.image))  # fmt: skip
                for refined in (False, True) if r.id != "r3" else (False,):  # r3: nothing refined
                    total = round(rng.random(), 3)
                    scores.append(Score(id=cid + "#refined" * refined, candidate_id=cid, region_id=r.id,
                                        refined=refined, text=text + " fixed" * refined, semantic=0.5,
                                        localization=total - 0.5, total=total))  # fmt: skip
    scores.append(Score(id="ghost/x/0", candidate_id="ghost/x/0", region_id="ghost", refined=False, text="?",
                        semantic=0, localization=0, total=0))  # fmt: skip
    write_jsonl(tmp_path / "c.jsonl", candidates)
    write_jsonl(tmp_path / "s.jsonl", scores)
    config = PairConfig(regions="-", candidates="-", scores="-", out="-", pairing=pairing, min_margin=0.05)
    by_id = {r.id: r for r in regions}
    expected = build_pairs(by_id, {c.id: c for c in candidates}, scores, config)
    got = pairs_from_files(by_id, tmp_path / "c.jsonl", tmp_path / "s.jsonl", config)
    assert [p.to_dict() for p in got[0]] == [p.to_dict() for p in expected[0]] and got[0]
    assert got[1] == expected[1] and got[1]["unknown region or candidate"] == 1


def test_pairs_from_files_refuse_a_score_that_is_not_a_number(tmp_path):
    from spr.pairs import PairConfig, pairs_from_files

    (tmp_path / "c.jsonl").write_text("")
    line = '{"id": "r/p/0", "candidate_id": "r/p/0", "region_id": "r", "refined": false, "text": "a", '
    (tmp_path / "s.jsonl").write_text(line + '"semantic": 0.5, "localization": 0.1, "total": NaN}\n')
    config = PairConfig(regions="-", candidates="-", scores="-", out="-")
    with pytest.raises(
        UserError, match=r"s.jsonl: scores must be finite numbers; record 1 \(id 'r/p/0'\): total"
    ):
        pairs_from_files({}, tmp_path / "c.jsonl", tmp_path / "s.jsonl", config)


def test_score_reads_candidates_region_by_region_in_any_order(tmp_path):
    from spr.data.records import Candidate
    from spr.scoring.command import region_groups

    def cand(region, k):
        return Candidate(
            id=f"{region}/p/{k}", region_id=region, prompt_id="p", prompt="?", sample=k, text="t"
        )

    order = [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("b", 1), ("a", 2), ("c", 1), ("d", 0)]
    write_jsonl(tmp_path / "c.jsonl", [cand(r, k) for r, k in order])
    groups = list(region_groups(tmp_path / "c.jsonl", {"a": 3, "b": 2, "c": 2}))  # d: nothing left to score
    assert [(r, [c.id for c in cands]) for r, cands in groups] == [
        ("b", ["b/p/0", "b/p/1"]), ("a", ["a/p/0", "a/p/1", "a/p/2"]), ("c", ["c/p/0", "c/p/1"])
    ]  # fmt: skip


def test_a_finished_score_resumes_without_loading_a_scorer(tmp_path, monkeypatch, capsys):
    from spr.cli import main
    from spr.data.records import Candidate
    from spr.scoring import command

    region = Region(id="r0", image=str(tmp_path / "x.png"), image_size=[64, 48], region_box=[2, 2, 30, 30],
                    objects=[{"label": "cup", "box": [2, 2, 30, 30]}], image_id=1)  # fmt: skip
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "x.png")
    write_jsonl(tmp_path / "regions.jsonl", [region])
    write_jsonl(tmp_path / "candidates.jsonl", [
        Candidate(id=f"r0/p/{k}", region_id="r0", prompt_id="p", prompt="?", sample=k, text="a cup",
                  groundings=[{"phrase": "a cup", "box": [2.0, 2.0, 30.0, 30.0], "span": [0, 5]}])
        for k in range(3)
    ])  # fmt: skip
    args = ["score", "--regions", str(tmp_path / "regions.jsonl"), "--candidates", str(tmp_path / "candidates.jsonl"),
            "--out", str(tmp_path / "scores.jsonl"), "--semantic", "none"]  # fmt: skip
    assert main(args) == 0
    first = (tmp_path / "scores.jsonl").read_bytes()

    def no_scorer(*a, **k):
        raise AssertionError("a scorer was loaded with nothing left to score")

    monkeypatch.setattr(command, "make_semantic_scorer", no_scorer)
    assert main(args) == 0
    assert (tmp_path / "scores.jsonl").read_bytes() == first
    assert "| records already there (resumed) | 6" in capsys.readouterr().out
