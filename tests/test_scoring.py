"""Localization and semantic scores, their combination, and the `spr score` stage."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from scoring_fixtures import (
    FMT,
    OBJECTS,
    REGION_BOX,
    SIZE,
    FakeDetector,
    KeywordScorer,
    candidate,
    draw_image,
    fixture_region,
    hand_made_texts,
    tiny_clip_dir,
    tiny_owlv2_dir,
    write_run,
)

from spr import formats
from spr.cli import main
from spr.data.jsonl import iter_jsonl, read_records, write_jsonl
from spr.data.records import Candidate, Region, Score
from spr.errors import UserError
from spr.scoring import (
    SEMANTIC_SCORERS,
    ClipScorer,
    Detection,
    LabelScorer,
    LocalizationConfig,
    RegionScorer,
    ScoreConfig,
    SemanticItem,
    description_text,
    localization_score,
    make_semantic_scorer,
    merge_detections,
    region_references,
    register_semantic_scorer,
    split_to_fit,
)

A, B_, C = (0, 0, 10, 10), (20, 20, 40, 40), (100, 100, 120, 120)


# ------------------------------------------------------------------ localization


def test_default_is_mean_over_references_of_thresholded_best_iou():
    half = (0, 0, 10, 20)  # IoU 0.5 with (0, 0, 10, 10)? no: 100 / 200 = 0.5
    assert localization_score([A], [A, B_]).score == pytest.approx(0.5)
    assert localization_score([half], [A]).score == pytest.approx(0.5)  # IoU >= 0.5 counts
    low = (0, 0, 10, 26)  # IoU 100 / 260 < 0.5
    assert localization_score([low], [A]).score == 0.0
    assert localization_score([low], [A], LocalizationConfig(iou="raw")).score == pytest.approx(100 / 260)


def test_average_and_matching_options_treat_duplicates_and_inventions_differently():
    preds, refs = [A, A, C], [A, B_]  # a duplicate box and an invented one
    score = lambda **kw: localization_score(preds, refs, LocalizationConfig(**kw)).score  # noqa: E731
    assert score() == pytest.approx(0.5)  # references: A found, B missed
    assert score(average="prediction") == pytest.approx(2 / 3)  # both copies of A count
    assert score(average="prediction", matching="one_to_one") == pytest.approx(1 / 3)  # A counts once
    assert score(matching="one_to_one") == pytest.approx(0.5)


def test_precision_recall_f1_and_matches_are_recorded():
    r = localization_score(
        [A, A, C], [A, B_], reference_labels=["cat", "dog"], prediction_phrases=["a cat", "cat again", "x"]
    )
    assert (r.precision, r.recall) == pytest.approx((1 / 3, 1 / 2))
    assert r.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert r.matches[0] == {
        "reference": 0,
        "label": "cat",
        "source": "annotation",
        "prediction": 0,
        "phrase": "a cat",
        "iou": 1.0,
        "counted": True,
    }
    assert r.matches[1]["prediction"] == -1 and r.matches[1]["counted"] is False


def test_no_prediction_or_no_reference_scores_zero():
    for preds, refs in (([], [A]), ([A], []), ([], [])):
        r = localization_score(preds, refs)
        assert (r.score, r.precision, r.recall, r.f1) == (0.0, 0.0, 0.0, 0.0)


def test_bad_localization_options_are_refused():
    with pytest.raises(ValueError, match="average"):
        LocalizationConfig(average="boxes")
    with pytest.raises(ValueError, match="threshold"):
        LocalizationConfig(threshold=1.5)


# ------------------------------------------------------------------ text for the semantic scorers


def test_description_text_drops_box_strings_and_markup():
    text = hand_made_texts()["precise"]
    parsed = formats.parse(text, FMT, image_size=SIZE)
    t = description_text(text, [g.to_dict() for g in parsed])
    assert t == "In this region there is person, bicycle, car, dog, traffic light."
    fenced = '```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "a cat"}, {"bbox_2d": [5, 5, 9, 9], "label": "dog"}]\n```'
    assert description_text(fenced) == "a cat, dog"
    assert description_text("") == "" and description_text(None) == ""


def test_long_text_is_split_into_pieces_that_fit():
    count = lambda s: len(s.split()) + 2  # noqa: E731  (words plus start and end tokens)
    short = "a red car."
    assert split_to_fit(short, count, 10) == [short]
    text = (
        "A man rides a bike. He passes a red car, a blue bus and a tree with many green leaves on it. Done."
    )
    pieces = split_to_fit(text, count, 8)
    assert all(count(p) <= 8 for p in pieces)
    assert " ".join(pieces).split() == text.split()  # nothing lost, order kept
    assert pieces[0] == "A man rides a bike."


# ------------------------------------------------------------------ fixture quality ordering (labels scorer)


@pytest.fixture(scope="module")
def labels_scorer():
    return LabelScorer()


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path)


def score_fixture(tmp_path, scorer, **cfg):
    region = fixture_region(draw_image(tmp_path / "scene.png"))
    texts = hand_made_texts()
    cands = [candidate(region, name, text, i) for i, (name, text) in enumerate(texts.items())]
    out = RegionScorer(scorer, ScoreConfig(**cfg)).score_region(region, cands, Counter())
    by = {}
    for name, c in zip(texts, cands):
        by[name] = next(s for s in out if s.id == c.id)
        by[name + "#refined"] = next(s for s in out if s.id == c.id + "#refined")
    return by


def test_scores_order_hand_made_descriptions_as_a_person_would(tmp_path, labels_scorer):
    s = score_fixture(tmp_path, labels_scorer)
    total = {k: v.total for k, v in s.items()}
    # precise > near (boxes a few pixels off) > misplaced boxes / invented objects > vague
    assert total["precise"] > total["near"] > total["misplaced"] > total["vague"]
    assert total["near"] > total["invented"] > total["vague"]
    # the parts explain the order
    assert s["misplaced"].localization == 0.0 and s["misplaced"].semantic == pytest.approx(
        s["precise"].semantic
    )
    assert s["invented"].semantic < s["precise"].semantic and s["vague"].semantic < s["invented"].semantic
    assert s["precise"].localization > 0.99 and 0.5 < s["near"].localization < 0.9
    assert s["invented"].precision == pytest.approx(2 / 5) and s["invented"].recall == pytest.approx(2 / 5)
    # refinement snaps the near boxes onto the references: same text as the precise description
    assert s["near#refined"].text == s["precise"].text
    assert s["near#refined"].total == pytest.approx(s["precise"].total)
    assert s["misplaced#refined"].text == s["misplaced"].text  # nothing within IoU 0.5 to snap to


def test_label_scorer_definition(labels_scorer):
    refs = region_references(fixture_region("unused.png"))
    state = labels_scorer.prepare(None, None, refs)
    exact = SemanticItem("", [label for label, _, _ in OBJECTS])
    two = SemanticItem("", ["person", "car"])
    invented = SemanticItem("", ["person", "car", "a giraffe", "a spaceship"])
    f1, two_f1, inv_f1 = labels_scorer.score(state, [exact, two, invented])
    assert f1 == pytest.approx(1.0, abs=1e-4)
    labels_scorer.mode = "recall"
    recall = labels_scorer.score(state, [two, invented])
    labels_scorer.mode = "precision"
    precision = labels_scorer.score(state, [two, invented])
    labels_scorer.mode = "f1"
    assert precision[0] == pytest.approx(1.0, abs=1e-4) and recall[0] < 0.8  # names 2 of 5 objects
    assert precision[1] < precision[0]  # invented objects lower precision
    assert two_f1 == pytest.approx(2 * precision[0] * recall[0] / (precision[0] + recall[0]))
    # no grounded phrase: the clauses of the text are the mentions
    worded = labels_scorer.score(state, [SemanticItem("A person rides a bicycle next to a car.", [])])[0]
    assert worded > labels_scorer.score(state, [SemanticItem("Nothing much to see.", [])])[0]


# ------------------------------------------------------------------ bad input never stops the stage


def test_bad_candidates_are_scored_and_counted(tmp_path):
    region = fixture_region(draw_image(tmp_path / "scene.png"))
    nan = float("nan")
    cands = [
        candidate(region, "nobox", "A person and a car, no boxes here.", 0),
        candidate(region, "empty", "", 1),
        candidate(region, "nan", "x", 2, parse=False, groundings=[{"phrase": "p", "box": [nan, 1, 2, 3]}]),
        candidate(
            region,
            "outside",
            "x",
            3,
            parse=False,
            groundings=[{"phrase": "dog", "box": [480, 250, 900, 300]}],
        ),
        candidate(region, "flat", "x", 4, parse=False, groundings=[{"phrase": "p", "box": [5, 5, 5, 9]}]),
        candidate(
            region, "junk", "x", 5, parse=False, groundings=[{"phrase": "p", "box": "abc"}, "not a dict"]
        ),
        candidate(region, "codec", "<|box_start|>(1,2)<|box_end|> and <|box_start|>(5,5),(9,nan)", 6),
    ]
    problems = Counter()
    out = RegionScorer(KeywordScorer()).score_region(region, cands, problems)
    assert len(out) == 2 * len(cands)
    for s in out:
        assert all(
            math.isfinite(v) for v in (s.semantic, s.localization, s.total, s.precision, s.recall, s.f1)
        )
    by = {s.id: s for s in out}
    assert by[cands[0].id].localization == 0.0 and "no box" in by[cands[0].id].problems[-1]
    assert by[cands[3].id].groundings[0]["box"] == [480.0, 250.0, 640.0, 300.0]  # clipped, still scored
    for kind in (
        "no box",
        "empty text",
        "non-finite box",
        "box outside the image",
        "degenerate box",
        "malformed grounding",
        "codec problem",
    ):
        assert problems[kind] >= 1, kind
    json.dumps([s.to_dict() for s in out], allow_nan=False)  # every record can be written


# ------------------------------------------------------------------ detector references


def test_detections_merge_into_references_without_duplicates():
    refs = region_references(fixture_region("unused.png"))
    person = OBJECTS[0][1]
    detections = [
        Detection("man", (101, 121, 161, 299), 0.9),  # duplicate of the annotated person
        Detection("bench", (200, 100, 300, 180), 0.8),  # new object inside the region
        Detection("bench?", (205, 102, 300, 182), 0.5),  # lower-scored duplicate of the bench
        Detection("sky", (0, 0, 640, 60), 0.95),  # outside the region
        Detection("bad", (5, 5, 5, 5), 0.99),
    ]
    merged = merge_detections(refs, detections, REGION_BOX, dedup_iou=0.5)
    assert merged.labels == [*refs.labels, "bench"]
    assert merged.sources[-1] == "detector" and merged.sources[0] == "annotation"
    assert tuple(merged.boxes[0]) == person  # annotations always win


def test_detector_boxes_count_as_references(tmp_path):
    region = fixture_region(draw_image(tmp_path / "scene.png"))
    bench = (200.0, 100.0, 300.0, 180.0)
    text = "A <|object_ref_start|>bench<|object_ref_end|>" + formats.format_box(bench, FMT, image_size=SIZE)
    cand = candidate(region, "bench", text, 0)
    detector = FakeDetector([Detection("bench", bench, 0.9)])
    with_det = RegionScorer(KeywordScorer(), detector=detector).score_region(region, [cand], Counter())[0]
    without = RegionScorer(KeywordScorer()).score_region(region, [cand], Counter())[0]
    assert without.localization == 0.0 and with_det.localization == pytest.approx(1 / 6, abs=0.01)
    assert with_det.matches[-1]["source"] == "detector" and with_det.matches[-1]["counted"]
    assert detector.calls == [["bench"]]  # queried once per region, with the phrases


def test_tiny_owlv2_detector_wiring(tmp_path_factory, tmp_path):
    from PIL import Image

    from spr.scoring.detector import DetectorConfig, OpenVocabDetector

    det = OpenVocabDetector(DetectorConfig(str(tiny_owlv2_dir(tmp_path_factory)), threshold=0.0))
    image = Image.open(draw_image(tmp_path / "scene.png"))
    found = det.detect(image, ["person", "car", "person", ""])
    assert found, "a threshold of 0 keeps every box"
    for d in found:
        assert d.label in ("person", "car")
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= SIZE[0] and 0 <= y1 < y2 <= SIZE[1]
    assert det.detect(image, []) == []


def test_owlv2_boxes_scale_by_the_padded_square(tmp_path_factory, tmp_path, monkeypatch):
    from PIL import Image

    from spr.scoring.detector import DetectorConfig, OpenVocabDetector

    det = OpenVocabDetector(DetectorConfig(str(tiny_owlv2_dir(tmp_path_factory)), threshold=0.0))
    seen = []
    post = det.processor.post_process_grounded_object_detection

    def spy(outputs, **kw):
        seen.append(kw["target_sizes"])
        return post(outputs, **kw)

    monkeypatch.setattr(det.processor, "post_process_grounded_object_detection", spy)
    det.detect(Image.new("RGB", (640, 480)), ["car"])
    assert seen == [[(640, 640)]]  # not (480, 640): OWLv2 predicts on the image padded to a square


# ------------------------------------------------------------------ CLIP scorer wiring (tiny random CLIP)


@pytest.fixture(scope="module")
def clip_scorer(tmp_path_factory):
    return ClipScorer(str(tiny_clip_dir(tmp_path_factory, "clip")))


def test_clip_scorer_is_the_mean_of_crop_and_context_similarities(tmp_path, clip_scorer):
    from PIL import Image

    region = fixture_region(draw_image(tmp_path / "scene.png"))
    image = Image.open(region.image).convert("RGB")
    enc = clip_scorer.encoder
    state = clip_scorer.prepare(region, image, region_references(region))
    got = clip_scorer.score(state, [SemanticItem("a person next to a car")])[0]
    crop = enc.encode_images([image.crop((100, 80, 540, 310))])[0]
    ctx = enc.encode_regions_in_context(image, [REGION_BOX])[0]
    text = enc.encode_texts(["a person next to a car"])[0]
    assert got == pytest.approx(0.5 * (float(crop @ text) + float(ctx @ text)), abs=1e-5)


def test_clip_scorer_survives_an_unusable_region_box(tmp_path, clip_scorer):
    from PIL import Image

    region = fixture_region(draw_image(tmp_path / "scene.png"))
    image = Image.open(region.image).convert("RGB")
    for box in ([math.nan, 0, 10, 10], [700, 500, 900, 600], [5, 5, 5, 5]):
        region.region_box = box
        state = clip_scorer.prepare(region, image, None)  # falls back to the whole image
        assert np.isfinite(clip_scorer.score(state, [SemanticItem("a car")])[0])


def test_clip_scorer_shares_image_embeddings_and_batches_texts(tmp_path, clip_scorer, monkeypatch):
    enc = clip_scorer.encoder
    calls = Counter()
    for name in ("encode_images", "encode_regions_in_context", "encode_texts"):
        original = getattr(enc, name)

        def counted(*a, _orig=original, _name=name, **kw):
            calls[_name] += 1
            calls[_name + " items"] += len(a[0]) if _name == "encode_texts" else 0
            return _orig(*a, **kw)

        monkeypatch.setattr(enc, name, counted)
    region = fixture_region(draw_image(tmp_path / "scene.png"))
    texts = hand_made_texts()
    cands = [candidate(region, n, t, i) for i, (n, t) in enumerate(texts.items())]
    out = RegionScorer(clip_scorer).score_region(region, cands, Counter())
    assert len(out) == 10
    assert calls["encode_images"] == 1 and calls["encode_regions_in_context"] == 1  # once per region
    assert calls["encode_texts"] == 1  # every text of the region in one call
    # each distinct piece of text once: original and refined texts read the same without their boxes, and
    # precise / near / misplaced name the same objects
    texts = {description_text(s.text, s.groundings) for s in out}
    assert len(texts) == 3
    assert calls["encode_texts items"] == len({p for t in texts for p in clip_scorer.pieces(t)})


def test_clip_scorer_splits_long_texts_and_averages(tmp_path, clip_scorer):
    from PIL import Image

    region = fixture_region(draw_image(tmp_path / "scene.png"))
    image = Image.open(region.image).convert("RGB")
    state = clip_scorer.prepare(region, image, region_references(region))
    long = " ".join(
        f"There is a {w} next to the {v} on the left side of the street."
        for w, v in [("car", "tree"), ("dog", "bus"), ("man", "bike")]
    )
    pieces = clip_scorer.pieces(long)
    assert len(pieces) == 3 and all(
        clip_scorer.encoder.count_tokens(p) <= clip_scorer.encoder.max_text_tokens for p in pieces
    )
    whole = clip_scorer.score(state, [SemanticItem(long)])[0]
    parts = clip_scorer.score(state, [SemanticItem(p) for p in pieces])
    assert whole == pytest.approx(float(np.mean(parts)), abs=1e-6)


# ------------------------------------------------------------------ the `spr score` stage


@pytest.fixture
def keywords_registered():
    assert "keywords" in SEMANTIC_SCORERS  # registered by scoring_fixtures


def test_a_scorer_under_a_taken_name_is_refused_and_an_unknown_one_lists_the_known():
    with pytest.raises(ValueError, match="semantic scorer 'clip' is already registered"):
        register_semantic_scorer("clip", lambda **_: KeywordScorer())
    with pytest.raises(
        UserError, match="unknown semantic scorer 'bleu'; available: clip, keywords, labels, none"
    ):
        make_semantic_scorer("bleu")


def score_cli(run, *extra):
    return main(
        [
            "score",
            "--regions",
            str(run / "regions.jsonl"),
            "--candidates",
            str(run / "candidates.jsonl"),
            "--out",
            str(run / "scores.jsonl"),
            "--semantic",
            "keywords",
            *extra,
        ]
    )


def test_score_stage_writes_records_and_resumes(run_dir, keywords_registered):
    run, ids = run_dir
    assert score_cli(run) == 0
    scores = read_records(run / "scores.jsonl", Score)
    assert len(scores) == 2 * len(ids) and sum(s.refined for s in scores) == len(ids)
    assert {s.id for s in scores} == {*ids.values(), *(i + "#refined" for i in ids.values())}
    summary = json.loads((run / "scores.summary.json").read_text())
    assert summary["written"] == 10 and summary["semantic"] == "keywords"
    # killed mid-write: a partial last line; the re-run repairs it and ends with one record per id
    data = (run / "scores.jsonl").read_bytes()
    (run / "scores.jsonl").write_bytes(data[: len(data) - 40])
    assert score_cli(run) == 0
    again = list(iter_jsonl(run / "scores.jsonl"))
    assert len(again) == 10 and len({r["id"] for r in again}) == 10
    summary = json.loads((run / "scores.summary.json").read_text())
    assert (summary["written"], summary["already_there"]) == (1, 9)


def test_a_resumed_score_run_counts_what_the_killed_one_scored(run_dir, keywords_registered):
    run, _ = run_dir
    (region,) = read_records(run / "regions.jsonl", Region)
    cands = read_records(run / "candidates.jsonl", Candidate)
    second = Region(**{**region.to_dict(), "id": "img1/r1"})
    more = [Candidate(**{**c.to_dict(), "id": "r1-" + c.id, "region_id": second.id}) for c in cands]
    write_jsonl(run / "regions.jsonl", [region, second])
    write_jsonl(run / "candidates.jsonl", [*cands, *more])
    assert score_cli(run) == 0
    whole = json.loads((run / "scores.summary.json").read_text())["problems"]
    assert whole["refined: boxes replaced"] > 0
    # killed after the first region: its records and its counts line stay, the second region's are gone
    lines = (run / "scores.jsonl").read_text().splitlines()
    (run / "scores.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["region_id"] == region.id)
    )
    counts = run / "scores.counts.jsonl"
    counts.write_text(counts.read_text().splitlines()[0] + "\n")
    assert score_cli(run) == 0
    summary = json.loads((run / "scores.summary.json").read_text())
    assert summary["written"] == len(lines) // 2 and summary["problems"] == whole


def test_score_stage_options_and_bad_records(run_dir, keywords_registered, capsys):
    run, ids = run_dir
    with (run / "candidates.jsonl").open("a") as f:
        f.write('{"id": "broken", "region_id": "img1/r0"}\n')  # missing fields
        f.write(
            '{"id": "other/p0/0", "region_id": "other", "prompt_id": "p0", "prompt": "", "sample": 0, "text": ""}\n'
        )
        f.write("not json\n")
    assert score_cli(run, "--no-refine", "--lambda", "0", "--loc-average", "prediction") == 0
    scores = read_records(run / "scores.jsonl", Score)
    assert len(scores) == len(ids) and not any(s.refined for s in scores)
    assert all(s.total == pytest.approx(s.localization) for s in scores)
    problems = json.loads((run / "scores.summary.json").read_text())["problems"]
    assert problems["malformed candidate record"] == 2 and problems["candidate of unknown region"] == 1
    assert score_cli(run, "--overwrite", "--lambda", "2") == 2
    assert "lambda: must be at most 1, got 2" in capsys.readouterr().err
    assert main(["score", "--regions", str(run / "nope.jsonl"), "--candidates", "x", "--out", "y"]) == 2


def test_score_stage_skips_regions_whose_image_is_missing_and_fails_when_none_is_left(
    run_dir, tmp_path_factory, capsys
):
    run, ids = run_dir
    (run / "images" / "scene.png").unlink()
    clip = str(tiny_clip_dir(tmp_path_factory, "clip"))
    assert (
        main(
            [
                "score",
                "--regions",
                str(run / "regions.jsonl"),
                "--candidates",
                str(run / "candidates.jsonl"),
                "--out",
                str(run / "scores.jsonl"),
                "--clip-model",
                clip,
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert "region skipped: image missing | 1" in captured.out
    assert "no candidate could be scored" in captured.err
    assert (run / "scores.jsonl").read_text() == ""
