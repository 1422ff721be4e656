"""DPO with each pair's prompt run once (spr.training.prefix): the loss and its gradients equal those of running
the prompt once per answer, for every family that allows it, with answers of different lengths either way."""

from __future__ import annotations

import json

import pytest
import torch
from evaluate_fixtures import make_dpo_jsonl

from spr import models
from spr.models import available_families, get_family
from spr.train import TrainConfig, build_trainer
from spr.training.prefix import PromptShared, plan
from spr.training.trainer import prompt_shareable

SHAREABLE = [f for f in available_families() if get_family(f).prompt_sharing]


def _pairs(tmp_path, model_dir):
    """Four pairs; the first's rejected answer and the second's chosen answer are longer than the other."""
    loaded = models.load(str(model_dir))
    path = make_dpo_jsonl(tmp_path, n=4, fmt=loaded.fmt, geometry_fn=loaded.geometry)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, longer in ((rows[0], "rejected"), (rows[1], "chosen")):
        row[longer][0]["content"][0]["text"] += " and the one beside it, to the left of the others"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trainer_and_batch(model_dir, data, out):
    config = TrainConfig(
        model=str(model_dir), data=str(data), out=str(out), max_steps=1, per_device_train_batch_size=4,
        report_to="none", quiet=True, cache_reference=False, share_vision=False, share_prompt=False,
        lora_dropout=0.0,
    )  # fmt: skip
    trainer = build_trainer(config)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy off the reference, so that the loss is not log 2
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.model.train()
    return trainer, batch


def _loss_and_grads(trainer, model, batch):
    loss = trainer._compute_loss(model, batch, False)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("family", SHAREABLE)
def test_prompt_once_gives_the_loss_and_gradients_of_a_prompt_per_answer(tiny_model_dir, tmp_path, family):
    model_dir = tiny_model_dir(family)
    trainer, batch = _trainer_and_batch(model_dir, _pairs(tmp_path, model_dir), tmp_path / "out")
    spec = models.load(str(model_dir)).spec
    answers = (batch["completion_mask"].sum(1)).tolist()
    assert answers[0] < answers[4] and answers[1] > answers[5]  # rejected longer, then chosen longer
    base = trainer.model.get_base_model()
    shared = PromptShared(trainer.model, base.get_submodule(spec.language_module))
    loss, grads = _loss_and_grads(trainer, trainer.model, batch)
    shared_loss, shared_grads = _loss_and_grads(trainer, shared, batch)
    assert shared.shared_batches == 1  # packed, not passed through
    assert abs(float(loss) - 0.6931) > 1e-3
    # MoE routers: the balancing loss counts each prompt token once instead of twice
    tolerance = 1e-4 if "moe" in family and spec.router_aux_loss else 1e-6
    assert float(shared_loss) == pytest.approx(float(loss), abs=tolerance)
    scale = max(float(g.abs().max()) for g in grads)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, shared_grads)) <= 1e-3 * scale
    assert prompt_shareable(trainer.model, spec)


def test_the_reference_shares_the_prompt_and_gives_the_same_log_probs(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    trainer, batch = _trainer_and_batch(model_dir, _pairs(tmp_path, model_dir), tmp_path / "out")
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    trainer.spr_prompt_spec = get_family("qwen2_vl")
    shared_chosen, shared_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    assert torch.allclose(chosen, shared_chosen, atol=1e-4) and torch.allclose(
        rejected, shared_rejected, atol=1e-4
    )
    assert isinstance(trainer.shared_prompt(trainer.model), PromptShared)


def test_a_batch_whose_rows_are_not_pairs_of_one_prompt_runs_unshared(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    trainer, batch = _trainer_and_batch(model_dir, _pairs(tmp_path, model_dir), tmp_path / "out")
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    assert plan(batch["input_ids"], batch["attention_mask"], labels) is not None
    other = batch["input_ids"].clone()
    other[4, 0] += 1  # the first pair's rejected row has another prompt
    assert plan(other, batch["attention_mask"], labels) is None
    assert plan(batch["input_ids"][:3], batch["attention_mask"][:3], labels[:3]) is None  # odd rows
    spec = get_family("qwen2_vl")
    shared = PromptShared(trainer.model, trainer.model.get_base_model().get_submodule(spec.language_module))
    unequal = dict(
        batch, pixel_values=batch["pixel_values"] + torch.arange(len(batch["pixel_values"])).view(-1, 1)
    )
    trainer._compute_loss(shared, unequal, False)  # the rejected rows' images differ: not one prompt
    assert shared.shared_batches == 0


@pytest.mark.parametrize("family", ["qwen3_5"])
def test_linear_attention_families_do_not_share_the_prompt(tiny_model_dir, family):
    model = models.load(str(tiny_model_dir(family))).model
    assert not prompt_shareable(model, get_family(family))


def test_flash_attention_does_not_share_the_prompt(tiny_model_dir):
    model = models.load(str(tiny_model_dir("qwen2_vl"))).model
    spec = get_family("qwen2_vl")
    assert prompt_shareable(model, spec)
    model.get_submodule(spec.language_module).config._attn_implementation = "flash_attention_2"
    assert not prompt_shareable(model, spec)


def test_a_packed_batch_computes_each_image_once_for_the_policy_and_the_reference(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_vl")
    trainer, batch = _trainer_and_batch(model_dir, _pairs(tmp_path, model_dir), tmp_path / "out")
    spec = get_family("qwen2_vl")
    trainer.spr_prompt_spec = trainer.spr_spec = spec
    calls = []
    encoder = trainer.model.get_base_model().get_submodule(spec.vision_modules[0])
    encoder.register_forward_hook(lambda m, args, out: calls.append(1))
    trainer.compute_loss(trainer.model, batch)  # the reference (not cached) and the policy, one step
    assert len(calls) == 1
