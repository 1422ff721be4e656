import json

import pytest

from spr.errors import UserError
from spr.toy.demo import DemoConfig, DemoRun, results_markdown, run_demo


def test_run_directory_of_another_kind_or_other_settings_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no demo run"):
        DemoRun(other, DemoConfig())
    assert (other / "notes.txt").exists()  # nothing of the user's was touched

    run = DemoRun(tmp_path / "run", DemoConfig(seed=1))
    run.mark("world", 1.0)
    assert DemoRun(tmp_path / "run", DemoConfig(seed=1)).done("world")  # same settings: resumes
    with pytest.raises(UserError, match=r"other settings \(seed\)"):
        DemoRun(tmp_path / "run", DemoConfig(seed=2))
    assert not DemoRun(tmp_path / "run", DemoConfig(seed=2), overwrite=True).done("world")


def test_corrupt_run_state_is_a_clear_error(tmp_path):
    DemoRun(tmp_path / "run", DemoConfig())
    (tmp_path / "run" / "demo.json").write_text("{not json")
    with pytest.raises(UserError, match="demo.json: unreadable"):
        DemoRun(tmp_path / "run", DemoConfig())


def test_results_table_shows_base_spr_and_delta():
    results = {"base": {"acc@0.5": 0.5, "rec_n": 10}, "spr": {"acc@0.5": 0.625, "rec_n": 10}}
    rows = {
        r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
        for r in results_markdown(results).splitlines()
        if r.startswith("| acc") or r.startswith("| rec")
    }
    assert rows["acc@0.5"] == ["0.5", "0.625", "0.125"]


@pytest.mark.slow
def test_demo_runs_every_stage_on_real_files_and_resumes(tmp_path, tiny_model_dir):
    from spr.models.clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    config = DemoConfig(
        train_scenes=3, test_scenes=2, val_scenes=1, samples=2, prompts="crop", max_new_tokens=24,
        rec_limit=4, description_limit=2,
    )  # fmt: skip
    out = tmp_path / "demo"
    results = run_demo(
        out, config, base_model=tiny_model_dir("qwen2_vl"), clip_model=clip, log=lambda m: None
    )
    for name in ("base", "spr"):
        assert {"acc@0.5", "acc@0.9", "mean_iou", "description_f1@0.5"} <= results[name].keys()
        assert results[name]["rec_n"] == 4
    assert json.loads((out / "results.json").read_text()) == results
    assert "| metric" in (out / "results.md").read_text()
    assert "<svg" in (out / "report.html").read_text() or "<img" in (out / "report.html").read_text()
    assert (out / "spr_model" / "model.safetensors").exists()
    lines = []
    run_demo(out, config, base_model=tiny_model_dir("qwen2_vl"), clip_model=clip, log=lines.append)
    assert sum("done earlier, skipped" in m for m in lines) == 9  # a re-run redoes nothing


def test_base_trained_on_some_expression_kinds_is_tested_on_those(tmp_path):
    from spr.toy.demo import test_expressions, trained_kinds

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "recipe.json").write_text(json.dumps({"expression_kinds": ["label"]}))
    rec = tmp_path / "test" / "rec.jsonl"
    rec.parent.mkdir()
    rows = [
        {"id": "1", "image": "images/a.png", "kind": "label"},
        {"id": "2", "image": "images/a.png", "kind": "relation"},
    ]
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kinds = trained_kinds(tmp_path / "base")
    out = test_expressions(rec, kinds, tmp_path / "test_rec.jsonl")
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in kept] == ["1"]
    assert kept[0]["image"] == str(tmp_path / "test" / "images" / "a.png")
    every = test_expressions(rec, [], tmp_path / "x.jsonl")  # a base trained on every kind: all of them
    assert [json.loads(line)["id"] for line in every.read_text().splitlines()] == ["1", "2"]
