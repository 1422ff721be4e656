"""`spr toy ablate`: SPR's effect in the shapes world over seeds, with the paper's ablations at equal budget.

Every seed is one SPR round of its own (its own training scenes, regions, samples and training order). One
generation and one scoring pass per seed feed six arms, and every arm trains the same LoRA from the same base for
the same number of optimizer steps (those of the ``spr`` arm: its pairs x epochs / batch size):

==============  ==================================================================================================
``spr``         preference training on best-refined against worst-original, total = 0.8 semantic + 0.2
                localization (the paper's), with the demo's loss (DPO + an SFT term on the chosen answer)
``dpo``         the same pairs with pure DPO
``lambda0``     the ``spr`` arm with total = localization only
``lambda1``     the same with total = semantic only
``sft_chosen``  supervised fine-tuning on the chosen answers of the ``spr`` pairs (TRL's ``sft`` loss): does the
                rejected side matter?
``continued``   supervised fine-tuning on ground-truth answers for fresh scenes in the base recipe's own task mix
                (referring expressions and region descriptions): is a gain more than training longer?
==============  ==================================================================================================

All models are evaluated greedily on one fixed set of held-out test scenes (the test split of world seed
``AblateConfig.seed``, 0 by default; never used for training or selection): REC acc@0.5 ... acc@0.9 and mean
IoU, grounded-description F1.
``results.md`` shows each arm's change against the base as mean ± sample standard deviation over the seeds, and
per seed what the round had to learn from (sample spread, margins, agreement of the scores with IoU).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import opt, output_settings
from ..data.jsonl import count_records
from ..scoring.combine import DEFAULT_LAMBDA
from .rounds import (
    REC_KEYS,
    DemoConfig,
    DemoRun,
    base_model_dir,
    clip_model_dir,
    evaluate_command,
    merge_command,
    model_metrics,
    pairs_command,
    round_stages,
    test_data,
    train_command,
    world_command,
)

ARMS = ("spr", "dpo", "lambda0", "lambda1", "sft_chosen", "continued")
ARM_TITLES = {
    "spr": "SPR (λ 0.8)",
    "dpo": "pure DPO",
    "lambda0": "λ 0 (loc. only)",
    "lambda1": "λ 1 (sem. only)",
    "sft_chosen": "SFT on chosen",
    "continued": "continued SFT",
}
LAMBDAS = {"spr": DEFAULT_LAMBDA, "dpo": DEFAULT_LAMBDA, "lambda0": 0.0, "lambda1": 1.0}
METRICS = (*REC_KEYS, "description_f1@0.5", "description_f1@0.75")


@dataclass
class AblateConfig(DemoConfig):
    """`spr toy ablate`: the demo's settings (``seed`` is the world seed of the evaluation scenes) plus the
    seeds and arms to run."""

    out: str = opt("runs/ablate", "run directory (re-running with the same settings resumes)", output=False)
    seeds: list[int] = opt([0, 1, 2], "seeds of the SPR rounds: training scenes, regions, sampling and training order")
    arms: list[str] = opt(list(ARMS), f"arms to train and evaluate ({', '.join(ARMS)})")
    eval_split: str = opt(
        "test", "evaluate on the test scenes (the result) or the validation scenes (val: to choose settings)"
    )
    jobs: int = opt(1, "seeds run at once, each in its own process", output=False)

    def __post_init__(self):
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval_split must be 'val' or 'test', got {self.eval_split!r}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
        if not self.seeds:
            raise ValueError("give at least one seed")


class AblateRun(DemoRun):
    STATE = "ablate.json"
    KIND = "ablation"


# ------------------------------------------------------------------------------------------------- arm data


def reweighted_scores(scores_path: Path, out: Path, lam: float) -> None:
    """The scores again with total = lam * semantic + (1 - lam) * localization (no model is run again)."""
    from ..data.jsonl import read_records, write_jsonl
    from ..data.records import Score
    from ..scoring.combine import total_score

    scores = read_records(scores_path, Score)
    write_jsonl(out, (replace(s, total=total_score(s.semantic, s.localization, lam)) for s in scores))


def sft_row(row_id: str, image: str, prompt: str, answer: str) -> dict:
    """A row of the DPO dataset layout whose ``chosen`` is the answer to learn (``rejected`` repeats it: the
    ``sft`` loss reads only the chosen side)."""
    answer_turn = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return {
        "id": row_id,
        "images": [image],
        "crop_box": None,
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        "chosen": answer_turn,
        "rejected": answer_turn,
    }


def continued_sft_data(base: Path, world_config, seed: int, n: int, prompts: str, d: Path) -> Path:
    """``d/dpo.jsonl``: ``n`` ground-truth examples on fresh scenes (seeds ``"<seed>:continued:<i>"``, disjoint from the world's
    splits and the base's own training scenes), drawn as the base recipe draws them: referring expressions of the
    recipe's kinds with its share, else grounded region descriptions under the round's prompts."""
    from .. import models
    from ..data.jsonl import write_jsonl
    from ..prompts import select_templates
    from .base_recipe import BaseRecipeConfig, description_example, rec_example
    from .world import WorldConfig, make_scene

    recipe_path = base / "recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}
    world_config = WorldConfig.from_dict(recipe["world"]) if "world" in recipe else world_config
    kinds = tuple(recipe.get("expression_kinds") or ())
    rec_fraction = float(recipe.get("rec_fraction", BaseRecipeConfig.rec_fraction))
    adapter = models.load(base)
    templates = select_templates(prompts)
    rng = random.Random(f"{seed}:continued")
    images = d / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, i = [], 0
    while len(rows) < n:
        scene = make_scene(world_config, f"{seed}:continued:{i}")
        i += 1
        if rng.random() < rec_fraction:
            ex = rec_example(scene, rng, adapter, kinds)
        else:
            ex = description_example(scene, rng, adapter, templates)
        if ex is None:
            continue
        path = images / f"{len(rows):05d}.png"
        ex.image.save(path)
        rows.append(sft_row(f"continued/{len(rows)}", str(path), ex.prompt, ex.answer))
    out = d / "dpo.jsonl"
    write_jsonl(out, rows)
    return out


def sft_on_chosen_data(dpo_jsonl: Path, out: Path) -> Path:
    from ..data.jsonl import iter_jsonl, write_jsonl

    write_jsonl(out, ({**row, "rejected": row["chosen"]} for row in iter_jsonl(dpo_jsonl)))
    return out


def equal_budget_steps(c: AblateConfig, n_pairs: int) -> int:
    return max(1, math.ceil(n_pairs / c.batch_size) * c.epochs)


# ----------------------------------------------------------------------------------------------- the run


def run_ablation(config: AblateConfig, log=print) -> dict:
    """Run (or resume) the ablation in ``config.out``; ``jobs`` > 1 runs that many seeds at once in worker
    processes (each seed keeps its own progress in seed-<n>/round.json, so they never write the same file)."""
    run = AblateRun(config.out, config, config.overwrite)
    c = config
    base_model, clip_model, jobs = c.base_model, c.clip_model, c.jobs
    t_all = time.time()
    models = {"base": base_model_dir(log, base_model, c.preset), "clip": clip_model_dir(log, clip_model)}
    log(f"base model: {models['base']}\ntiny CLIP: {models['clip']}")

    split = c.eval_split
    eval_world = run.path(f"{split}_world")
    val, test = (c.test_scenes, 0) if split == "val" else (0, c.test_scenes)
    run.stage(f"{split} world", lambda: world_command(eval_world, c.seed, c, 0, val, test), log=log)
    rec_data, regions = run.path(f"{split}_rec.jsonl"), run.path(f"{split}_regions.jsonl")
    run.stage(
        f"{split} data", lambda: test_data(c, eval_world, models["base"], run.dir, split), rec_data, log=log
    )
    run.stage("base eval", lambda: evaluate_command(c, models["base"], rec_data, regions, run.path("eval")), log=log)  # fmt: skip

    rounds = [(run.dir, c, seed, models, rec_data, regions) for seed in c.seeds]
    if jobs > 1 and len(rounds) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (forking a process that holds torch state is not safe)
        with ProcessPoolExecutor(
            min(jobs, len(rounds)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            for done in [pool.submit(seed_round, *r) for r in rounds]:
                done.result()
    else:
        for r in rounds:
            seed_round(*r, log=log)
    run.stage("results", lambda: write_results(run, log), log=log)
    log(f"\nablation finished in {time.time() - t_all:.0f} s: {run.path('results.md')}")
    return json.loads(run.path("results.json").read_text())


class RoundRun(DemoRun):
    STATE = "round.json"
    KIND = "ablation round"


def seed_round(out: Path, c: AblateConfig, seed: int, models: dict, rec_data: Path, regions: Path, log=print):
    """One SPR round up to its pairs, then every arm: its training data, LoRA training + merge, evaluation."""
    rnd = RoundRun(out / f"seed-{seed}", c)
    d = rnd.dir
    n_stages = 5 + 4 * len(c.arms)
    progress = {"i": 0}

    def stage(name: str, fn, output: Path | None = None) -> None:
        progress["i"] += 1
        rnd.stage(name, fn, output, f"seed {seed} [{progress['i']}/{n_stages}] ", log)

    stage("world", lambda: world_command(d / "world", seed, c, c.train_scenes, 0, 0))
    for name, fn, output in round_stages(c, seed, d / "world", d, models):
        stage(name, fn, output)
    n_pairs = count_records(d / "dpo.jsonl")
    steps = equal_budget_steps(c, n_pairs)
    for arm in c.arms:
        arm_stages(c, arm, seed, d, models, steps, n_pairs, stage, rec_data, regions)


def arm_stages(
    c, arm: str, seed: int, d: Path, models: dict, steps: int, n_pairs: int, stage, rec_data, regions
):
    """The arm's training data, LoRA training for ``steps`` steps, merge, evaluation; in ``d/<arm>``."""
    a, base = d / arm, models["base"]
    loss = {"dpo": ("sigmoid",), "sft_chosen": ("sft",), "continued": ("sft",)}.get(arm, c.loss_type)
    stage(f"{arm} data", lambda: arm_data(c, arm, d, a, base, seed, n_pairs))
    if not count_records(a / "dpo.jsonl"):  # e.g. lambda 0 when no sample of any prompt localizes better
        stage(f"{arm} has no training rows", lambda: None)
        return
    stage(f"{arm} train", lambda: train_command(c, base, a / "dpo.jsonl", a / "adapter", seed, loss, max_steps=steps))
    stage(f"{arm} merge", lambda: merge_command(a / "adapter", base, a / "model"))
    stage(f"{arm} eval", lambda: evaluate_command(c, a / "model", rec_data, regions, a / "eval"))


def arm_data(c: AblateConfig, arm: str, d: Path, a: Path, base: Path, seed: int, n_pairs: int) -> None:
    """The arm's training rows in ``a/dpo.jsonl`` (the DPO dataset layout, also for the SFT arms)."""
    from .world import PRESETS

    a.mkdir(parents=True, exist_ok=True)
    if LAMBDAS.get(arm) == DEFAULT_LAMBDA:
        (a / "dpo.jsonl").write_bytes((d / "dpo.jsonl").read_bytes())
    elif arm in LAMBDAS:
        reweighted_scores(d / "scores.jsonl", a / "scores.jsonl", LAMBDAS[arm])
        pairs_command(d, a / "scores.jsonl", a / "pairs.jsonl")
    elif arm == "sft_chosen":
        sft_on_chosen_data(d / "dpo.jsonl", a / "dpo.jsonl")
    else:
        continued_sft_data(base, PRESETS[c.preset], seed, n_pairs, c.prompts, a)


# ------------------------------------------------------------------------------------------- diagnostics


def round_diagnostics(d: Path) -> dict:
    """What one round had to learn from: how much the samples of one prompt differ in localization, how often
    the semantic score agrees with it, and what separates chosen from rejected."""
    from scipy.stats import spearmanr

    from ..data.jsonl import read_records
    from ..data.records import Pair, Score
    from ..pairs import prompt_key

    scores = {s.id: s for s in read_records(d / "scores.jsonl", Score)}
    groups: dict[tuple, list[Score]] = defaultdict(list)
    for s in scores.values():
        if not s.refined:
            groups[prompt_key(s.candidate_id, {})].append(s)
    spread, all_zero, rho, no_box = [], 0, [], 0
    for group in groups.values():
        loc = np.array([s.localization for s in group])
        sem = np.array([s.semantic for s in group])
        spread.append(loc.max() - loc.min())
        all_zero += bool(loc.max() == 0)
        no_box += sum(not s.groundings for s in group)
        if loc.std() > 0 and sem.std() > 0:
            rho.append(spearmanr(sem, loc).statistic)
    pairs = read_records(d / "pairs.jsonl", Pair)
    chosen = [scores[p.chosen_id] for p in pairs]
    rejected = [scores[p.rejected_id] for p in pairs]
    n_orig = sum(len(g) for g in groups.values())

    def mean(values) -> float:
        return float(np.mean(values)) if len(values) else float("nan")

    out = {
        "candidates": n_orig,
        "share without a box": no_box / max(n_orig, 1),
        "localization spread (best - worst)": mean(spread),
        "prompts whose samples all score 0 loc.": all_zero / max(len(groups), 1),
        "spearman(semantic, localization)": mean(rho),
        "pairs": len(pairs),
        "margin (total)": mean([p.margin for p in pairs]),
        "chosen - rejected localization": mean(
            [c.localization - r.localization for c, r in zip(chosen, rejected)]
        ),
        "chosen - rejected semantic": mean([c.semantic - r.semantic for c, r in zip(chosen, rejected)]),
        # DPO lowers the rejected answer as a whole: the objects it got right are pushed down with the rest
        "objects found by chosen (recall@0.5)": mean([c.recall for c in chosen]),
        "objects found by rejected (recall@0.5)": mean([r.recall for r in rejected]),
    }
    for arm in ("spr", "dpo"):  # how far training moved the policy from the base on its own pairs
        path = d / arm / "adapter" / "spr_train.json"
        if path.exists():
            train = json.loads(path.read_text())
            beta = train["config"]["beta"]
            out[f"{arm}: steps"] = train.get("global_step")
            out[f"{arm}: final reward accuracy"] = train.get("rewards/accuracies")
            out[f"{arm}: final reward margin"] = train.get("rewards/margins")
            if train.get("rewards/chosen") is not None:
                out[f"{arm}: chosen log-prob change (nats)"] = train["rewards/chosen"] / beta
    return out


# ----------------------------------------------------------------------------------------------- results


def collect_results(run: AblateRun) -> dict:
    c: AblateConfig = run.config
    base = model_metrics(run.path("eval"))
    arms = {arm: {} for arm in c.arms}
    for seed in c.seeds:
        for arm in c.arms:
            eval_dir = run.path(f"seed-{seed}", arm, "eval")
            if (eval_dir / "description" / "metrics.json").exists():  # else the arm had no rows to train on
                arms[arm][seed] = model_metrics(eval_dir)
    summary = {}
    for arm, per_seed in arms.items():
        summary[arm] = {"seeds": len(per_seed)}
        for k in METRICS:
            if not per_seed or base.get(k) is None or any(m.get(k) is None for m in per_seed.values()):
                continue
            deltas = np.array([m[k] - base[k] for m in per_seed.values()])
            summary[arm][k] = {
                "mean": float(np.mean([m[k] for m in per_seed.values()])),
                "delta_mean": float(deltas.mean()),
                "delta_sd": float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0,
            }
    diagnostics = {seed: round_diagnostics(run.path(f"seed-{seed}")) for seed in c.seeds}
    return {
        "base": base,
        "arms": {arm: {str(s): m for s, m in per_seed.items()} for arm, per_seed in arms.items()},
        "summary": summary,
        "diagnostics": {str(s): v for s, v in diagnostics.items()},
        "settings": output_settings(c),
    }


def _signed(mean: float, sd: float) -> str:
    return f"{mean:+.3f} ± {sd:.3f}"


def results_markdown(results: dict) -> str:
    from ..table import markdown_table

    base, summary = results["base"], results["summary"]
    arms = list(summary)
    seeds = results["settings"]["seeds"]
    n = base.get("rec_n") or 0
    p = base.get("acc@0.5") or 0.0
    se = math.sqrt(p * (1 - p) / n) if n else float("nan")

    def cell(arm: str, k: str) -> str:
        m = summary[arm].get(k)
        return _signed(m["delta_mean"], m["delta_sd"]) if m else "no rows to train on"

    rows = [[k, f"{base[k]:.3f}", *(cell(a, k) for a in arms)] for k in METRICS if base.get(k) is not None]
    rows.append(["seeds trained", "", *(summary[a]["seeds"] for a in arms)])
    head = (
        f"Change against the base on held-out {results['settings'].get('eval_split', 'test')} scenes ({n} referring expressions, "
        f"{results['settings']['description_limit']} regions), mean ± sd over {len(seeds)} seed(s) "
        f"{', '.join(map(str, seeds))}; every arm trains the same LoRA for the same steps. "
        f"Sampling error of the base's acc@0.5 alone: ± {se:.3f}.\n\n"
    )
    table = markdown_table(["metric", "base", *(ARM_TITLES[a] for a in arms)], rows)
    diag = results["diagnostics"]
    if diag:
        keys = list(next(iter(diag.values())))
        drows = [[k, *(diag[s][k] for s in diag)] for k in keys]
        table += "\n\nWhat each round had to learn from (the λ 0.8 pairs), and how far training moved the model:\n\n"
        table += markdown_table(["seed", *diag], drows)
    return head + table + "\n"


def write_results(run: AblateRun, log=print) -> None:
    results = collect_results(run)
    run.path("results.json").write_text(json.dumps(results, indent=1))
    table = results_markdown(results)
    run.path("results.md").write_text(table)
    log("\n" + table)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = (
    "Measure SPR against the base over seeds, with the ablations (DPO vs SFT on chosen, lambda 0 / 0.8 / 1, "
    "continued SFT) at equal budget, in the shapes world; writes one table."
)
Config = AblateConfig


def run(config: AblateConfig) -> int:
    run_ablation(config)
    return 0
