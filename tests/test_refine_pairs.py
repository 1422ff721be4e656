"""Refinement (boxes snapped onto reference boxes in the text) and preference pairs with the DPO dataset."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scoring_fixtures import (
    FMT,
    OBJECTS,
    SIZE,
    KeywordScorer,
    candidate,
    draw_image,
    fixture_region,
    hand_made_texts,
    qwen_text,
    shifted,
    write_run,
)

from spr import boxes as B
from spr import formats
from spr.cli import main
from spr.data.jsonl import read_records
from spr.data.records import Candidate, Pair, Score
from spr.pairs import PairConfig, build_pairs, dpo_row
from spr.refine import RefineConfig, refine_candidate, usable_groundings
from spr.scoring import RegionScorer

REFS = np.array([box for _, box, _ in OBJECTS])
# the pixel budget of a Qwen2.5-VL run (its boxes are in pixels of the resized input, which the budget decides)
GEOMETRY = {"qwen2_5_vl": {"min_pixels": 3136, "max_pixels": 12845056}}


@pytest.fixture
def region(tmp_path):
    return fixture_region(draw_image(tmp_path / "scene.png"))


def roundtrip(box, fmt, size, **geometry):
    """The box as format ``fmt`` can write it (its quantization)."""
    text = formats.render([("thing", box)], fmt, image_size=size, **geometry)
    return formats.parse(text, fmt, image_size=size, **geometry)[0].box


def make_candidate(region, fmt, groundings, size=SIZE, crop_box=None, sample=0):
    """A candidate written by ``fmt`` in the view ``size`` (crop or full image), groundings stored in original
    pixels as the generate stage stores them."""
    geometry = GEOMETRY.get(fmt, {})
    text = formats.render(groundings, fmt, image_size=size, **geometry)
    parsed = formats.parse(text, fmt, image_size=size, **geometry)
    ox, oy = (crop_box[0], crop_box[1]) if crop_box else (0, 0)
    gs = [
        {
            "phrase": g.phrase,
            "box": [g.box[0] + ox, g.box[1] + oy, g.box[2] + ox, g.box[3] + oy],
            "span": list(g.span),
        }
        for g in parsed
    ]
    return Candidate(
        id=f"{region.id}/p0/{sample}",
        region_id=region.id,
        prompt_id="p0",
        prompt="Describe.",
        sample=sample,
        text=text,
        groundings=gs,
        fmt=fmt,
        geometry=geometry,
        image=region.image,
        crop_box=crop_box,
    )


@pytest.mark.parametrize("fmt", formats.available())
def test_refined_text_reparses_to_the_reference_boxes_in_every_format(region, fmt):
    off = [(label, shifted(box, 6, -4)) for label, box, _ in OBJECTS]  # IoU 0.5-0.85 with the references
    cand = make_candidate(region, fmt, off)
    geo = GEOMETRY.get(fmt, {})
    assert len(cand.groundings) == len(OBJECTS), formats.parse(
        cand.text, fmt, image_size=SIZE, **geo
    ).problems
    refined = refine_candidate(cand, region, REFS)
    # a coarse format (kosmos2's 32x32 patches) may already write some of the shifted boxes as the reference
    assert refined.replaced + refined.exact == len(OBJECTS) and refined.replaced > 0 and not refined.problems
    reparsed = formats.parse(refined.text, fmt, image_size=SIZE, **geo)
    assert len(reparsed) == len(OBJECTS)
    for g, ref in zip(reparsed, REFS):
        assert g.box == pytest.approx(roundtrip(ref, fmt, SIZE, **geo), abs=1e-6)  # what the format can write
        assert g.box == pytest.approx(tuple(ref), abs=0.02 * max(SIZE))  # which is the reference, quantized
    assert [g["box"] for g in refined.groundings] == [list(g.box) for g in reparsed]


def test_refinement_in_a_cropped_view_writes_crop_coordinates(region):
    crop = [90, 70, 550, 320]
    view = (crop[2] - crop[0], crop[3] - crop[1])
    in_view = [(label, shifted(box, 6 - crop[0], -4 - crop[1])) for label, box, _ in OBJECTS]
    cand = make_candidate(region, FMT, in_view, size=view, crop_box=crop)
    refined = refine_candidate(cand, region, REFS)
    assert refined.replaced == 5
    reparsed = formats.parse(refined.text, FMT, image_size=view)
    for g, ref in zip(reparsed, REFS):
        want = roundtrip(shifted(ref, -crop[0], -crop[1]), FMT, view)
        assert g.box == pytest.approx(want, abs=1e-6)
    for g, ref in zip(refined.groundings, REFS):  # stored back in original pixels
        assert g["box"] == pytest.approx(list(ref), abs=view[0] / 1000)


def test_unmatched_boxes_are_kept_or_dropped(region):
    parts = [("person", shifted(OBJECTS[0][1], 5, 5)), ("a ghost", (560.0, 20.0, 630.0, 70.0))]
    cand = candidate(region, "x", qwen_text(parts), 0)
    kept = refine_candidate(cand, region, REFS)
    assert (kept.replaced, kept.kept, kept.dropped) == (1, 1, 0)
    assert "(875,42),(984,146)" in kept.text  # the ghost's box as written
    dropped = refine_candidate(cand, region, REFS, RefineConfig(unmatched="drop"))
    assert (dropped.replaced, dropped.dropped) == (1, 1)
    assert "a ghost" in dropped.text and "(875,42)" not in dropped.text  # phrase stays, box text goes
    assert [g["phrase"] for g in dropped.groundings] == ["person"]


def test_one_to_one_refinement_snaps_one_box_per_reference(region):
    person = OBJECTS[0][1]
    parts = [("person", shifted(person, 3, 3)), ("person again", shifted(person, 12, 10))]
    cand = candidate(region, "x", qwen_text(parts), 0)
    best = refine_candidate(cand, region, REFS)
    assert best.replaced == 2
    one = refine_candidate(cand, region, REFS, RefineConfig(matching="one_to_one"))
    assert (one.replaced, one.kept) == (1, 1)
    assert one.groundings[0]["box"] == pytest.approx(list(person), abs=0.7)  # the closer one snapped


def test_refinement_threshold_is_strictly_greater(region):
    ref = (0.0, 0.0, 100.0, 100.0)
    half = (0.0, 0.0, 100.0, 200.0)  # IoU exactly 0.5
    assert B.iou([ref], [half])[0, 0] == 0.5
    cand = make_candidate(region, "plain_pixel", [("thing", half)])
    assert refine_candidate(cand, region, [ref]).replaced == 0


def test_refinement_never_fails_on_odd_candidates(region):
    no_span = candidate(
        region, "x", "a person", 0, parse=False, groundings=[{"phrase": "p", "box": [100, 120, 160, 300]}]
    )
    r = refine_candidate(no_span, region, REFS)
    assert r.text == "a person" and r.kept == 1 and any("span" in p for p in r.problems)
    unknown = candidate(
        region,
        "x",
        "<box>",
        1,
        parse=False,
        groundings=[{"phrase": "p", "box": [100, 120, 160, 300], "span": [0, 5]}],
    )
    unknown.fmt = "no-such-format"
    assert "unknown box format" in refine_candidate(unknown, region, REFS).problems[0]
    for text in ("", "no boxes at all"):
        r = refine_candidate(candidate(region, "x", text, 2), region, REFS)
        assert r.text == text and not r.changed
    assert usable_groundings(candidate(region, "x", "", 3), region).problems[0] == "empty text"


# ------------------------------------------------------------------ pairs


def scored_run(tmp_path, texts_by_prompt):
    region = fixture_region(draw_image(tmp_path / "scene.png"))
    cands = []
    for prompt_id, texts in texts_by_prompt.items():
        for name, text in texts.items():
            cands.append(candidate(region, name, text, len(cands), prompt_id=prompt_id))
    scores = RegionScorer(KeywordScorer()).score_region(region, cands, Counter())
    names = {c.id: name for c, name in zip(cands, [n for t in texts_by_prompt.values() for n in t])}
    return {region.id: region}, {c.id: c for c in cands}, scores, names


def test_pairs_pick_best_refined_and_worst_original(tmp_path):
    texts = hand_made_texts()
    regions, cands, scores, names = scored_run(tmp_path, {"p0": texts})
    pairs, stats = build_pairs(regions, cands, scores)
    assert stats["pairs"] == 1 and stats["groups"] == 1
    (pair,) = pairs
    assert names[pair.chosen_id.removesuffix("#refined")] == "precise" and pair.chosen_id.endswith("#refined")
    assert names[pair.rejected_id] == "vague"
    assert pair.chosen == texts["precise"] and pair.rejected == texts["vague"]
    assert pair.margin > 0.9 and pair.prompt_id == "p0" and pair.id == "img1/r0/p0"
    for g, ref in zip(pair.chosen_groundings, REFS):
        assert g["box"] == pytest.approx(list(roundtrip(ref, FMT, SIZE)), abs=1e-6)


def test_pairs_group_by_prompt_and_skip_what_teaches_nothing(tmp_path):
    texts = hand_made_texts()
    regions, cands, scores, names = scored_run(
        tmp_path,
        {
            "p0": {"near": texts["near"], "nobox": "A person next to a bicycle and a car."},
            "p1": {"precise": texts["precise"]},  # refined text is the same text
            "p2": {"near": texts["near"], "precise": texts["precise"]},  # margin 0.06
        },
    )
    pairs, stats = build_pairs(regions, cands, scores, PairConfig(min_margin=0.1))
    assert [p.prompt_id for p in pairs] == ["p0"]
    assert names[pairs[0].rejected_id] == "nobox"  # no parseable box: S_loc 0, still a valid rejected
    assert names[pairs[0].chosen_id.removesuffix("#refined")] == "near"
    assert stats["identical chosen and rejected texts"] == 1 and stats["margin below threshold"] == 1
    # without refined scores (spr score --no-refine) the chosen is the best original
    originals = [s for s in scores if not s.refined]
    pairs, _ = build_pairs(regions, cands, originals)
    assert {p.prompt_id: names[p.chosen_id] for p in pairs} == {"p0": "near", "p2": "precise"}


def test_a_pair_whose_crop_cannot_be_rebuilt_is_skipped(tmp_path):
    regions, cands, scores, _ = scored_run(tmp_path, {"p0": hand_made_texts()})
    for c in cands.values():
        c.crop_box = [float("nan"), 0, 10, 10]
    pairs, stats = build_pairs(regions, cands, scores)
    assert pairs == [] and stats["unusable crop box"] == 1


def test_dpo_dataset_loads_with_datasets(tmp_path):
    import datasets

    regions, cands, scores, _ = scored_run(tmp_path, {"p0": hand_made_texts()})
    pairs, _ = build_pairs(regions, cands, scores)
    path = tmp_path / "dpo.jsonl"
    path.write_text("".join(json.dumps(dpo_row(p)) + "\n" for p in pairs))
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected", "images"} <= set(ds.column_names)
    row = ds[0]
    assert row["images"] == [pairs[0].image]
    assert row["prompt"][0]["role"] == "user"
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["prompt"][0]["content"][1]["text"] == pairs[0].prompt
    assert (
        row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"][0]["text"] == pairs[0].chosen
    )
    assert row["rejected"][0]["content"][0]["text"] == pairs[0].rejected


def test_score_then_pairs_commands(tmp_path, capsys):
    run, ids = write_run(tmp_path)
    files = ["--regions", str(run / "regions.jsonl"), "--candidates", str(run / "candidates.jsonl")]
    assert main(["score", *files, "--out", str(run / "scores.jsonl"), "--semantic", "keywords"]) == 0
    assert (
        main(["pairs", *files, "--scores", str(run / "scores.jsonl"), "--out", str(run / "pairs.jsonl")]) == 0
    )
    (pair,) = read_records(run / "pairs.jsonl", Pair)
    assert pair.chosen_id == ids["precise"] + "#refined" and pair.rejected_id == ids["vague"]
    (row,) = [json.loads(line) for line in (run / "dpo.jsonl").read_text().splitlines()]
    assert row["id"] == pair.id and row["crop_box"] is None
    summary = json.loads((run / "pairs.summary.json").read_text())
    assert summary["pairs"] == 1 and summary["margin below threshold"] == 0
    p2 = [
        "pairs",
        *files,
        "--scores",
        str(run / "scores.jsonl"),
        "--out",
        str(run / "p2.jsonl"),
        "--min-margin",
        "5",
    ]
    assert main(p2) == 2  # its DPO rows would overwrite those of pairs.jsonl
    assert "belong to pairs.jsonl" in capsys.readouterr().err
    assert main([*p2, "--dpo-out", str(run / "p2.dpo.jsonl")]) == 0
    assert read_records(run / "p2.jsonl", Pair) == []
    assert json.loads((run / "p2.summary.json").read_text())["margin below threshold"] == 1
    assert read_records(run / "scores.jsonl", Score)  # unchanged input
    empty = run / "empty.jsonl"
    empty.write_text("")
    assert main(["pairs", *files, "--scores", str(empty), "--out", str(run / "p3.jsonl")]) == 2
    assert "no score records" in capsys.readouterr().err


def _hand_scores(region, totals: dict[str, tuple[float, float]]):
    """Candidates and scores by hand: {sample: (original total, refined total)}, texts named after them."""
    cands, scores = {}, []
    for sample, (orig, ref) in totals.items():
        cid = f"{region.id}/p0/{sample}"
        cands[cid] = Candidate(id=cid, region_id=region.id, prompt_id="p0", prompt="Describe.", sample=-1 if sample == "greedy" else int(sample),
                               text=f"text {sample}", fmt=FMT, image=region.image)  # fmt: skip
        scores.append(Score(id=cid, candidate_id=cid, region_id=region.id, refined=False, text=f"text {sample}",
                            semantic=0.0, localization=orig, total=orig))  # fmt: skip
        scores.append(Score(id=cid + "#refined", candidate_id=cid, region_id=region.id, refined=True,
                            text=f"text {sample} refined", semantic=0.0, localization=ref, total=ref))  # fmt: skip
    return cands, scores


@pytest.mark.parametrize(
    "pairing, chosen, rejected",
    [
        ("paper", "text 1 refined", "text 2"),  # best refined vs worst original
        ("self_refined", "text 0 refined", "text 0"),  # the candidate refinement helped most, against itself
        ("best_vs_worst", "text 1", "text 2"),  # originals only
    ],
)
def test_each_pairing_rule_pairs_the_texts_it_says(region, pairing, chosen, rejected):
    cands, scores = _hand_scores(region, {"0": (0.2, 0.9), "1": (0.6, 0.95), "2": (0.1, 0.15)})
    (pair,), _ = build_pairs({region.id: region}, cands, scores, PairConfig(pairing=pairing))
    assert (pair.chosen, pair.rejected, pair.rule) == (chosen, rejected, pairing)


def test_the_greedy_answer_competes_with_the_samples(region):
    """With `generate --include-greedy`, the greedy answer is one more original: the chosen is never below it."""
    cands, scores = _hand_scores(region, {"0": (0.2, 0.3), "1": (0.1, 0.2), "greedy": (0.7, 0.8)})
    (pair,), _ = build_pairs({region.id: region}, cands, scores, PairConfig(pairing="paper"))
    assert pair.chosen_id == f"{region.id}/p0/greedy#refined" and pair.rejected == "text 1"
    (best,), _ = build_pairs({region.id: region}, cands, scores, PairConfig(pairing="best_vs_worst"))
    assert best.chosen == "text greedy"


def test_unmatched_box_takes_the_median_of_the_prompts_samples(region):
    """``unmatched="median"``: a box no reference backs becomes the coordinate-wise median of the samples' boxes
    for that object; with too few samples agreeing it is kept; matched boxes still snap to their reference."""
    ghost = (560.0, 20.0, 630.0, 70.0)
    parts = [("person", shifted(OBJECTS[0][1], 5, 5)), ("a ghost", ghost)]
    cand = candidate(region, "x", qwen_text(parts), 0)
    others = [np.array([shifted(ghost, 6, 4)]), np.array([shifted(ghost, 2, 0), (0.0, 0.0, 10.0, 10.0)]),
              np.array([(0.0, 0.0, 10.0, 10.0)])]  # fmt: skip
    median = refine_candidate(cand, region, REFS, RefineConfig(unmatched="median"), siblings=others)
    assert (median.replaced, median.medians, median.kept) == (1, 1, 0)
    want = np.median([ghost, shifted(ghost, 6, 4), shifted(ghost, 2, 0)], axis=0)
    assert median.groundings[1]["box"] == pytest.approx(list(want), abs=1.0)  # 0-1000 grid of a 640 px image
    assert median.groundings[1]["phrase"] == "a ghost"
    alone = refine_candidate(cand, region, REFS, RefineConfig(unmatched="median"), siblings=others[2:])
    assert (alone.replaced, alone.medians, alone.kept) == (1, 0, 1)
    assert "(875,42),(984,146)" in alone.text  # too few samples agree: kept as written
