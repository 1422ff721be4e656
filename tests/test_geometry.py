"""One coordinate contract end to end: Qwen2.5-VL writes boxes in pixels of the *resized* input, so the pixel
budget that resized it travels with every record, from generate to pairs to train to eval, and a stage that
would read boxes under another budget refuses."""

from __future__ import annotations

import json

import pytest
from evaluate_fixtures import make_rec_jsonl
from scoring_fixtures import OBJECTS, SIZE, draw_image, fixture_region, shifted

from spr import formats, models
from spr.cli import main
from spr.data.jsonl import read_records, write_jsonl
from spr.data.records import Candidate
from spr.formats.qwen2_5_vl import smart_resize
from spr.prompts import BUILTIN, render

BUDGET = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 8}  # the tiny checkpoint's own: 28 * 28 * 16


@pytest.mark.slow
def test_a_non_default_pixel_budget_travels_from_generate_to_train_and_eval(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen2_5_vl")
    flags = ["--max-pixels", str(BUDGET["max_pixels"])]
    region = fixture_region(draw_image(tmp_path / "scene.png"))
    write_jsonl(tmp_path / "regions.jsonl", [region])

    # generate records the budget, and the resized input size it gave each view
    assert main(["generate", "--model", str(model), "--regions", str(tmp_path / "regions.jsonl"), "--out",
                 str(tmp_path / "sampled.jsonl"), "--samples", "1", "--temperature", "0", "--max-new-tokens", "8",
                 "--prompts", "region_box,crop", *flags]) == 0  # fmt: skip
    for c in read_records(tmp_path / "sampled.jsonl", Candidate):
        assert c.pixel_budget == BUDGET
        view = (c.crop_box[2] - c.crop_box[0], c.crop_box[3] - c.crop_box[1]) if c.crop_box else SIZE
        h, w = smart_resize(view[1], view[0], **BUDGET)
        assert c.geometry == {"input_size": [w, h]} and w * h <= BUDGET["max_pixels"]

    # descriptions as the model writes them under that budget: every box a few pixels off its object
    adapter = models.load(str(model), max_pixels=BUDGET["max_pixels"])
    cands = []
    for prompt_id in ("region_box", "crop"):
        rp = render(BUILTIN[prompt_id], region, adapter.fmt, adapter.geometry)
        ox, oy = rp.origin
        for sample, dx in enumerate((6, 400)):  # near the objects, and far off them
            view_boxes = [(label, shifted(shifted(box, -ox, -oy), dx, 4)) for label, box, _ in OBJECTS]
            view_boxes = [(label, b) for label, b in view_boxes if b[2] <= rp.view_size[0]]
            text = formats.render(view_boxes, adapter.fmt, rp.view_size, **rp.geometry)
            parsed = formats.parse(text, adapter.fmt, rp.view_size, **rp.geometry)
            cands.append(Candidate(
                id=f"{region.id}/{prompt_id}/{sample}", region_id=region.id, prompt_id=prompt_id, prompt=rp.text,
                sample=sample, text=text, groundings=rp.groundings_to_original(parsed), fmt=adapter.fmt,
                geometry=rp.geometry, pixel_budget=adapter.pixel_budget(), image=region.image,
                crop_box=rp.crop_box))  # fmt: skip
    write_jsonl(tmp_path / "candidates.jsonl", cands)
    files = ["--regions", str(tmp_path / "regions.jsonl"), "--candidates", str(tmp_path / "candidates.jsonl")]
    assert main(["score", *files, "--out", str(tmp_path / "scores.jsonl"), "--semantic", "none"]) == 0
    assert (
        main(
            [
                "pairs",
                *files,
                "--scores",
                str(tmp_path / "scores.jsonl"),
                "--out",
                str(tmp_path / "pairs.jsonl"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    references = {label: box for label, box, _ in OBJECTS}
    default = models.load(str(model))  # the checkpoint's own budget
    for row in rows:
        assert row["geometry"]["pixel_budget"] == BUDGET and row["geometry"]["format"] == "qwen2_5_vl"
        crop = row["crop_box"]
        view = (crop[2] - crop[0], crop[3] - crop[1]) if crop else SIZE
        ox, oy = (crop[0], crop[1]) if crop else (0, 0)
        chosen = row["chosen"][0]["content"][0]["text"]
        # the refined chosen answer, read as the trained model will read it: the objects, in original pixels
        for g in formats.parse(chosen, "qwen2_5_vl", view, **adapter.geometry(view)):
            box = shifted(g.box, ox, oy)
            assert box == pytest.approx(
                references[g.phrase], abs=view[0] / adapter.geometry(view)["input_size"][0] + 1e-6
            )
        # read under the checkpoint's default budget the same text means other places
        wrong = formats.parse(chosen, "qwen2_5_vl", view, **default.geometry(view))
        assert any(shifted(g.box, ox, oy) != pytest.approx(references[g.phrase], abs=2) for g in wrong)

    # train under the checkpoint's budget is refused, naming both; under the run's it trains
    train = ["train", "--model", str(model), "--data", str(tmp_path / "dpo.jsonl"), "--max-steps", "1",
             "--per-device-train-batch-size", "1"]  # fmt: skip
    assert main([*train, "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert f"made under pixel budget {BUDGET}" in err.replace("'", "'") and "28 * 28" not in err
    assert main([*train, "--out", str(tmp_path / "adapter"), *flags]) == 0

    # eval records the budget; resuming it under another budget is refused
    data = make_rec_jsonl(tmp_path / "rec")
    evaluate = ["eval", "rec", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "eval"),
                "--max-new-tokens", "8"]  # fmt: skip
    assert main([*evaluate, *flags]) == 0
    assert main(evaluate) == 2
    assert "max_pixels: 6272 -> null" in capsys.readouterr().err
