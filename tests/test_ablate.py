import json
from dataclasses import replace

import pytest

from spr.data.jsonl import read_records, write_jsonl
from spr.data.records import Score
from spr.toy.ablate import ARMS, AblateConfig, results_markdown, reweighted_scores, run_ablation


def test_reweighted_scores_recombine_semantic_and_localization(tmp_path):
    scores = [
        Score(id=f"r/p/{i}", candidate_id=f"r/p/{i}", region_id="r", refined=False, text="t",
              semantic=sem, localization=loc, total=0.8 * sem + 0.2 * loc)
        for i, (sem, loc) in enumerate([(0.9, 0.1), (0.2, 0.7)])
    ]  # fmt: skip
    write_jsonl(tmp_path / "scores.jsonl", scores)
    reweighted_scores(tmp_path / "scores.jsonl", tmp_path / "loc.jsonl", 0.0)
    reweighted_scores(tmp_path / "scores.jsonl", tmp_path / "sem.jsonl", 1.0)
    loc = read_records(tmp_path / "loc.jsonl", Score)
    sem = read_records(tmp_path / "sem.jsonl", Score)
    assert [s.total for s in loc] == [0.1, 0.7]  # localization only: the second candidate now ranks first
    assert [s.total for s in sem] == [0.9, 0.2]
    assert [s.id for s in loc] == [s.id for s in scores]


def test_unknown_arm_or_split_is_refused():
    with pytest.raises(ValueError, match="unknown arm"):
        AblateConfig(arms=["spr", "ppo"])
    with pytest.raises(ValueError, match="eval_split"):
        AblateConfig(eval_split="train")


@pytest.mark.slow
def test_settings_can_be_chosen_on_validation_scenes_without_touching_the_test_split(
    tmp_path, tiny_model_dir
):
    from spr.models.tiny_clip import build_tiny_clip

    config = AblateConfig(
        seeds=(0,), arms=("sft_chosen",), eval_split="val", train_scenes=3, test_scenes=2, samples=2,
        prompts="crop", max_new_tokens=24, rec_limit=4, description_limit=2,
    )  # fmt: skip
    out = tmp_path / "ablate"
    clip = build_tiny_clip(tmp_path / "clip")
    config = replace(config, out=str(out), base_model=str(tiny_model_dir("qwen2_vl")), clip_model=str(clip))
    run_ablation(config, log=lambda m: None)
    assert not list((out / "val_world").glob("test/images/*"))  # no test scene was even drawn
    assert list((out / "val_world").glob("val/images/*"))
    images = {json.loads(line)["image"] for line in open(out / "val_regions.jsonl")}
    assert images and all("/val/" in image for image in images)
    assert "held-out val scenes" in (out / "results.md").read_text()


@pytest.mark.slow
def test_ablation_trains_every_arm_at_equal_budget_and_tabulates_deltas(tmp_path, tiny_model_dir):
    from spr.models.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    config = AblateConfig(
        seeds=(0, 1), train_scenes=3, test_scenes=2, val_scenes=0, samples=2, prompts="crop",
        max_new_tokens=24, rec_limit=4, description_limit=2,
    )  # fmt: skip
    out = tmp_path / "ablate"
    base = tiny_model_dir("qwen2_vl")
    # two seeds in two worker processes at once, then a re-run in this process resumes what they wrote
    config = replace(config, out=str(out), base_model=str(base), clip_model=str(clip))
    results = run_ablation(replace(config, jobs=2), log=lambda m: None)

    for seed in (0, 1):
        d = out / f"seed-{seed}"
        n_pairs = sum(1 for _ in open(d / "dpo.jsonl"))
        trained = [a for a in ARMS if (d / a / "adapter" / "spr_train.json").exists()]
        assert {"spr", "sft_chosen", "continued"} <= set(trained)  # lambda 0 / 1 may find no pair here
        steps = {
            json.loads((d / a / "adapter" / "spr_train.json").read_text())["global_step"] for a in trained
        }
        assert steps == {-(-n_pairs // config.batch_size)}  # every arm: the spr arm's optimizer steps
        chosen = [json.loads(line) for line in open(d / "sft_chosen" / "dpo.jsonl")]
        assert chosen and all(r["rejected"] == r["chosen"] for r in chosen)
        continued = [json.loads(line) for line in open(d / "continued" / "dpo.jsonl")]
        assert len(continued) == n_pairs
        assert all((d / "continued" / "images").joinpath(r["images"][0]).exists() for r in continued)
    seed0 = out / "seed-0" / "continued" / "dpo.jsonl"
    seed1 = out / "seed-1" / "continued" / "dpo.jsonl"
    assert seed0.read_text() != seed1.read_text()  # fresh scenes of each seed

    base_acc = results["base"]["acc@0.5"]
    table = (out / "results.md").read_text()
    for arm in ARMS:
        per_seed = [m["acc@0.5"] for m in results["arms"][arm].values()]
        assert results["summary"][arm]["seeds"] == len(per_seed)
        if per_seed:
            delta = results["summary"][arm]["acc@0.5"]["delta_mean"]
            assert delta == pytest.approx(sum(per_seed) / len(per_seed) - base_acc)
        else:
            assert "no rows to train on" in table
    assert "SFT on chosen" in table and "continued SFT" in table and "| acc@0.9" in table
    assert "spearman(semantic, localization)" in table

    lines = []
    run_ablation(config, log=lines.append)
    redone = [line for line in lines if line.startswith("\n") and "ablation finished" not in line]
    assert not redone  # a re-run redoes nothing
    for seed in (0, 1):
        assert any(line.startswith(f"seed {seed} [") and "done earlier" in line for line in lines)


def test_results_table_shows_mean_and_spread_of_the_change():
    results = {
        "base": {"acc@0.5": 0.5, "rec_n": 100},
        "summary": {"spr": {"seeds": 3, "acc@0.5": {"mean": 0.6, "delta_mean": 0.1, "delta_sd": 0.02}}},
        "diagnostics": {},
        "settings": {"seeds": [0, 1, 2], "description_limit": 10},
    }
    table = results_markdown(results)
    row = next(r for r in table.splitlines() if r.startswith("| acc@0.5"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["0.500", "+0.100 ± 0.020"]
    assert "± 0.050" in table  # the base's own sampling error at n = 100
