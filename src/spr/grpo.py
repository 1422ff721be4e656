"""`spr grpo`: online RL with the SPR scores as rewards, TRL's GRPOTrainer, LoRA on the language model.

Read top to bottom: the config; the prompts as a dataset (:mod:`spr.training.grpo_rows`); the trainer
(the model in its precision on its device, as in `spr train`; LoRA on the language model's linears); the run
(resume from the newest complete checkpoint, save, a summary table, tear the process group down).

Each step samples ``num_generations`` completions per prompt, scores each with the weighted rewards, and moves
the policy towards the completions that score above their group's mean. A group whose completions all score
the same gives no signal (TRL's ``frac_reward_zero_std``).

Output directory, like `spr train`'s: ``checkpoint-N/`` (resumable), the final adapter with the processor,
``spr_train.json`` (the config, the base model path, the summary; what ``spr merge`` reads),
``train_log.jsonl`` (per log step: reward, rewards/<name>/mean, frac_reward_zero_std, completions/mean_length
...), and ``completions.jsonl`` (a few sampled completions per logged step with their parsed boxes and rewards).

Scaling: ``accelerate launch --config_file configs/accelerate/<multi_cpu|ddp|zero2|zero3>.yaml -m spr.cli grpo
...``; generation with vLLM through TRL's ``use_vllm`` options (docs/training.md).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import distributed
from .config import opt, output_settings, required
from .errors import UserError
from .options import DescriptionPrompts, ImageLimit, ModelFamily, PixelBudget
from .rewards import REWARDS
from .scoring.options import ScorerOptions, scorer_options
from .training.options import LoraOptions, TrainerOptions

log = logging.getLogger(__name__)

HELP = "Online RL (GRPO, TRL GRPOTrainer) with the SPR score, REC IoU and format rewards; LoRA on the language model."
LOG_FILE = "train_log.jsonl"
COMPLETIONS_FILE = "completions.jsonl"


@dataclass
class GrpoConfig(
    DescriptionPrompts, ScorerOptions, ModelFamily, PixelBudget, ImageLimit, LoraOptions, TrainerOptions
):
    """`spr grpo`: GRPO on description prompts of regions and/or REC prompts, with the project's rewards."""

    model: str = opt(required, "base model directory (spr.models.load)")
    out: str = opt(required, "output directory (checkpoints, final adapter, logs)")
    regions: str | None = opt(
        None, "regions.jsonl (`spr regions`): grounded-description prompts, `spr` reward"
    )
    rec: str | None = opt(None, "REC data (any layout `spr eval rec` reads): REC prompts, `iou` rewards")
    rec_images: str | None = opt(None, "image directory of the REC data (refer layout, Ref-L4)", default_text="as spr eval rec")  # fmt: skip
    rec_splits: list[str] | None = opt(None, "use these splits of the REC data only", default_text="all")
    limit: int | None = opt(None, "use only the first N regions and the first N REC samples", min=1)
    rewards: list[str] | None = opt(
        None,
        f"reward functions ({', '.join(REWARDS)})",
        default_text="spr with --regions, iou and format with --rec",
    )
    reward_weights: list[float] | None = opt(
        None, "weight of each reward in the total", default_text="1 each"
    )
    lenient_iou: bool = opt(
        False, "iou rewards score a box the codec repaired (corners swapped, clipped to the image); off: 0"
    )
    num_generations: int = opt(8, "completions sampled per prompt (a group)", min=1)
    temperature: float = opt(1.0, "sampling temperature", above=0)
    top_p: float = opt(
        1.0,
        "nucleus sampling: keep the smallest set of tokens whose probability reaches this",
        above=0,
        max=1,
    )
    max_completion_length: int = opt(256, "longest completion, in tokens", min=1)
    beta: float = opt(
        0.0, "KL coefficient against the base (the adapter switched off); 0: no reference forward"
    )
    loss_type: str = opt("dapo", "TRL loss: grpo, dapo, dr_grpo, bnpo, ...")
    scale_rewards: Literal["group", "batch", "none"] = opt("group", "divide advantages by the group's reward std, the batch's, or not")  # fmt: skip
    num_iterations: int = opt(1, "optimisation passes per generated batch (GRPO's mu)")
    epsilon: float = opt(0.2, "clipping range of the policy ratio")
    per_device_train_batch_size: int | None = opt(
        None, "completions per device per step", default_text="num_generations (one prompt's group)"
    )
    seed: int = opt(0, "random seed (initialisation, prompt order, sampling)")
    use_vllm: bool = opt(False, "generate with vLLM (TRL's use_vllm; pip install vllm, GPU only)")
    vllm_mode: Literal["colocate", "server"] = opt("colocate", "vLLM in the training processes, or a `trl vllm-serve` server")  # fmt: skip
    vllm_server_base_url: str | None = opt(None, "server mode: the server's URL", default_text="host and port", output=False)  # fmt: skip
    vllm_server_host: str = opt("0.0.0.0", "server mode: the server's host", output=False)
    vllm_server_port: int = opt(8000, "server mode: the server's port", output=False)
    vllm_server_timeout: float = opt(240.0, "server mode: seconds to wait for the server", output=False)
    vllm_gpu_memory_utilization: float = opt(
        0.3, "colocate mode: share of GPU memory vLLM takes", output=False
    )
    vllm_tensor_parallel_size: int = opt(1, "colocate mode: tensor-parallel size of vLLM", output=False)
    vllm_max_model_length: int | None = opt(
        None, "vLLM context length", default_text="the model's", output=False
    )
    vllm_enable_sleep_mode: bool = opt(
        False, "offload vLLM's weights during the optimizer step", output=False
    )
    sample_completions: int = opt(8, "completions written to completions.jsonl per logged step (0: none)", output=False)  # fmt: skip

    STAGE_DEFAULTS = {"warmup_ratio": 0.0, "logging_steps": 1}

    def __post_init__(self):
        super().__post_init__()
        for name in self.reward_names():
            if name not in REWARDS:
                raise ValueError(f"unknown reward {name!r}; rewards: {', '.join(REWARDS)}")
        if len(set(self.reward_names())) != len(self.reward_names()):
            raise ValueError(f"each reward once (weight it with --reward-weights): {self.reward_names()}")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_names()):
            raise ValueError(f"{len(self.reward_weights)} reward weight(s) for rewards {self.reward_names()}")
        if "spr" in self.reward_names() and not self.regions:
            raise ValueError("the spr reward scores region descriptions: give --regions")
        if any(n.startswith("iou") for n in self.reward_names()) and not self.rec:
            raise ValueError("the iou rewards score REC answers: give --rec")
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2 (GRPO compares the completions of a group)")
        if self.per_device_train_batch_size is not None and self.per_device_train_batch_size < 1:
            raise ValueError("per_device_train_batch_size must be at least 1")
        if not (math.isfinite(self.lam) and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"lambda must be in [0, 1], got {self.lam}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def reward_names(self) -> list[str]:
        if self.rewards:
            return list(self.rewards)
        return (["spr"] if self.regions else []) + (["iou", "format"] if self.rec else [])

    def weights(self) -> list[float]:
        return list(self.reward_weights) if self.reward_weights else [1.0] * len(self.reward_names())

    def score_config(self):
        """The `spr score` settings of the spr reward."""
        from .scoring import ScoreConfig

        return ScoreConfig(**scorer_options(self), device=self.device, refine=False)


Config = GrpoConfig


def settings(config: GrpoConfig) -> dict:
    """What decides the trained weights: the output fields, with the model, data and scorer models by
    fingerprint and the prompt templates by their text."""
    from .data.guard import fingerprint
    from .data.jsonl import file_sha256
    from .prompts import select_templates

    out = output_settings(config)
    out.pop("out")
    out["model"] = fingerprint(config.model)
    for key in ("regions", "rec"):
        path = getattr(config, key)
        out[key] = file_sha256(Path(path)) if path and Path(path).is_file() else path
    for key in ("clip_model", "label_model"):
        if out[key]:
            out[key] = fingerprint(out[key])
    out["rewards"], out["reward_weights"] = config.reward_names(), config.weights()
    if config.regions:
        out["prompts"] = [[t.id, t.view, t.template] for t in select_templates(config.prompts)]
    return out


# ------------------------------------------------------------------------------------------- completions log


class CompletionLog:
    """Wraps the reward functions; when the last one of a batch has run, the first ``per_step`` completions of
    a logged step go to ``path`` (main process): prompt, answer, parsed boxes (original pixels), the
    reference boxes and every reward with the weighted total."""

    def __init__(
        self, path: Path, rewards: list, weights: list[float], every: int, per_step: int, decode=None
    ):
        self.path, self.rewards, self.weights = Path(path), rewards, weights
        self.every, self.per_step, self.decode = max(1, every), per_step, decode
        self.main = distributed.is_main_process()
        self.values: dict[str, list] = {}

    def wrap(self, reward):
        def call(prompts=None, completions=(), completion_ids=None, **columns):
            values = reward(prompts, completions, completion_ids, **columns)
            self.values[reward.name] = values
            if len(self.values) == len(self.rewards):
                self.write(completions, completion_ids, columns)
                self.values = {}
            return values

        call.__name__ = reward.name
        return call

    def write(self, completions, completion_ids, columns) -> None:
        from .rewards import read_answers

        state = columns.get("trainer_state")
        step = state.global_step + 1 if state is not None else 0
        n = min(self.per_step, len(completions))
        if not (self.main and n and (step == 1 or step % self.every == 0)):
            return
        cols = {k: columns[k][:n] for k in ("task", "region", "candidate")}
        ids = completion_ids[:n] if completion_ids is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for i, a in enumerate(read_answers(completions[:n], ids, self.decode, **cols)):
                rewards = {r.name: self.values[r.name][i] for r in self.rewards}
                total = sum(w * v for w, v in zip(self.weights, rewards.values()) if v is not None)
                record = {
                    "step": step,
                    "task": a.task,
                    "region_id": a.region.id,
                    "prompt_id": a.candidate.prompt_id,
                    "prompt": a.candidate.prompt,
                    "completion": a.candidate.text,
                    "boxes": [{"phrase": g.get("phrase"), "box": g["box"]} for g in a.usable.groundings],
                    "problems": a.usable.problems,
                    "references": [{"label": o["label"], "box": o["box"]} for o in a.region.objects],
                    "rewards": rewards,
                    "reward": total,
                }
                f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------------- trainer


def grpo_args(config: GrpoConfig, precision):
    from trl import GRPOConfig

    from .training.precision import trainer_arguments

    return GRPOConfig(
        **config.trl_arguments(),
        num_generations=config.num_generations,
        temperature=config.temperature,
        top_p=config.top_p,
        max_completion_length=config.max_completion_length,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        num_iterations=config.num_iterations,
        epsilon=config.epsilon,
        reward_weights=config.weights(),
        per_device_train_batch_size=config.per_device_train_batch_size or config.num_generations,
        remove_unused_columns=False,  # the rewards read the prompt's columns
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
        vllm_server_base_url=config.vllm_server_base_url,
        vllm_server_host=config.vllm_server_host,
        vllm_server_port=config.vllm_server_port,
        vllm_server_timeout=config.vllm_server_timeout,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=config.vllm_tensor_parallel_size,
        vllm_max_model_length=config.vllm_max_model_length,
        vllm_enable_sleep_mode=config.vllm_enable_sleep_mode,
        **trainer_arguments(precision),
    )


def build_rewards(config: GrpoConfig, adapter) -> list:
    from .rewards import make_rewards, spr_scorer

    scorer = spr_scorer(config.score_config()) if "spr" in config.reward_names() else None
    return make_rewards(
        config.reward_names(), adapter.decode, scorer, config.iou_threshold, config.lenient_iou
    )


def build_trainer(config: GrpoConfig, callbacks=()):
    """The GRPOTrainer for ``config``; ``callbacks`` are extra ``transformers.TrainerCallback``s."""
    from .train import load_for_training
    from .training.callbacks import TrainLog
    from .training.grpo_rows import build_dataset, rec_rows, region_rows
    from .training.grpo_trainer import SprGRPOTrainer
    from .training.parts import lora_config
    from .training.precision import decide, ignore_checkpointing_deprecation

    ignore_checkpointing_deprecation()
    precision = decide(config.dtype, "lora", config.device, config.gradient_checkpointing)
    args = grpo_args(config, precision)  # before the model loads (ZeRO-3 shards the weights as they load)
    adapter = load_for_training(config, precision)
    # the family's routers balance without it (FamilySpec.router_aux_loss)
    if not adapter.spec.router_aux_loss:
        args.router_aux_loss_coef = 0.0
    problems: list[str] = []
    rows = (region_rows(config, adapter, problems) if config.regions else []) + (
        rec_rows(config, adapter, problems) if config.rec else []
    )
    for msg in problems[:10]:
        log.warning(msg)
    if not rows:
        raise UserError(
            f"no usable prompt in {config.regions or ''} {config.rec or ''} ({len(problems)} problems)"
        )
    # TRL drops an incomplete batch: with fewer prompts than one step takes it would train for 0 steps
    per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    if len(rows) * config.num_generations < per_step:
        raise UserError(
            f"{len(rows)} prompts x {config.num_generations} answers are fewer than the {per_step} answers one "
            "step takes (per-device batch x processes x accumulation): add prompts or lower "
            "--per-device-train-batch-size"
        )
    model, processor = adapter.model, adapter.processor
    adapter.tokenizer.padding_side = "left"
    peft_config = lora_config(config, model, adapter.spec)
    rewards = build_rewards(config, adapter)
    samples = CompletionLog(
        Path(config.out) / COMPLETIONS_FILE, rewards, config.weights(), config.logging_steps,
        config.sample_completions, adapter.decode,
    )  # fmt: skip
    return SprGRPOTrainer(
        model=model,
        reward_funcs=[samples.wrap(r) for r in rewards],
        args=args,
        train_dataset=build_dataset(rows),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[TrainLog(Path(config.out) / LOG_FILE, quiet=config.quiet), *callbacks],
        precision=precision,
        skipped=len(problems),
    )


# -------------------------------------------------------------------------------------------------------- run

SUMMARY_KEYS = (
    "reward",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/clipped_ratio",
    "kl",
    "loss",
)


def summary_rows(history: list[dict], reward_names: list[str]) -> list[list]:
    """Per metric: its first and last logged value and its mean over the run."""
    keys = [SUMMARY_KEYS[0], *(f"rewards/{n}/mean" for n in reward_names), *SUMMARY_KEYS[1:]]
    rows = []
    for key in keys:
        values = [e[key] for e in history if isinstance(e.get(key), int | float)]
        if values:
            rows.append([key, values[0], values[-1], sum(values) / len(values)])
    return rows


def generated_tokens(history: list[dict], completions_per_step: int) -> int:
    """Completion tokens sampled over the run, from the logged mean lengths (each log covers the steps since
    the one before)."""
    total, last = 0.0, 0
    for e in history:
        if isinstance(e.get("completions/mean_length"), int | float):
            total += e["completions/mean_length"] * (e["step"] - last) * completions_per_step
            last = e["step"]
    return int(round(total))


def train(config: GrpoConfig, callbacks=()) -> dict:
    """Train (resuming from the newest complete checkpoint; a completed run is a no-op), save the adapter with
    the processor; returns a summary (``summary["table"]``: the per-metric rows of :func:`summary_rows`)."""
    from .training.lifecycle import run_training

    if not (config.regions or config.rec):
        raise UserError(
            "nothing to train on: give --regions (description prompts) and/or --rec (REC prompts)"
        )

    def summarize(trainer, result, seconds: float) -> dict:
        args = trainer.args
        history = [e for e in trainer.state.log_history if "step" in e]
        per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        return {
            "train_loss": result.training_loss,
            "global_step": result.global_step,
            "world_size": args.world_size,
            "precision": trainer.spr_precision.describe(),
            "prompts": len(trainer.train_dataset),
            "prompts skipped": trainer.spr_skipped,
            "completions per step": per_step,
            "generated tokens": generated_tokens(history, per_step),
            "seconds": round(seconds, 1),
            "table": summary_rows(history, config.reward_names()),
        }

    return run_training(
        config, "grpo", settings(config), lambda: build_trainer(config, callbacks), summarize,
        logs=(LOG_FILE, COMPLETIONS_FILE),
    )  # fmt: skip


def run(config: GrpoConfig) -> int:
    from .table import markdown_table
    from .train import print_summary

    summary = train(config)
    if distributed.is_main_process():
        print(markdown_table(["metric", "first", "last", "mean"], summary.pop("table")))
        print_summary(summary, config.out)
    return 0
