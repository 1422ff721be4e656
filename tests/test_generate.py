import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from spr.cli import main
from spr.data.jsonl import read_records
from spr.data.records import Candidate, Region
from spr.models import available_families
from spr.models.adapter import ModelAdapter
from spr.prompts import BUILTIN, render
from spr.sampling import make_candidate

FAST = ["--samples", "2", "--max-new-tokens", "4", "--batch-size", "3"]


@pytest.fixture
def regions(coco, tmp_path) -> Path:
    """regions.jsonl made by `spr regions` from the shared COCO fixture (4 regions)."""
    annotations, images = coco
    out = tmp_path / "regions.jsonl"
    args = ["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(out)]
    assert main([*args, "--per-image", "2"]) == 0
    return out


def expected_ids(regions_path, samples=2, prompts=tuple(BUILTIN), limit=None):
    rs = read_records(regions_path, Region)[:limit]
    return {f"{r.id}/{p}/{s}" for r in rs for p in prompts for s in range(samples)}


def ids_of(path) -> list[str]:
    return [c.id for c in read_records(path, Candidate)]


def generate(model, regions, out, *extra):
    return main(
        ["generate", "--model", str(model), "--regions", str(regions), "--out", str(out), *FAST, *extra]
    )


@pytest.mark.parametrize("family", available_families())
def test_regions_then_generate_end_to_end(family, tiny_model_dir, regions, tmp_path):
    out = tmp_path / "candidates.jsonl"
    assert generate(tiny_model_dir(family), regions, out, "--limit", "2") == 0
    cands = read_records(out, Candidate)
    assert {c.id for c in cands} == expected_ids(regions, limit=2) and len(cands) == 12
    region = {r.id: r for r in read_records(regions, Region)}
    for c in cands:
        r = region[c.region_id]
        assert c.fmt and c.image == r.image and c.prompt
        assert (c.crop_box is not None) == (c.prompt_id == "crop")
        w, h = r.image_size
        for g in c.groundings:  # random weights rarely write a box; any that is written is in the image
            x1, y1, x2, y2 = g["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def answer_everything(adapter_cls, text):
    """Make every generated sample the fixed ``text`` (a model that always gives the same answer)."""

    def fake_generate(self, inputs, **kwargs):
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.eos_token_id]
        rows = inputs["input_ids"].shape[0] * kwargs.get("num_return_sequences", 1)
        return torch.tensor([ids] * rows)

    return fake_generate


def test_boxes_are_stored_in_original_pixels(tiny_model_dir, regions, tmp_path, monkeypatch):
    # The whole view, on Qwen2-VL's 0-1000 grid: the crop for crop prompts, the image for the others.
    whole = "<|object_ref_start|>everything<|object_ref_end|><|box_start|>(0,0),(1000,1000)<|box_end|>"
    monkeypatch.setattr(ModelAdapter, "generate", answer_everything(ModelAdapter, whole))
    out = tmp_path / "c.jsonl"
    assert generate(tiny_model_dir("qwen2_vl"), regions, out) == 0
    region = {r.id: r for r in read_records(regions, Region)}
    cands = read_records(out, Candidate)
    assert len(cands) == len(expected_ids(regions))
    for c in cands:
        assert c.text == whole and not c.problems
        (g,) = c.groundings
        w, h = region[c.region_id].image_size
        assert g["phrase"] == "everything"
        assert g["box"] == pytest.approx(c.crop_box if c.crop_box else [0, 0, w, h])


def test_make_candidate_shifts_crop_boxes_and_keeps_geometry():
    region = Region(id="r", image="a.png", image_size=[640, 480], region_box=[100, 50, 420, 300], objects=[])
    prompt = render(BUILTIN["crop"], region, "qwen2_5_vl", lambda size: {"input_size": [308, 252]})
    # A box at (0, 0)-(154, 126) of the 308x252 model input is the top-left quarter of the 320x250 crop.
    text = '```json\n[{"bbox_2d": [0, 0, 154, 126], "label": "red box"}]\n```'
    c = make_candidate(region, prompt, 3, text, "qwen2_5_vl")
    assert c.id == "r/crop/3" and c.crop_box == [100, 50, 420, 300]
    assert c.geometry == {"input_size": [308, 252]}
    assert c.groundings[0]["box"] == pytest.approx([100, 50, 100 + 160, 50 + 125], abs=0.01)
    assert c.groundings[0]["phrase"] == "red box"


def test_resume_after_an_interrupted_run_gives_one_record_per_id(tiny_model_dir, regions, tmp_path):
    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "c.jsonl"
    assert generate(model, regions, out, "--limit", "1") == 0  # stopped early ...
    first = out.read_text().splitlines()
    out.write_text("\n".join(first) + "\n" + first[0][: len(first[0]) // 2])  # ... and killed mid-write
    assert generate(model, regions, out) == 0
    ids = ids_of(out)
    assert Counter(ids).most_common(1)[0][1] == 1 and set(ids) == expected_ids(regions)
    assert out.read_text().splitlines()[: len(first)] == first  # nothing done twice
    assert generate(model, regions, out) == 0  # a complete run is a no-op
    assert ids_of(out) == ids


def test_a_resumed_run_summarises_the_whole_output(tiny_model_dir, regions, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    whole = tmp_path / "whole.jsonl"
    assert generate(model, regions, whole) == 0
    expected = json.loads(whole.with_suffix(".summary.json").read_text())
    assert expected["new_tokens"] == sum(c.new_tokens for c in read_records(whole, Candidate)) > 0
    out = tmp_path / "c.jsonl"
    assert generate(model, regions, out, "--limit", "1") == 0  # stopped early, then resumed
    assert generate(model, regions, out) == 0
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    for key in ("candidates", "with_problems", "without_boxes", "new_tokens"):
        assert summary[key] == expected[key], key
    assert generate(model, regions, out) == 0  # nothing left to do: the summary stays the output's
    assert json.loads(out.with_suffix(".summary.json").read_text()) == summary


def test_a_finished_run_is_a_no_op_that_loads_no_model(
    tiny_model_dir, regions, tmp_path, monkeypatch, capsys
):
    import spr.models

    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "c.jsonl"
    assert generate(model, regions, out) == 0
    before = out.read_bytes()
    capsys.readouterr()

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(spr.models, "load", no_load)
    assert generate(model, regions, out) == 0
    assert out.read_bytes() == before
    assert re.search(
        rf"candidates already present +\| {len(expected_ids(regions))} ", capsys.readouterr().out
    )
    # other settings, a torn last line or a missing record: the stage runs (and loads the model)
    with pytest.raises(AssertionError, match="was loaded"):
        generate(model, regions, out, "--top-p", "0.5")
    out.write_bytes(before[:-1])
    with pytest.raises(AssertionError, match="was loaded"):
        generate(model, regions, out)


def test_bad_images_are_reported_and_skipped(tiny_model_dir, regions, tmp_path, capsys):
    rs = read_records(regions, Region)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = [
        Region(**{**rs[1].to_dict(), "id": "missing", "image": str(tmp_path / "nope.png")}),
        Region(**{**rs[1].to_dict(), "id": "corrupt", "image": str(corrupt)}),
        Region(**{**rs[1].to_dict(), "id": "resized", "image_size": [320, 240]}),
    ]
    path = tmp_path / "regions.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in [rs[0], *bad]))
    out = tmp_path / "c.jsonl"
    assert generate(tiny_model_dir("qwen2_vl"), path, out) == 0
    assert {c.region_id for c in read_records(out, Candidate)} == {rs[0].id}
    summary = capsys.readouterr().out
    for reason in ["image missing", "image unreadable", "image size differs from the record"]:
        assert re.search(rf"regions skipped: {reason} +\| 1 ", summary)
    assert "region missing: image missing" in summary and "region corrupt: image unreadable" in summary


def test_prompt_choice_and_option_errors(tiny_model_dir, regions, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert generate(tiny_model_dir("qwen2_vl"), regions, out, "--prompts", "crop", "--limit", "1") == 0
    assert set(ids_of(out)) == expected_ids(regions, prompts=["crop"], limit=1)
    assert generate(tiny_model_dir("qwen2_vl"), regions, out, "--temperature", "0") == 2
    assert "greedy decoding" in capsys.readouterr().err
    assert generate(tiny_model_dir("qwen2_vl"), tmp_path / "none.jsonl", out) == 2
    assert "no such regions file" in capsys.readouterr().err


def spr_command(*args):
    # One thread per process: the machine's cores are shared, and tiny models gain nothing from more.
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "spr.cli", *args], env


@pytest.mark.slow
def test_a_run_killed_at_three_points_and_resumed_equals_a_clean_run_byte_for_byte(
    tiny_model_dir, regions, tmp_path
):
    model = tiny_model_dir("qwen2_vl")
    settings = ["--samples", "2", "--max-new-tokens", "32", "--batch-size", "2"]
    clean = tmp_path / "clean.jsonl"
    assert generate(model, regions, clean, *settings) == 0
    expected = clean.read_bytes()
    total = len(expected.splitlines())
    for point in (total // 4, total // 2, 3 * total // 4):
        out = tmp_path / f"killed-{point}.jsonl"
        cmd, env = spr_command("generate", "--model", str(model), "--regions", str(regions), "--out", str(out),
                               *FAST, *settings)  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < point):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < len(out.read_bytes().splitlines()) < total, "the run was not killed midway"
        assert generate(model, regions, out, *settings) == 0
        assert out.read_bytes() == expected, f"killed after {point} records"


@pytest.mark.slow
def test_two_processes_write_the_same_file_as_one(tiny_model_dir, regions, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert generate(model, regions, one) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd, env = spr_command(
        "generate", "--model", str(model), "--regions", str(regions), "--out", str(two), *FAST
    )
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", *cmd[2:]]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert two.read_bytes() == one.read_bytes()  # the same candidates, in the same order
    assert not list(tmp_path.glob("two.shard*"))  # merged and removed
    assert re.search(r"candidates written +\| 24 ", result.stdout)  # one summary, over both processes


def test_include_greedy_adds_the_greedy_answer_of_each_prompt(tiny_model_dir, regions, tmp_path):
    out = tmp_path / "c.jsonl"
    assert generate(tiny_model_dir("qwen2_vl"), regions, out, "--include-greedy", "--limit", "1") == 0
    cands = {c.id: c for c in read_records(out, Candidate)}
    greedy = [c for c in cands.values() if c.id.endswith("/greedy")]
    assert len(greedy) == 3 and all(c.sample == -1 for c in greedy)
    # the greedy answer is the model's own greedy decoding of that prompt
    again = tmp_path / "g.jsonl"
    assert (
        generate(
            tiny_model_dir("qwen2_vl"), regions, again, "--temperature", "0", "--samples", "1", "--limit", "1"
        )
        == 0
    )
    for c in read_records(again, Candidate):
        assert cands[c.id.rsplit("/", 1)[0] + "/greedy"].text == c.text


def test_a_view_the_processor_refuses_skips_only_that_prompt(tiny_model_dir, regions, tmp_path, capsys):
    """Qwen2-VL refuses images with an aspect ratio over 200: a thin strip's crop is skipped, its other prompts
    and the other regions in the same batch go on."""
    rs = read_records(regions, Region)
    strip = Region(**{**rs[0].to_dict(), "id": "strip", "region_box": [10.0, 100.0, 610.0, 102.0]})
    path = tmp_path / "regions.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in [strip, rs[1]]))
    out = tmp_path / "c.jsonl"
    assert generate(tiny_model_dir("qwen2_vl"), path, out) == 0
    got = set(ids_of(out))
    assert got == {f"{r}/{p}/{s}" for r in ("strip", rs[1].id) for p in BUILTIN for s in (0, 1)} - {
        "strip/crop/0",
        "strip/crop/1",
    }
    summary = capsys.readouterr().out
    assert re.search(r"prompts skipped: view refused by the processor +\| 1 ", summary)
    assert "region strip prompt crop: view refused by the processor: absolute aspect ratio" in summary
