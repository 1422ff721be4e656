"""`spr train`: DPO with TRL on a tiny Qwen2-VL — the loss of one step against a hand computation, LoRA only on
the language model, what is saved, resuming, bad pairs files, image tokens never truncated, 2-process CPU run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from evaluate_fixtures import make_dpo_jsonl

from spr.errors import UserError
from spr.models import available_families
from spr.train import TrainConfig, build_trainer, train
from spr.training.collator import safe_collator
from spr.training.parts import lora_target_regex
from spr.training.rows import build_dataset, read_pairs

REPO = Path(__file__).resolve().parents[1]


def _config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        data=str(data),
        out=str(out),
        max_steps=1,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=1000,
        lora_dropout=0.0,
        report_to="none",
    )
    base.update(kw)
    return TrainConfig(**base)


def _sequence_logps(model, batch) -> torch.Tensor:
    """Sum of log p(token) over each row's completion tokens, from plain logits."""
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(1)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_one_dpo_step_loss_equals_hand_computation(tiny_model_dir, tmp_path, method):
    data = make_dpo_jsonl(tmp_path, n=2)
    config = _config(tiny_model_dir("qwen2_vl"), data, tmp_path / "out", method=method, beta=0.5)
    trainer = build_trainer(config)
    model = trainer.model
    # Move the policy away from the reference, so that the loss is not log 2 by construction.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (method == "full" or "lora_B" in name):
                p.add_(torch.randn_like(p) * 0.2)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model.eval()
    with torch.no_grad():
        policy = _sequence_logps(model, batch)
        if method == "lora":
            with model.disable_adapter():
                reference = _sequence_logps(model, batch)
        else:
            reference = _sequence_logps(trainer.ref_model, batch)
    pc, pr = policy.chunk(2)
    rc, rr = reference.chunk(2)
    expected = -F.logsigmoid(0.5 * ((pc - rc) - (pr - rr))).mean().item()
    assert abs(expected - math.log(2)) > 1e-3  # the check below is not trivially log 2

    result = trainer.train()
    assert result.global_step == 1
    assert result.training_loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    logged = next(e for e in trainer.state.log_history if "rewards/margins" in e)
    margins = (0.5 * ((pc - rc) - (pr - rr))).mean().item()
    assert logged["rewards/margins"] == pytest.approx(margins, rel=1e-3, abs=1e-5)


def test_lora_goes_on_the_language_model_only(tiny_model_dir):
    from spr import models

    adapter = models.load(str(tiny_model_dir("qwen2_vl")))
    model, spec = adapter.model, adapter.spec
    import re

    regex = lora_target_regex(model, spec, ["q_proj", "v_proj"], train_vision=False)
    hits = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    assert hits and all(".language_model." in f".{n}" and n.endswith(("q_proj", "v_proj")) for n in hits)
    with_vision = lora_target_regex(model, spec, ["q_proj", "v_proj"], train_vision=True)
    vision_hits = [n for n, _ in model.named_modules() if re.fullmatch(with_vision, n) and "visual" in n]
    assert vision_hits  # the vision tower's linears (qkv, proj, fc1, fc2 ...) when asked
    with pytest.raises(UserError, match="no linear layer"):
        lora_target_regex(model, spec, ["no_such_proj"], train_vision=False)


@pytest.mark.slow
def test_train_saves_adapter_with_processor_and_resumes(tiny_model_dir, tmp_path):
    from spr import models

    data = make_dpo_jsonl(tmp_path, n=4)
    out = tmp_path / "out"
    SFT = dict(loss_type=["sigmoid", "sft"])  # a loss that is not log 2 at every step
    summary = train(
        _config(tiny_model_dir("qwen2_vl"), data, out, max_steps=2, save_steps=1, learning_rate=1e-3, **SFT)
    )
    assert summary["global_step"] == 2
    uninterrupted = summary
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "chat_template.jinja",
        "spr_train.json",
    ):
        assert (out / name).exists(), name
    assert (out / "checkpoint-2").is_dir()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(log[0])
    # the saved processor is complete (a multimodal processor with its chat template)
    processor = models.load(str(tiny_model_dir("qwen2_vl"))).processor
    saved = type(processor).from_pretrained(str(out))
    assert saved.chat_template == processor.chat_template and saved.image_processor is not None

    # as if killed after checkpoint-1: the same command resumes from it, and no step is logged twice
    import shutil

    shutil.rmtree(out / "checkpoint-2")
    (out / "adapter_model.safetensors").unlink()
    summary = train(
        _config(tiny_model_dir("qwen2_vl"), data, out, max_steps=2, save_steps=1, learning_rate=1e-3, **SFT)
    )
    assert summary["global_step"] == 2 and (out / "adapter_model.safetensors").exists()
    resumed_log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in resumed_log if "loss" in e] == [1, 2]
    # it describes the whole run, as the uninterrupted one did: the mean loss of both steps, all tokens
    assert summary["train_loss"] == pytest.approx(uninterrupted["train_loss"], abs=1e-6)
    assert [e.get("num_tokens") for e in resumed_log] == [e.get("num_tokens") for e in log]
    # another budget is another run: refused, not mixed into this one
    with pytest.raises(UserError, match="max_steps: 2 -> 3"):
        train(
            _config(
                tiny_model_dir("qwen2_vl"), data, out, max_steps=3, save_steps=1, learning_rate=1e-3, **SFT
            )
        )


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in available_families() if f != "qwen2_vl"])  # qwen2_vl: above
def test_lora_training_runs_for_every_family(tiny_model_dir, tmp_path, family):
    from safetensors import safe_open

    from spr import models

    model_dir = tiny_model_dir(family)
    loaded = models.load(str(model_dir))
    fmt, language, vision = loaded.fmt, loaded.spec.language_module, loaded.spec.vision_modules
    data = make_dpo_jsonl(tmp_path, n=2, fmt=fmt, geometry_fn=loaded.geometry)
    out = tmp_path / "out"
    summary = train(_config(model_dir, data, out, max_steps=1))
    assert summary["global_step"] == 1 and math.isfinite(summary["train_loss"])
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(f".{language}." in k for k in keys)
    assert not any(f".{v}." in k for k in keys for v in vision)


def test_pairs_file_problems_name_the_line(tmp_path):
    data = make_dpo_jsonl(tmp_path, n=3)
    lines = data.read_text().splitlines()
    row = json.loads(lines[1])
    del row["rejected"]
    lines[1] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dpo\.jsonl:2 .*missing field\(s\) rejected"):
        read_pairs(data)

    data = make_dpo_jsonl(tmp_path / "b", n=3)
    lines = data.read_text().splitlines()
    row = json.loads(lines[2])
    row["images"] = [str(tmp_path / "gone.png")]
    lines[2] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dpo\.jsonl:3 .*image missing: .*gone\.png.*--skip-bad"):
        read_pairs(data)
    problems = []
    assert len(read_pairs(data, skip_bad=True, problems=problems)) == 2 and "gone.png" in problems[0]

    row["chosen"] = [{"role": "user", "content": "x"}]
    row["images"] = json.loads(lines[0])["images"]
    lines[2] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dpo\.jsonl:3 .*'chosen' must end with a 'assistant' message"):
        read_pairs(data)


def test_answers_with_an_image_placeholder_are_refused_or_skipped(tiny_model_dir, tmp_path):
    from spr import models

    adapter = models.load(str(tiny_model_dir("qwen2_vl")))
    data = make_dpo_jsonl(tmp_path, n=2)
    lines = data.read_text().splitlines()
    row = json.loads(lines[1])
    row["rejected"][0]["content"][0]["text"] += " <|image_pad|>"
    lines[1] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    assert len(read_pairs(data)) == 2  # without the model, no placeholder to know of
    with pytest.raises(
        UserError,
        match=r"dpo\.jsonl:2 \(id 'img1/1'\): a text contains the placeholder token '<\|image_pad\|>'",
    ):
        read_pairs(data, adapter=adapter)
    problems = []
    assert [r["id"] for r in read_pairs(data, skip_bad=True, problems=problems, adapter=adapter)] == [
        "img1/0"
    ]
    assert "skipped" in problems[0]


def test_pairs_are_loaded_with_their_crop(tmp_path):
    data = make_dpo_jsonl(tmp_path, n=2)
    lines = data.read_text().splitlines()
    row = json.loads(lines[1])
    row["crop_box"] = [4, 6, 40, 30]
    lines[1] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    ds = build_dataset(read_pairs(data))
    assert ds[0]["images"][0].size == (96, 64)
    assert ds[1]["images"][0].size == (36, 24)
    assert ds[1]["prompt"][0]["content"][0] == {"type": "image"}


def test_max_length_never_cuts_image_tokens(tiny_model_dir, tmp_path):
    from spr import models

    processor = models.load(str(tiny_model_dir("qwen2_vl"))).processor
    examples = lambda: [build_dataset(read_pairs(make_dpo_jsonl(tmp_path, n=2)))[i] for i in range(2)]  # noqa: E731
    full = safe_collator(processor, None)(examples())
    prompt_len = int((full["completion_mask"].cumsum(1) == 0).sum(1).max())
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    n_image_tokens = int((full["input_ids"] == image_token).sum())

    short = safe_collator(processor, 8)(examples())  # far shorter than the prompt with its image tokens
    assert short["input_ids"].shape[1] == prompt_len + 1
    assert int((short["input_ids"] == image_token).sum()) == n_image_tokens
    longer = safe_collator(processor, prompt_len + 3)(examples())
    assert longer["input_ids"].shape[1] == min(prompt_len + 3, full["input_ids"].shape[1])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        TrainConfig(model="m", data="d", out="o", method="qlora")
    with pytest.raises(ValueError, match="loss weight"):
        TrainConfig(model="m", data="d", out="o", loss_type=["sigmoid", "sft"], loss_weights=[1.0])


def test_loss_types_and_sft_term_reach_trl(tiny_model_dir, tmp_path):
    data = make_dpo_jsonl(tmp_path, n=2)
    config = _config(
        tiny_model_dir("qwen2_vl"),
        data,
        tmp_path / "out",
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.5],
    )
    trainer = build_trainer(config)
    assert trainer.loss_types == ["sigmoid", "sft"] and trainer.loss_weights == [1.0, 0.5]
    assert trainer.args.use_cpu and not trainer.args.bf16 and not trainer.args.gradient_checkpointing
    assert trainer.ref_model is None  # LoRA: the reference is the model with its adapter off


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "multi_cpu"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "multi_cpu": "MULTI_GPU"}[
        name
    ]
    assert config.distributed_type.value == expected
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


@pytest.mark.slow
def test_two_process_cpu_training_with_accelerate(tiny_model_dir, tmp_path):
    data = make_dpo_jsonl(tmp_path, n=4)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "multi_cpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "29517",
        "-m",
        "spr.cli",
        "train",
        "--model",
        str(tiny_model_dir("qwen2_vl")),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--per-device-train-batch-size",
        "1",
        "--logging-steps",
        "1",
        "--learning-rate",
        "1e-3",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").exists()
    meta = json.loads((out / "spr_train.json").read_text())
    assert meta["global_step"] == 2
    assert meta["world_size"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2]  # written once, by the main process
    # one epoch: every pair's reference values, computed by the process that trained on it, sent to the main one
    (cache,) = data.parent.glob(f"{data.stem}.ref.*.jsonl")
    ids = [json.loads(line)["id"] for line in cache.read_text().splitlines()]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in data.read_text().splitlines())


def test_dtype_choices_load_and_train_as_they_say(tiny_model_dir, tmp_path):
    data = make_dpo_jsonl(tmp_path, n=2)
    model = tiny_model_dir("qwen2_vl")
    with pytest.raises(UserError, match="float16 training is not supported"):
        train(_config(model, data, tmp_path / "fp16", dtype="float16"))
    fp32 = train(_config(model, data, tmp_path / "fp32", dtype="auto", device="cpu"))
    assert fp32["precision"] == "weights float32 on cpu, no mixed precision, gradient checkpointing off"
    trainer = build_trainer(_config(model, data, tmp_path / "bf16", dtype="bfloat16", device="cpu"))
    assert trainer.args.bf16 and next(trainer.model.base_model.parameters()).dtype == torch.bfloat16
    # the adapter
    assert all(p.dtype == torch.float32 for n, p in trainer.model.named_parameters() if p.requires_grad)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert (
        trainer.spr_precision.describe()
        == "weights bfloat16 on cpu, bf16 mixed precision, gradient checkpointing off"
    )
    full = build_trainer(
        _config(model, data, tmp_path / "full", dtype="bfloat16", method="full", device="cpu")
    )
    assert next(full.model.parameters()).dtype == torch.float32  # full fine-tuning keeps fp32 master weights


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_with_lora_gives_the_same_step(
    tiny_model_dir, tmp_path, reentrant, monkeypatch
):
    """Checkpointing recomputes activations; with LoRA (frozen base: PEFT must make the inputs require grad) the
    loss and the adapter's update must be those of a run without it. ``reentrant`` is what ZeRO-3 needs."""
    if reentrant:  # as under ZeRO-3 (DeepSpeed itself cannot run here)
        monkeypatch.setattr("spr.training.precision.zero_stage", lambda: 3)
    data = make_dpo_jsonl(tmp_path, n=2)
    model = tiny_model_dir("qwen2_vl")

    def one_step(gc: bool):
        trainer = build_trainer(
            _config(model, data, tmp_path / f"gc{gc}", gradient_checkpointing=gc, learning_rate=1e-2)
        )
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        result = trainer.train()
        return (
            trainer,
            result.training_loss,
            {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad},
        )

    plain, loss_plain, after_plain = one_step(False)
    checkpointed, loss_gc, after_gc = one_step(True)
    assert checkpointed.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    assert checkpointed.spr_precision.reentrant == reentrant
    if reentrant:
        assert checkpointed.args.activation_checkpointing_kwargs == {"use_reentrant": True}
    assert loss_gc == pytest.approx(loss_plain, rel=1e-5)
    for name, value in after_plain.items():
        torch.testing.assert_close(after_gc[name], value, atol=1e-6, rtol=1e-5)
    assert any((v != 0).any() for n, v in after_gc.items() if "lora_A" in n)
