"""Nothing lost, nothing mixed: locks, settings headers, kills at the worst moments, bad input that is named.

Kill tests send a real SIGKILL. Where the moment must be exact (inside a checkpoint save, between the two pairs
files), a small driver process runs the real stage and kills itself at that point."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from evaluate_fixtures import make_dpo_jsonl, make_regions
from PIL import Image

from spr.cli import main
from spr.data.jsonl import read_records
from spr.data.records import Candidate, Region

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def spr(*args) -> list[str]:
    return [sys.executable, "-m", "spr.cli", *map(str, args)]


@pytest.fixture
def regions(coco, tmp_path) -> Path:
    annotations, images = coco
    out = tmp_path / "regions.jsonl"
    assert main(["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(out),
                 "--per-image", "2"]) == 0  # fmt: skip
    return out


def bomb(path: Path) -> Path:
    """A 20000 x 20000 PNG (400 megapixels) that is a few kilobytes on disk."""
    Image.new("1", (20000, 20000)).save(path)
    return path


# -------------------------------------------------------------------------------------------- one writer


@pytest.mark.slow
def test_a_second_generate_on_the_same_output_is_refused_and_the_file_stays_whole(
    tiny_model_dir, regions, tmp_path
):
    many = tmp_path / "many.jsonl"  # enough work that the first run is still going when the second starts
    base = read_records(regions, Region)
    many.write_text(
        "".join(json.dumps({**r.to_dict(), "id": f"{r.id}-{k}"}) + "\n" for k in range(50) for r in base)
    )
    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "c.jsonl"
    args = ("generate", "--model", model, "--regions", many, "--out", out, "--samples", "2",
            "--max-new-tokens", "48", "--batch-size", "1")  # fmt: skip
    first = subprocess.Popen(spr(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    second = subprocess.run(spr(*args), env=ENV, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second started: give it more work"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2
    assert "is being written by another process (pid " in second.stderr and str(first.pid) in second.stderr
    ids = [c.id for c in read_records(out, Candidate)]
    assert ids and len(ids) == len(set(ids))
    # the kernel released the dead process's lock (its file is still there): the next writer takes it
    from spr.data.guard import OutputLock, lock_path

    OutputLock(lock_path(out), str(out)).acquire().release()


def test_resuming_with_other_settings_is_refused_and_overwrite_starts_over(
    tiny_model_dir, regions, tmp_path, capsys
):
    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "c.jsonl"
    base = ["generate", "--model", str(model), "--regions", str(regions), "--out", str(out), "--samples", "2",
            "--max-new-tokens", "4", "--limit", "1"]  # fmt: skip
    assert main(base) == 0
    before = out.read_bytes()
    assert main([*base, "--temperature", "0.7"]) == 2
    assert "temperature: 1.0 -> 0.7" in capsys.readouterr().err
    other = tiny_model_dir("llava")
    assert main([*base[:2], str(other), *base[3:]]) == 2
    assert "model: " in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing appended by the refused runs
    assert main([*base, "--temperature", "0.7", "--overwrite"]) == 0
    assert json.loads((tmp_path / "c.settings.json").read_text())["settings"]["temperature"] == 0.7

    scores = tmp_path / "s.jsonl"
    score = [
        "score",
        "--regions",
        str(regions),
        "--candidates",
        str(out),
        "--out",
        str(scores),
        "--semantic",
        "none",
    ]
    assert main(score) == 0
    assert main([*score, "--lambda", "0.5"]) == 2
    assert "lambda: 0.8 -> 0.5" in capsys.readouterr().err


def test_an_output_without_a_settings_header_is_not_resumed_blindly(regions, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    out.write_text(json.dumps({"id": "x/region_box/0"}) + "\n")
    assert main(["generate", "--model", "nowhere", "--regions", str(regions), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err or "no settings header" in err


def test_a_run_that_stopped_before_writing_a_record_is_not_held_to_its_settings(tmp_path, capsys):
    from spr.data.guard import StageOutput

    out = tmp_path / "adapter"
    with StageOutput(out, "train", {"dtype": "auto"}, directory=True):
        pass  # e.g. the data was unreadable: nothing written but the header
    with StageOutput(out, "train", {"dtype": "float32"}, directory=True):
        (out / "weights").write_text("w")
    with pytest.raises(Exception, match="dtype: float32 -> auto"):  # once it holds something, it is held
        StageOutput(out, "train", {"dtype": "auto"}, directory=True).__enter__()


# ------------------------------------------------------------------------------------------------ kills


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import {module} as target
    original = target.{name}
    calls = {{"n": 0}}
    def killing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == {at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    target.{name} = killing
    from spr.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_killed_at(module: str, name: str, at: int, *args) -> int:
    """Run `spr *args` in a process that SIGKILLs itself on the ``at``-th call of ``module.name``."""
    code = DRIVER.format(module=module, name=name, at=at)
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=ENV, capture_output=True, timeout=600
    )
    return proc.returncode


@pytest.mark.slow
def test_a_kill_inside_a_checkpoint_save_resumes_from_the_last_complete_one(tiny_model_dir, tmp_path):
    data = make_dpo_jsonl(tmp_path / "pairs", n=4)
    out = tmp_path / "out"
    args = ("train", "--model", tiny_model_dir("qwen2_vl"), "--data", data, "--out", out, "--max-steps", "3",
            "--save-steps", "1", "--logging-steps", "1", "--per-device-train-batch-size", "1")  # fmt: skip
    # the RNG state is saved after the weights and the optimizer, before trainer_state.json: die there, at step 2
    code = run_killed_at("transformers.trainer", "Trainer._save_rng_state", 2, *args)
    assert code == -signal.SIGKILL
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-2" / "trainer_state.json").exists()
    proc = subprocess.run(spr(*args), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping" in proc.stderr and "checkpoint-2" in proc.stderr and "interrupted" in proc.stderr
    meta = json.loads((out / "spr_train.json").read_text())
    assert meta["global_step"] == 3
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]  # no step twice


@pytest.mark.slow
def test_a_kill_between_the_pairs_and_the_dpo_rows_is_caught_by_train(tiny_model_dir, tmp_path):
    from scoring_fixtures import write_run

    run, _ = write_run(tmp_path)
    files = ("--regions", run / "regions.jsonl", "--candidates", run / "candidates.jsonl")
    assert main(["score", *map(str, files), "--out", str(run / "scores.jsonl"), "--semantic", "none"]) == 0
    pairs = ("pairs", *files, "--scores", run / "scores.jsonl", "--out", run / "pairs.jsonl")
    assert main(list(map(str, pairs))) == 0
    good = (run / "dpo.jsonl").read_bytes()
    # the second write is the DPO rows: die after the pairs file was replaced, before the rows are
    assert run_killed_at("spr.data.jsonl", "write_jsonl", 2, *pairs, "--min-margin", "0.5") == -signal.SIGKILL
    assert (run / "dpo.jsonl").read_bytes() == good  # the old rows, beside new pairs
    train = ["train", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(run / "dpo.jsonl"), "--out",
             str(tmp_path / "adapter"), "--max-steps", "1"]  # fmt: skip
    proc = subprocess.run(spr(*train), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not the DPO rows of a finished `spr pairs` run" in proc.stderr
    assert main(list(map(str, pairs))) == 0  # running pairs again repairs it


def test_a_torn_line_in_the_middle_is_removed_and_its_record_written_again(
    tiny_model_dir, regions, tmp_path, caplog
):
    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "c.jsonl"
    args = ["generate", "--model", str(model), "--regions", str(regions), "--out", str(out), "--samples", "1",
            "--max-new-tokens", "4", "--limit", "1"]  # fmt: skip
    assert main(args) == 0
    lines = out.read_bytes().splitlines()
    torn = lines[1][: len(lines[1]) // 2]
    out.write_bytes(b"\n".join([lines[0], torn, *lines[2:]]) + b"\n")
    assert main(args) == 0
    assert "unreadable or repeated line(s) removed" in caplog.text
    again = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(c["id"] for c in again) == sorted(json.loads(line)["id"] for line in lines)


# ----------------------------------------------------------------------------------------- bad images


def test_a_decompression_bomb_is_skipped_by_every_stage_that_reads_images(coco, tmp_path, capsys):
    annotations, images = coco
    data = json.loads(annotations.read_text())
    bomb(images / "img001.png")
    data["images"][0].update(width=20000, height=20000)
    annotations.write_text(json.dumps(data))
    out = tmp_path / "regions.jsonl"
    assert (
        main(["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert re.search(r"records skipped: image too large +\| 1 ", text)
    assert {r.image_id for r in read_records(out, Region)} == {2}

    # score: a region whose image became a bomb after regions ran
    from scoring_fixtures import write_run

    run, _ = write_run(tmp_path / "run")
    region = read_records(run / "regions.jsonl", Region)[0]
    bomb(Path(region.image))
    assert main(["score", "--regions", str(run / "regions.jsonl"), "--candidates", str(run / "candidates.jsonl"),
                 "--out", str(run / "scores.jsonl"), "--semantic", "clip", "--clip-model", "x"]) == 2  # fmt: skip
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- train rows


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "spoil, message",
    [
        ("truncated image", r"dpo\.jsonl:1 .*image unreadable"),
        ("placeholder in prompt", r"dpo\.jsonl:1 .*placeholder token '<\|image_pad\|>'"),
        ("crop_box as strings", r"dpo\.jsonl:1 .*'crop_box' must be null or four numbers"),
        ("integer content", r"dpo\.jsonl:1 .*content must be text or a list of parts"),
    ],
)
def test_every_training_row_is_checked_in_full(tiny_model_dir, tmp_path, spoil, message):
    from spr import models
    from spr.errors import UserError
    from spr.training.rows import read_pairs

    data = make_dpo_jsonl(tmp_path, n=2)
    rows = _rows(data)
    if spoil == "truncated image":
        image = Path(rows[0]["images"][0])
        truncated = tmp_path / "truncated.png"
        truncated.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
        rows[0]["images"] = [str(truncated)]
    elif spoil == "placeholder in prompt":
        rows[0]["prompt"][0]["content"][1]["text"] += " <|image_pad|>"
    elif spoil == "crop_box as strings":
        rows[0]["crop_box"] = ["0", "0", "10", "10"]
    else:
        rows[0]["chosen"][0]["content"] = 7
    _write(data, rows)
    adapter = models.load(str(tiny_model_dir("qwen2_vl")))
    with pytest.raises(UserError, match=message):
        read_pairs(data, adapter=adapter)
    problems: list[str] = []
    assert len(read_pairs(data, skip_bad=True, problems=problems, adapter=adapter)) == 1
    assert len(problems) == 1 and "skipped" in problems[0]


# -------------------------------------------------------------------------------------- wrong input


def test_a_stage_whose_every_input_is_unusable_fails_and_says_what_it_expected(regions, tmp_path, capsys):
    code = main(
        ["score", "--regions", str(regions), "--candidates", str(regions), "--out", str(tmp_path / "s.jsonl")]
    )
    assert code == 2
    assert "expected Candidate records written by `spr generate`" in capsys.readouterr().err


def test_image_paths_of_regions_work_from_any_working_directory(coco, tmp_path, monkeypatch):
    annotations, images = coco
    monkeypatch.chdir(tmp_path)
    out = Path("regions.jsonl")
    assert (
        main(["regions", "--annotations", "annotations.json", "--images", "images", "--out", str(out)]) == 0
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for region in read_records(tmp_path / "regions.jsonl", Region):
        assert Path(region.image).is_absolute() and Path(region.image).exists()


def test_malformed_evaluation_data_is_a_one_line_error(tmp_path, capsys):
    from evaluate_fixtures import make_refer

    root = make_refer(tmp_path / "refer")
    (root / "instances.json").write_text("[]")
    assert main(["eval", "rec", "--model", "m", "--data", str(root), "--out", str(tmp_path / "e")]) == 2
    assert "expected a COCO object with 'images' and 'annotations'" in capsys.readouterr().err

    regions = make_regions(tmp_path / "regions")
    rows = _rows(regions)
    rows[0]["objects"] = ["a red box"]
    _write(regions, rows)
    bad: list[str] = []
    assert len(read_records(regions, Region, skip_bad=True, problems=bad)) == len(rows) - 1
    assert "objects[0] must be {label, box" in bad[0]


def test_pickled_weights_are_refused_with_one_line(tmp_path, capsys):
    from spr.models.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    (clip / "model.safetensors").rename(clip / "pytorch_model.bin")
    from spr.errors import UserError
    from spr.models.clip import load_clip

    with pytest.raises(UserError, match="pytorch_model.bin \\(pickle\\); SPR loads safetensors only"):
        load_clip(clip)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"\x80")
    assert main(["merge", "--adapter", str(adapter), "--base", str(clip), "--out", str(tmp_path / "m")]) == 2
    assert "adapter_model.bin (pickle)" in capsys.readouterr().err
