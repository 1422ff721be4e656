"""Evaluation data readers: RefCOCO 'refer' layout (restricted unpickling), REC JSONL, Flickr30k Entities,
region captions."""

from __future__ import annotations

import json
import os
import pickle

import pytest
from evaluate_fixtures import SCENES, make_captions, make_flickr, make_rec_jsonl, make_refer

from spr.errors import UserError
from spr.evaluate import safe_pickle
from spr.evaluate.flickr30k import parse_sentence, read_flickr30k
from spr.evaluate.readers import read_captions, read_rec, read_rec_jsonl, read_refer


class _RunsCode:
    """Unpickling this calls os.system: what a malicious refs(unc).p would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    root = tmp_path / "refcoco"
    root.mkdir()
    (root / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    (root / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "evil": _RunsCode(marker)}]))
    # the same bytes really do run code with the standard unpickler (the test plants a real payload) ...
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"posix\.system|os\.system"):
        read_refer(root)
    assert not marker.exists()
    pickle.loads((root / "refs(unc).p").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("payload", ["builtins.eval", "subprocess.Popen"])
def test_restricted_unpickler_refuses_any_global(payload):
    module, name = payload.split(".")
    data = b"c" + module.encode() + b"\n" + name.encode() + b"\n(S'1+1'\ntR."
    with pytest.raises(safe_pickle.UnsafePickleError, match=payload):
        safe_pickle.loads(data, "x.p")


def test_restricted_unpickler_reads_plain_data_of_any_protocol():
    value = {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": {3, 4}}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert safe_pickle.loads(pickle.dumps(value, protocol=protocol)) == value


def test_corrupt_pickle_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a readable pickle"):
        safe_pickle.loads(b"\x80\x02]q", "refs(unc).p")


@pytest.mark.parametrize("protocol", [0, 2])
def test_refer_layout_gives_one_sample_per_sentence_in_pixels(tmp_path, protocol):
    root = make_refer(tmp_path / "refcoco", protocol=protocol)
    problems = []
    samples = read_rec(root, problems=problems)
    assert len(samples) == 8  # 4 refs x 2 sentences; the ref with an unknown annotation is reported
    assert any("12345" in p for p in problems)
    by_expr = {(s.image.rsplit("/", 1)[-1], s.expression): s for s in samples}
    s = by_expr[("img1.png", "the blue box")]
    assert s.box == SCENES["img1"][1][1][1]  # [x, y, w, h] converted to (x1, y1, x2, y2)
    assert s.split == "testA" and os.path.exists(s.image)
    assert {x.split for x in read_rec(root, splits=["testB"])} == {"testB"}


def test_refer_layout_asks_for_split_by_when_ambiguous(tmp_path):
    root = make_refer(tmp_path / "refcoco")
    (root / "refs(google).p").write_bytes((root / "refs(unc).p").read_bytes())
    with pytest.raises(UserError, match="--split-by"):
        read_rec(root)
    assert len(read_rec(root, split_by="google")) == 8


def test_rec_jsonl_resolves_images_and_names_bad_records(tmp_path):
    path = make_rec_jsonl(tmp_path)
    with path.open("a") as f:
        f.write(json.dumps({"id": "nobox", "image": "images/img1.png", "expression": "x"}) + "\n")
        f.write(
            json.dumps({"id": "flat", "image": "images/img1.png", "expression": "x", "box": [5, 5, 5, 9]})
            + "\n"
        )
        f.write("{not json\n")
    problems = []
    samples = read_rec_jsonl(path, problems=problems)
    assert [s.id for s in samples] == ["img1-0", "img1-1", "img2-0", "img2-1"]
    assert all(os.path.exists(s.image) for s in samples)  # relative to the data file
    text = "\n".join(problems)
    assert "record 5 (id 'nobox'): missing field(s) box" in text
    assert "'flat'" in text and "zero or negative size" in text
    assert ":7: bad JSON" in text
    assert [s.split for s in read_rec_jsonl(path, splits=["test"])] == ["test", "test"]


def test_missing_data_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_rec(tmp_path / "nope.jsonl")


def test_flickr_sentence_parsing():
    sentence, phrases = parse_sentence(
        "[/EN#18/people A child] in [/EN#19/clothing/colour a pink dress] runs ."
    )
    assert sentence == "A child in a pink dress runs ."
    assert [(p["phrase"], p["entity_id"], p["types"]) for p in phrases] == [
        ("A child", "18", ["people"]),
        ("a pink dress", "19", ["clothing", "colour"]),
    ]
    assert sentence[phrases[1]["start"] :].startswith("a pink dress")


def test_flickr_reader_keeps_phrases_with_boxes_in_pixels(tmp_path):
    root = make_flickr(tmp_path / "flickr")
    samples = read_flickr30k(root)
    phrases = {s.phrase: s for s in samples}
    # scene-only entity 9 and non-visual entity 0 are left out
    assert set(phrases) == {"A red box", "a blue box", "Two boxes", "The green box", "the yellow box"}
    assert phrases["a blue box"].boxes == [SCENES["img1"][1][1][1]]  # 1-based indices -> continuous pixels
    assert len(phrases["Two boxes"].boxes) == 2
    assert phrases["The green box"].split == "test" and phrases["The green box"].phrase_type == [
        "other",
        "clothing",
    ]
    assert {s.split for s in read_flickr30k(root, splits=["val"])} == {"val"}


def test_flickr_reader_reports_missing_annotation(tmp_path):
    root = make_flickr(tmp_path / "flickr")
    (root / "Annotations" / "img2.xml").unlink()
    problems = []
    samples = read_flickr30k(root, problems=problems)
    assert {s.image.rsplit("/", 1)[-1] for s in samples} == {"img1.jpg"}
    assert any("img2.xml: missing" in p for p in problems)


def test_caption_reader(tmp_path):
    path = make_captions(tmp_path)
    samples = read_captions(path)
    assert len(samples) == 4 and samples[0].captions == ["a red box", "the red rectangle"]
