"""`spr run`: the stages of the method for K rounds in one resumable run directory, and what it prints for a
scheduler."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from evaluate_fixtures import make_rec_jsonl

from spr import config as C
from spr.cli import main
from spr.stages import command

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_config(tmp_path: Path, coco, model: Path, rounds: int = 2) -> Path:
    annotations, images = coco
    config = {
        "model": str(model),
        "rounds": rounds,
        "regions": {"annotations": str(annotations), "images": str(images), "per_image": 2},
        "generate": {"samples": 2, "max_new_tokens": 16, "prompts": "region_box,crop"},
        "score": {"semantic": "labels"},  # a random model localizes nothing: the words must rank the samples
        "train": {"max_steps": 3, "save_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 1,
                  "logging_steps": 1, "lora_dropout": 0.0},
        "eval": {"rec": {"data": str(make_rec_jsonl(tmp_path / "rec")), "max_new_tokens": 8}},
        "report": False,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def spr_run(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "spr.cli", "run", "--config", str(config), "--out", str(out)]


def kill_when(cmd: list[str], ready) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


RESULT_FILES = [
    "round-1/candidates.jsonl", "round-1/pairs.jsonl", "round-2/candidates.jsonl", "round-2/scores.jsonl",
    "round-2/pairs.jsonl", "round-2/dpo.jsonl", "round-2/eval/rec/predictions.jsonl", "results.json",
]  # fmt: skip


@pytest.mark.slow
def test_two_rounds_killed_in_round_two_resume_to_the_uninterrupted_result(coco, tiny_model_dir, tmp_path):
    config = run_config(tmp_path, coco, tiny_model_dir("qwen2_vl"))
    clean = tmp_path / "clean"
    assert main(["run", "--config", str(config), "--out", str(clean)]) == 0

    # round 2 samples from round 1's model, and every model was evaluated on the same data
    generate_settings = json.loads((clean / "round-2" / "candidates.settings.json").read_text())["settings"]
    from spr.data.guard import fingerprint

    assert generate_settings["model"] == fingerprint(clean / "round-1" / "model")
    assert generate_settings["model"] != fingerprint(tiny_model_dir("qwen2_vl"))
    results = json.loads((clean / "results.json").read_text())
    assert list(results["models"]) == ["base", "round 1", "round 2"]
    assert results["eval"]["rec_n"] == 4 and results["eval"]["split"] == "test, val"
    assert "| acc@0.9" in (clean / "results.md").read_text()

    killed = tmp_path / "killed"
    kill_when(spr_run(config, killed), lambda: (killed / "round-2" / "candidates.jsonl").exists()
              and (killed / "round-2" / "candidates.jsonl").stat().st_size > 0)  # fmt: skip
    kill_when(spr_run(config, killed), lambda: (killed / "round-2" / "adapter" / "checkpoint-1").exists())
    proc = subprocess.run(spr_run(config, killed), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round-1/train: done earlier, skipped" in proc.stdout
    for name in RESULT_FILES:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name

    # other settings in the same directory are refused, not mixed in
    changed = yaml.safe_load(config.read_text())
    changed["generate"]["samples"] = 3
    config.write_text(yaml.safe_dump(changed))
    proc = subprocess.run(spr_run(config, killed), env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "other settings" in proc.stderr and "generate" in proc.stderr


@pytest.mark.slow
def test_reference_base_continues_the_adapter_against_the_base(coco, tiny_model_dir, tmp_path):
    config = run_config(tmp_path, coco, tiny_model_dir("qwen2_vl"))
    data = yaml.safe_load(config.read_text())
    data.update(reference="base", fresh_regions=False, eval={})
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    train2 = yaml.safe_load((out / "round-2" / "train.yaml").read_text())
    assert train2["model"] == str(tiny_model_dir("qwen2_vl")) and train2["adapter"] == str(
        out / "round-1" / "adapter"
    )
    regions = yaml.safe_load((out / "round-2" / "generate.yaml").read_text())["regions"]
    assert regions == str(out / "round-1" / "regions.jsonl")  # the same regions in every round


@pytest.mark.parametrize("name", ["qwen2_5_vl_7b", "qwen3_vl_8b"])
def test_the_shipped_7b_example_dry_runs_to_one_valid_command_per_stage(tmp_path, capsys, name):
    example = REPO / "configs" / "run" / f"{name}.yaml"
    assert main(["run", "--config", str(example), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    stages = []
    for line in lines:
        argv = shlex.split(line)
        i = argv.index("spr.cli")
        stage_argv = argv[i + 1 :]
        name = " ".join(stage_argv[: stage_argv.index("--config")])
        stages.append(name)
        file = stage_argv[stage_argv.index("--config") + 1]
        config = C.from_args(command(name).Config, __import__("argparse").Namespace(config=file))
        assert config is not None
        if name in ("generate", "train"):
            assert argv[:2] == ["accelerate", "launch"] and "--num_processes" in argv  # its launcher
    assert stages.count("train") == stages.count("generate") == 2  # two rounds
    assert {"regions", "generate", "score", "pairs", "train", "merge", "eval rec"} <= set(stages)


def test_the_shipped_7b_example_states_the_pixel_budget_once_and_every_stage_gets_it(tmp_path):
    example = REPO / "configs" / "run" / "qwen2_5_vl_7b.yaml"
    assert example.read_text().count("max_pixels:") == 1
    run = tmp_path / "run"
    assert main(["run", "--config", str(example), "--out", str(run), "--dry-run"]) == 0
    for stage in ("generate", "train", "eval-rec"):
        data = yaml.safe_load((run / "round-2" / f"{stage}.yaml").read_text())
        assert data["max_pixels"] == 1003520 and data["dtype"] == "bfloat16", stage
    assert yaml.safe_load((run / "round-1" / "merge.yaml").read_text())["dtype"] == "bfloat16"
    base_eval = yaml.safe_load((run / "eval" / "base" / "eval-rec.yaml").read_text())
    assert base_eval["max_pixels"] == 1003520  # the base is evaluated with the same budget


def test_a_run_wide_setting_set_again_in_a_section_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    regions = {"annotations": "a.json", "images": "img"}
    bad.write_text(
        yaml.safe_dump(
            {"model": "m", "regions": regions, "max_pixels": 1000, "eval": {"rec": {"max_pixels": 9}}}
        )
    )
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert (
        "section eval rec: max_pixels is set for the whole run at the top; set it once"
        in capsys.readouterr().err
    )
    bad.write_text(yaml.safe_dump({"model": "m", "regions": regions, "family": "qwen2_vl"}))
    assert (
        main(
            [
                "run",
                "--config",
                str(bad),
                "--out",
                str(tmp_path / "r"),
                "--dry-run",
                "--set",
                "max_pixels=5000",
            ]
        )
        == 0
    )
    generate = yaml.safe_load((tmp_path / "r" / "round-1" / "generate.yaml").read_text())
    assert generate["family"] == "qwen2_vl" and generate["max_pixels"] == 5000


def test_section_fields_the_run_sets_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "m", "generate": {"out": "x.jsonl"}}))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "section generate: out are set by the run" in capsys.readouterr().err
    regions = {"annotations": "a.json", "images": "img"}
    bad.write_text(yaml.safe_dump({"model": "m", "regions": regions, "generate": {"samplez": 3}}))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "section generate: unknown option(s) samplez" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"model": "m"}))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "section regions: missing required option(s): --annotations, --images" in capsys.readouterr().err
    # a section given on the command line, as YAML
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r"), "--dry-run", "--regions",
                 "{annotations: a.json, images: img}"]) == 0  # fmt: skip
