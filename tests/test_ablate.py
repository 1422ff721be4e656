"""`spr toy ablate`: arms of the demo's run over seeds at an equal budget, on validation or test scenes."""

from __future__ import annotations

import json

import pytest

from spr.config import output_settings
from spr.toy.ablate import ARMS, AblateConfig, arm_run_config, results_markdown, run_ablation

SMALL = ["world.train=8", "generate.samples=2", "generate.max_new_tokens=60", "eval.description.limit=2"]


def test_an_arm_is_the_demo_run_with_its_overrides(tmp_path):
    c = AblateConfig(arms=["spr", "rounds2", "dpo"], seeds=[1], steps=60)
    spr = arm_run_config(c, "spr", 1, tmp_path / "a")
    two = arm_run_config(c, "rounds2", 1, tmp_path / "b")
    dpo = arm_run_config(c, "dpo", 1, tmp_path / "c")
    assert spr.rounds == 1 and two.rounds == 2
    assert spr.train["max_steps"] == 60 and two.train["max_steps"] == 30  # the same budget in all
    assert dpo.train["loss_type"] == ["sigmoid"] and spr.train["loss_type"] == ["sigmoid", "sft"]
    assert arm_run_config(c, "dpo_light", 1, tmp_path / "e").train["loss_weights"] == [0.2, 1.0]
    # the arms vary the paper's recipe on world seed 0, whatever recipe and world the demo runs
    assert spr.world["seed"] == 0 and spr.score.get("unmatched", "keep") == "keep"
    assert spr.regions["seed"] == spr.generate["seed"] == spr.train["seed"] == 1
    # online RL samples by the seed too
    assert arm_run_config(c, "grpo_iou", 1, tmp_path / "d").grpo["seed"] == 1
    # no test scene drawn
    assert spr.eval["rec"]["data"] == "{world}/val/rec.jsonl" and spr.world["test"] == 0
    with pytest.raises(ValueError, match="unknown arm"):
        AblateConfig(arms=["spr", "ppo"])


@pytest.mark.slow
def test_choosing_on_validation_never_draws_a_test_scene_and_arms_share_what_they_can(
    tmp_path, tiny_model_dir
):
    out = tmp_path / "ablate"
    config = AblateConfig(out=str(out), arms=["spr", "sft_chosen", "continued", "grpo_iou"], seeds=[0], steps=2, eval_scenes=3,
                          set=[*SMALL, f"model={tiny_model_dir('qwen2_vl')}", "score.semantic=labels"])  # fmt: skip
    results = run_ablation(config, log=lambda m: None)
    for arm in config.arms:
        run = out / f"{arm}-seed0"
        assert not list(run.glob("world/test/images/*"))  # the selection path never reads a test scene
        assert list(run.glob("world/val/images/*"))
        rec = json.loads((run / "eval" / "base" / "rec" / "metrics.json").read_text())
        assert "/val/" in rec["data"]
        train = json.loads((run / "round-1" / "adapter" / "spr_train.json").read_text())
        assert train["global_step"] == 2  # the same budget
    # the second arm reused the first's candidates (copied, then nothing left to generate: no model loaded, and
    # the summary stays the one of the output)
    donor, shared = out / "spr-seed0", out / "sft_chosen-seed0"
    candidates = "round-1/candidates.jsonl"
    assert (shared / candidates).read_bytes() == (donor / candidates).read_bytes()
    summary = "round-1/candidates.summary.json"
    assert json.loads((shared / summary).read_text()) == json.loads((donor / summary).read_text())
    took = {
        arm: json.loads((arm / "run_state.json").read_text())["done"]["round-1/generate"]
        for arm in (donor, shared)
    }
    assert took[shared] < took[donor] / 5
    sft = [
        json.loads(line)
        for line in (out / "continued-seed0" / "round-1" / "sft.jsonl").read_text().splitlines()
    ]
    assert len(sft) == 2 * 4 and all(r["rejected"] == r["chosen"] for r in sft)
    table = (out / "results.md").read_text()
    assert "held-out val scenes" in table and "continued SFT" in table and "| wall time (s)" in table
    # an arm's wall time includes the candidates it reused (at the first arm's time), not the shared base eval
    spr_steps = json.loads((out / "spr-seed0" / "run_state.json").read_text())["done"]
    assert results["arms"]["sft_chosen"]["0"]["seconds"] >= spr_steps["round-1/generate"]
    assert results["arms"]["spr"]["0"]["seconds"] < sum(spr_steps.values())
    arms0 = {a: results["arms"][a]["0"] for a in config.arms}
    assert arms0["sft_chosen"]["generated tokens"] == arms0["spr"]["generated tokens"] > 0  # the same samples
    assert arms0["grpo_iou"]["generated tokens"] > 0 and arms0["continued"]["generated tokens"] == 0
    base = results["base"]["acc@0.5"]
    for arm in config.arms:
        m = results["summary"][arm]["acc@0.5"]
        assert m["delta_mean"] == pytest.approx(results["arms"][arm]["0"]["acc@0.5"] - base)
        lo, hi = m["ci"]  # the paired bootstrap interval of the change holds the change itself
        assert lo - 1e-9 <= m["delta_mean"] <= hi + 1e-9
    assert "acc@0.75" in results["base"]  # (a random tiny model hits nothing: no box error to average)


def test_results_table_shows_mean_and_spread_of_the_change():
    results = {
        "base": {"acc@0.9": 0.5, "rec_n": 100},
        "summary": {
            "spr": {
                "seeds": 3,
                "acc@0.9": {"mean": 0.6, "delta_mean": 0.1, "delta_sd": 0.02},
                "seconds": {"mean": 10.0},
                "generated tokens": {"mean": 5.0},
            }
        },  # fmt: skip
        "settings": {"seeds": [0, 1, 2], "eval_split": "test", "steps": 120},
    }
    table = results_markdown(results)
    row = next(r for r in table.splitlines() if r.startswith("| acc@0.9"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["0.500", "+0.100 ± 0.020"]
    assert "± 0.050" in table  # the base's own sampling error at n = 100
    assert set(ARMS) >= {"spr", "continued", "rounds2", "greedy", "self_refined"}


def test_an_experiment_grows_by_more_arms_and_seeds_but_not_by_other_settings():
    first = output_settings(AblateConfig(arms=["spr"], seeds=[0]))
    assert output_settings(AblateConfig(arms=["spr", "continued"], seeds=[0, 1, 2])) == first
    assert output_settings(AblateConfig(arms=["spr"], seeds=[0], steps=480)) != first
    assert output_settings(AblateConfig(arms=["spr"], seeds=[0], eval_split="test")) != first


def test_an_arm_shares_no_stage_after_one_whose_settings_differ(tmp_path):
    from spr.toy.ablate import share_from

    donor, arm = tmp_path / "spr-seed0", tmp_path / "greedy-seed0"
    steps = {
        "round-1/regions": "regions.jsonl",
        "round-1/generate": "candidates.jsonl",
        "round-1/score": "scores.jsonl",
    }
    for run in (donor, arm):
        (run / "round-1").mkdir(parents=True)
        for step, out in steps.items():
            extra = "include_greedy: true\n" if run == arm and step.endswith("generate") else ""
            (run / f"{step}.yaml").write_text(f"out: {run / 'round-1' / out}\n{extra}")
    for out in steps.values():
        (donor / "round-1" / out).write_text("{}\n")
    (donor / "run_state.json").write_text(json.dumps({"done": dict.fromkeys(steps, 1.0)}))
    share_from(donor, arm)
    assert (arm / "round-1" / "regions.jsonl").exists()  # the same settings: copied
    # greedy samples other candidates, so the donor's scores (same score settings) are not its scores
    assert (
        not (arm / "round-1" / "candidates.jsonl").exists()
        and not (arm / "round-1" / "scores.jsonl").exists()
    )
