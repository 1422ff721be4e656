"""`spr demo`: `spr run` with the shipped shapes-world config, on the shipped base and tiny CLIP."""

from __future__ import annotations

import json

import pytest

from spr.cli import main
from spr.pipeline import plan
from spr.toy.demo import CONFIG, DemoConfig, demo_config


def test_the_shipped_demo_config_is_a_run_config_of_every_stage(tmp_path):
    config = demo_config(DemoConfig(out=str(tmp_path / "demo")))
    steps = [s.name for s in plan(config)]
    assert steps[0] == "world" and "round-1/generate" in steps and steps[-1] == "round-1/eval description"
    assert "eval/base/eval rec" in steps  # the base is evaluated on the same data
    assert config.model == "{assets}/base_loose" and config.score["clip_model"] == "{assets}/clip"
    # the validated recipe
    assert config.train["loss_type"] == ["sft"] and config.score["unmatched"] == "median"
    assert CONFIG.exists()


@pytest.mark.slow
def test_demo_runs_every_stage_shows_base_vs_spr_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    small = ["--set", "world.train=6", "--set", "world.val=0", "--set", "world.test=4", "--set", "generate.samples=2",
             "--set", "generate.max_new_tokens=120", "--set", "eval.rec.limit=8", "--set", "eval.description.limit=3"]  # fmt: skip
    assert main(["demo", "--out", str(out), *small]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "round 1"]
    for metrics in results["models"].values():
        assert {"acc@0.5", "acc@0.9", "mean_iou", "description_f1@0.5"} <= metrics.keys()
    assert results["eval"]["rec_n"] > 0 and results["eval"]["split"] == "test"  # on the test expressions
    text = capsys.readouterr().out
    assert "| acc@0.9" in text and "round 1 - base" in text  # the first screen of results: base vs SPR
    page = (out / "report.html").read_text()
    assert "Results" in page and "<svg" in page
    assert (out / "round-1" / "model" / "model.safetensors").exists()
    assert main(["demo", "--out", str(out), *small]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 12  # a re-run redoes nothing
