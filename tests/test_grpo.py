"""`spr grpo`: GRPO with TRL on description prompts (spr reward) and REC prompts (iou reward), on one and two
processes, for every family; what is saved and logged, resuming, and the adapter merging and evaluating.

The runs that need a learning signal use the shipped shapes-world base (a tiny Qwen2-VL that grounds, so its
sampled boxes differ in reward); the per-family runs use the tiny random models."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from spr import boxes as B
from spr.cli import main
from spr.errors import UserError
from spr.formats.base import is_repair
from spr.grpo import COMPLETIONS_FILE, LOG_FILE, CompletionLog, GrpoConfig, grpo_args, train
from spr.models import available_families

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "src" / "spr" / "toy" / "assets" / "base"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A few shapes-world scenes (the shipped base's preset): REC JSONL of train and val, train regions."""
    root = tmp_path_factory.mktemp("grpo_world")
    args = ["toy", "world", "--out", str(root / "world"), "--train", "6", "--val", "2", "--test", "1"]
    assert main([*args, "--preset", "easy", "--rec-kinds", "label", "--quiet"]) == 0
    train_dir = root / "world" / "train"
    regions = root / "regions.jsonl"
    assert main(["regions", "--annotations", str(train_dir / "annotations.json"), "--images",
                 str(train_dir / "images"), "--out", str(regions), "--limit", "3"]) == 0  # fmt: skip
    return {
        "rec": train_dir / "rec.jsonl",
        "val_rec": root / "world" / "val" / "rec.jsonl",
        "regions": regions,
    }


def _config(out, **kw) -> GrpoConfig:
    base = dict(
        model=str(BASE), out=str(out), limit=2, max_steps=2, num_generations=4, max_completion_length=40,
        learning_rate=1e-3, lora_dropout=0.0, save_steps=1000, quiet=True,
    )  # fmt: skip
    base.update(kw)
    return GrpoConfig(**base)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / LOG_FILE).read_text().splitlines()]


def _completions(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / COMPLETIONS_FILE).read_text().splitlines()]


def _lora_moved(out) -> bool:
    from safetensors import safe_open

    with safe_open(str(Path(out) / "adapter_model.safetensors"), "pt") as f:
        return any(f.get_tensor(k).abs().sum() > 0 for k in f.keys() if "lora_B" in k)


# ------------------------------------------------------------------------------------------------- config


def test_config_checks_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        GrpoConfig(model="m", out="o", rec="r", rewards=["bleu"])
    with pytest.raises(ValueError, match="1 reward weight"):
        GrpoConfig(model="m", out="o", rec="r", rewards=["iou", "format"], reward_weights=[1.0])
    with pytest.raises(ValueError, match="each reward once"):
        GrpoConfig(model="m", out="o", rec="r", rewards=["iou", "iou"])
    with pytest.raises(ValueError, match="spr reward scores region descriptions"):
        GrpoConfig(model="m", out="o", rec="r", rewards=["spr"])
    with pytest.raises(ValueError, match="iou rewards score REC answers"):
        GrpoConfig(model="m", out="o", regions="g", rewards=["iou_at_t"])
    with pytest.raises(ValueError, match="at least 2"):
        GrpoConfig(model="m", out="o", rec="r", num_generations=1)
    assert GrpoConfig(model="m", out="o", rec="r", regions="g").reward_names() == ["spr", "iou", "format"]
    assert main(["grpo", "--model", "m", "--out", "o", "--rewards", "spr"]) == 2  # a one-line error
    with pytest.raises(UserError, match="--regions .* and/or --rec"):
        train(GrpoConfig(model="m", out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_trainer_arguments_carry_the_config():
    from spr.training.precision import decide

    config = GrpoConfig(
        model="m", out="o", rec="r", rewards=["iou", "format"], reward_weights=[1.0, 0.5], num_generations=4,
        beta=0.04, vllm_mode="server", vllm_server_port=8123,
    )  # fmt: skip
    args = grpo_args(config, decide("auto", "lora", "cpu", None))
    assert args.reward_weights == [1.0, 0.5] and args.beta == 0.04 and args.num_generations == 4
    assert args.per_device_train_batch_size == 4  # one prompt's group per device
    assert not args.use_vllm and args.vllm_mode == "server" and args.vllm_server_port == 8123
    assert args.remove_unused_columns is False and args.use_cpu


@pytest.mark.parametrize("family", available_families())
def test_trl_renders_the_prompt_spr_eval_sends(tiny_model_dir, family):
    """TRL tokenizes a conversational prompt with its image through the processor's chat template: the same
    ids as the adapter's own batch (what `spr generate` and `spr eval` send)."""
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    from spr import models

    adapter = models.load(str(tiny_model_dir(family)))
    image = Image.new("RGB", (112, 84), (200, 40, 40))
    text = adapter.rec_prompt("the red box")
    ours = adapter.build_inputs([image], [text])["input_ids"][0].tolist()
    messages = prepare_multimodal_messages(adapter.messages(text), images=[image])
    theirs = adapter.processor.apply_chat_template(
        conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][0]
    assert ours == list(theirs)


def test_completion_log_writes_the_weighted_total_at_logged_steps(tmp_path):
    from types import SimpleNamespace

    from spr.rewards import make_rewards, rec_columns

    rewards = make_rewards(["iou", "format"])
    log = CompletionLog(tmp_path / "c.jsonl", rewards, [2.0, 0.5], every=2, per_step=2)
    funcs = [log.wrap(r) for r in rewards]
    assert [f.__name__ for f in funcs] == ["iou", "format"]
    cols = rec_columns("s", "img.png", (100, 100), "the red box", (10, 10, 50, 50), "Where?", "plain_pixel")
    answers = ["the red box [30, 10, 70, 50]", "nothing", "[10, 10, 50, 50]"]
    for step in (0, 1, 2):  # trainer steps 1, 2, 3: step 1 and every 2nd are logged
        kwargs = {k: [v] * 3 for k, v in cols.items()} | {"trainer_state": SimpleNamespace(global_step=step)}
        for f in funcs:
            f(prompts=[[]] * 3, completions=answers, **kwargs)
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 1, 2, 2]
    first, second = records[:2]
    assert first["rewards"] == {"iou": pytest.approx(1 / 3), "format": 1.0}
    assert first["reward"] == pytest.approx(2 / 3 + 0.5)
    assert first["boxes"] == [{"phrase": "the red box", "box": [30.0, 10.0, 70.0, 50.0]}]
    assert first["references"] == [{"label": "the red box", "box": [10.0, 10.0, 50.0, 50.0]}]
    assert second["rewards"] == {"iou": 0.0, "format": 0.0} and second["reward"] == 0.0
    assert second["problems"] == ["no box: no parseable box in the text"]


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_fewer_prompts_than_one_step_takes_is_an_error_not_zero_steps(world, tmp_path):
    # 2 prompts x 4 answers, but 16 answers per step: TRL would drop the incomplete batch and train 0 steps
    with pytest.raises(UserError, match="fewer than the 16 answers one step takes"):
        train(_config(tmp_path / "o", rec=str(world["rec"]), per_device_train_batch_size=16))


def test_grpo_on_rec_prompts_with_the_iou_reward_merges_and_evaluates(world, tmp_path):
    out = tmp_path / "rec"
    summary = train(_config(out, rec=str(world["rec"]), max_steps=3, beta=0.04))
    assert summary["global_step"] == 3 and summary["world_size"] == 1
    assert summary["generated tokens"] > 0
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (out / name).exists(), name
    meta = json.loads((out / "spr_train.json").read_text())
    assert meta["base_model"] == str(BASE.resolve()) and meta["config"]["rewards"] is None
    log = _log(out)
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]
    for key in ("rewards/iou/mean", "reward", "frac_reward_zero_std", "completions/mean_length", "kl"):
        assert all(isinstance(e.get(key), float) for e in log if "loss" in e), key
    assert [row[0] for row in summary["table"]][:2] == ["reward", "rewards/iou/mean"]
    assert _lora_moved(out)  # the sampled boxes differ in IoU: the policy moved

    # the logged completions: their boxes, and the rewards: their first box's IoU with the referent (0 when the
    # codec repaired a box) plus the format reward
    records = _completions(out)
    assert {r["step"] for r in records} == {1, 2, 3} and all(r["task"] == "rec" for r in records)
    for r in records:
        repaired = any(is_repair(p) for p in r["problems"])
        first = r["boxes"][0]["box"] if r["boxes"] and not repaired else None
        iou = float(B.paired_iou([first], [r["references"][0]["box"]])[0]) if first else 0.0
        assert r["rewards"]["iou"] == pytest.approx(iou)
        assert r["reward"] == pytest.approx(iou + r["rewards"]["format"])

    merged, evaluated = tmp_path / "merged", tmp_path / "eval"
    assert main(["merge", "--adapter", str(out), "--out", str(merged)]) == 0
    args = ["eval", "rec", "--model", str(merged), "--data", str(world["val_rec"]), "--out", str(evaluated)]
    assert main([*args, "--limit", "4", "--quiet"]) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["parse_fail"] == 0.0


@pytest.mark.slow
def test_grpo_on_description_prompts_with_the_spr_reward(world, tmp_path):
    from spr.data.jsonl import read_records
    from spr.data.records import Region
    from spr.prompts import BUILTIN, render
    from spr.rewards import spr_scorer
    from spr.sampling import make_candidate

    out = tmp_path / "desc"
    config = _config(out, regions=str(world["regions"]), prompts="crop,region_box", max_completion_length=64)
    summary = train(config)
    assert summary["global_step"] == 2 and summary["prompts"] == 4  # 2 regions x 2 prompts
    log = [e for e in _log(out) if "loss" in e]
    assert all(0.0 <= e["rewards/spr/mean"] <= 1.0 and "frac_reward_zero_std" in e for e in log)
    assert _lora_moved(out)

    # every logged reward is `spr score`'s total of that completion as a candidate of its region and prompt
    regions = {r.id: r for r in read_records(world["regions"], Region)}
    scorer = spr_scorer(config.score_config())
    records = _completions(out)
    assert {r["prompt_id"] for r in records} <= {"crop", "region_box"} and records
    for r in records:
        region = regions[r["region_id"]]
        candidate = make_candidate(region, render(BUILTIN[r["prompt_id"]], region, "qwen2_vl"), 0, r["completion"], "qwen2_vl")  # fmt: skip
        (score,) = scorer.score_region(region, [candidate], Counter())
        assert r["rewards"]["spr"] == pytest.approx(score.total)


@pytest.mark.slow
def test_resumes_from_the_newest_checkpoint_and_refuses_other_settings(world, tmp_path):
    out = tmp_path / "resume"
    config = _config(out, rec=str(world["rec"]), save_steps=1, max_completion_length=32)
    train(config)
    shutil.rmtree(out / "checkpoint-2")  # as if killed after checkpoint-1
    (out / "adapter_model.safetensors").unlink()
    assert train(config)["global_step"] == 2 and (out / "adapter_model.safetensors").exists()
    assert [e["step"] for e in _log(out) if "loss" in e] == [1, 2]  # no step logged twice
    assert sorted({r["step"] for r in _completions(out)}) == [1, 2]
    assert len(_completions(out)) == 2 * 4  # each step's sample once
    adapter = (out / "adapter_model.safetensors").read_bytes()
    assert train(config)["global_step"] == 2  # finished: the same command again trains nothing
    assert (out / "adapter_model.safetensors").read_bytes() == adapter and len(_completions(out)) == 2 * 4
    with pytest.raises(UserError, match="learning_rate: 0.001 -> 0.0001"):
        train(_config(out, rec=str(world["rec"]), save_steps=1, max_completion_length=32, learning_rate=1e-4))


@pytest.mark.slow
def test_two_process_grpo_with_accelerate(world, tmp_path):
    out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs" / "accelerate" / "multi_cpu.yaml"), "--num_processes", "2", "--main_process_port", "29523",
        "-m", "spr.cli", "grpo", "--model", str(BASE), "--out", str(out), "--regions", str(world["regions"]),
        "--rec", str(world["rec"]), "--rewards", "spr", "iou", "format", "--semantic", "none", "--prompts", "crop",
        "--limit", "2", "--max-steps", "2", "--num-generations", "4", "--max-completion-length", "40",
        "--learning-rate", "1e-3", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rewards/spr/mean" in proc.stdout  # the summary table, printed once
    meta = json.loads((out / "spr_train.json").read_text())
    assert meta["global_step"] == 2 and meta["world_size"] == 2 and meta["completions per step"] == 8
    log = [e for e in _log(out) if "loss" in e]
    assert [e["step"] for e in log] == [1, 2]  # written once, by the main process
    assert all(e["rewards/format/mean"] is not None for e in log)
    assert main(["merge", "--adapter", str(out), "--out", str(tmp_path / "merged")]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", available_families())
def test_grpo_runs_for_every_family(tiny_model_dir, world, tmp_path, family):
    from safetensors import safe_open

    from spr import models

    model_dir = tiny_model_dir(family)
    spec = models.load(str(model_dir)).spec
    out = tmp_path / family
    config = _config(
        out, model=str(model_dir), regions=str(world["regions"]), rec=str(world["rec"]), prompts="crop",
        rewards=["spr", "iou", "format"], semantic="none", limit=1, max_steps=2, num_generations=2,
        max_completion_length=8,
    )  # fmt: skip
    summary = train(config)
    assert summary["global_step"] == 2 and math.isfinite(summary["train_loss"])
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(f".{spec.language_module}." in k for k in keys)
    assert not any(f".{v}." in k for k in keys for v in spec.vision_modules)
