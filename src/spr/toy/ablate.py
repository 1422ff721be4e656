"""`spr toy ablate`: recipes of SPR against the base and against controls in the shapes world, over seeds, at
an equal budget of optimizer steps.

Every arm is `spr run` of the demo's config (:mod:`spr.toy.demo`) with a few overrides (``ARMS``), so an arm is
exactly what a user would run. Seeds change the regions, the samples and the training order; the world, and so
the evaluation scenes, stay those of world seed 0. ``eval_split: val`` evaluates on the validation scenes (for
choosing a recipe: no test scene is even drawn), ``test`` on the held-out test scenes (once, for the final
table). Arms share what they would compute identically (the base's evaluation; regions, candidates and scores
of the same seed): a stage's outputs are copied from an arm that already made them under the same settings, and
the stage then finds nothing left to do.

``continued`` is the control that needs no preference at all: SFT on ground-truth answers for fresh scenes of
the world, drawn as the base's own recipe draws them (labels SPR never sees), for the same number of steps.
``results.md`` shows each arm's change against the base, mean ± sd over seeds, with the base's sampling error,
and each arm's wall time and generated tokens.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import opt, output_settings
from ..evaluate.rec import BOX_ERRORS


@dataclass(frozen=True)
class Arm:
    title: str
    overrides: tuple[str, ...] = ()
    """`spr run --set` overrides of the demo config."""
    kind: str = "run"  # run: spr run; continued: SFT on ground truth


ARMS: dict[str, Arm] = {
    "spr": Arm("SPR (λ 0.8, DPO + SFT term)"),
    "dpo": Arm("pure DPO", ("train.loss_type=[sigmoid]",)),
    "sft_chosen": Arm("SFT on chosen", ("train.loss_type=[sft]",)),
    "dpo_light": Arm("DPO 0.2 + SFT 1", ("train.loss_weights=[0.2,1.0]",)),
    "lambda0": Arm("λ 0 (loc. only)", ("score.lambda=0.0",)),
    "lambda1": Arm("λ 1 (sem. only)", ("score.lambda=1.0",)),
    "greedy": Arm("+ greedy candidate", ("generate.include_greedy=true",)),
    "drop_unmatched": Arm("unmatched boxes dropped", ("score.unmatched=drop",)),
    "median": Arm("unmatched boxes: samples' median", ("score.unmatched=median",)),
    "sft_median": Arm(
        "SFT on chosen, unmatched: median", ("train.loss_type=[sft]", "score.unmatched=median")
    ),
    "temp07": Arm("sampling temperature 0.7", ("generate.temperature=0.7",)),
    "self_refined": Arm("self-refined pairs", ("pairs.pairing=self_refined",)),
    "rounds2": Arm("2 on-policy rounds", ("rounds=2",)),
    "rounds3": Arm("3 on-policy rounds", ("rounds=3",)),
    "continued": Arm("continued SFT (ground truth)", kind="continued"),
    # online RL with the same scores as rewards (spr grpo), on REC prompts (VLM-R1's recipe) or descriptions
    "grpo_iou": Arm(
        "GRPO, IoU reward (REC)",
        (
            "method=grpo",
            "grpo.rec={world}/train/rec.jsonl",
            "grpo.rewards=[iou]",
            "grpo.learning_rate=3e-4",
            "grpo.per_device_train_batch_size=64",
            "grpo.max_completion_length=32",
        ),
    ),
    "grpo_spr": Arm(
        "GRPO, SPR reward (descriptions)",
        (
            "method=grpo",
            "grpo.regions=round",
            "grpo.rewards=[spr]",
            "grpo.semantic=clip",
            "grpo.clip_model={assets}/clip",
            "grpo.learning_rate=3e-4",
            "grpo.per_device_train_batch_size=32",
            "grpo.max_completion_length=200",
        ),
    ),
}
REC_KEYS = ("acc@0.5", "acc@0.6", "acc@0.7", "acc@0.75", "acc@0.8", "acc@0.9", "mean_iou")
# the signed box errors (px) are shown as the arm's own value, not as a change, so the table reads before -> after
METRICS = (*REC_KEYS, "description_f1@0.5", "description_f1@0.75", *BOX_ERRORS)
SHARED = ("world", "eval-regions", "eval/base", "round-1/regions", "round-1/generate", "round-1/score")


@dataclass
class AblateConfig:
    """`spr toy ablate`: arms x seeds of the demo's run, on validation or test scenes."""

    out: str = opt(
        "runs/ablate", "experiment directory (re-running with the same settings resumes)", output=False
    )
    # arms and seeds are not settings of the experiment: each arm and seed is a run of its own (guarded by its own
    # settings), so an experiment grows by re-running it with more of them
    arms: list[str] = opt(["spr", "dpo", "sft_chosen", "lambda0", "lambda1", "continued"],
                          f"arms to run ({', '.join(ARMS)}); the first one's shared stages are reused by the others",
                          output=False)  # fmt: skip
    seeds: list[int] = opt([0, 1, 2], "seeds of the arms: regions, samples and training order", output=False)
    eval_split: Literal["val", "test"] = opt(
        "val", "evaluate on the validation scenes (to choose a recipe) or the test scenes (the final table)"
    )
    steps: int = opt(120, "optimizer steps of every arm (split over the rounds of a multi-round arm)")
    eval_scenes: int = opt(
        400,
        "held-out scenes evaluated (400: about 1,000 label expressions, a paired standard "
        "error of about 0.015 at acc@0.8)",
    )
    jobs: int = opt(1, "seeds run at once, each in its own process (one torch thread each)", output=False)
    set: list[str] = opt([], "overrides of the demo config for every arm (section.field=value)")
    overwrite: bool = opt(False, "discard what --out holds and start afresh", output=False)

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.eval_scenes < 1 or self.jobs < 1:
            raise ValueError("eval_scenes and jobs must be at least 1")


HELP = (
    "Measure SPR recipes against the base and controls over seeds, at an equal budget, in the shapes world."
)
Config = AblateConfig


# ------------------------------------------------------------------------------------------------ the arms


def split_overrides(split: str, scenes: int) -> list[str]:
    """Evaluate on ``scenes`` scenes of ``split`` of world seed 0 (every expression), and draw no scene of the
    other held-out split."""
    other = "test" if split == "val" else "val"
    return [
        f"world.{split}={scenes}",
        f"world.{other}=0",
        f"eval.rec.data={{world}}/{split}/rec.jsonl",
        "eval.rec.limit=null",
        f"eval_regions.annotations={{world}}/{split}/annotations.json",
        f"eval_regions.images={{world}}/{split}/images",
    ]


def paper_recipe(demo):
    """The demo's config with the paper's recipe (DPO + SFT term, unmatched boxes kept) on world seed 0: what
    every arm varies. The demo itself runs the recipe the arms chose, on a world of its own."""
    score = {k: v for k, v in demo.score.items() if k != "unmatched"}
    train = {  # beta 0.1 is spr train's default, named as the demo named it when the tables were measured
        "beta": 0.1,
        "loss_type": ["sigmoid", "sft"],
        **{k: v for k, v in demo.train.items() if k != "loss_type"},
    }
    return replace(demo, world={**demo.world, "seed": 0}, score=score, train=train)


def arm_run_config(c: AblateConfig, arm: str, seed: int, out: Path):
    """The run config of ``arm`` for ``seed`` in directory ``out``."""
    from .demo import DemoConfig, demo_config

    base = paper_recipe(demo_config(DemoConfig(out=str(out))))
    overrides = [*c.set, *split_overrides(c.eval_split, c.eval_scenes), *ARMS[arm].overrides,
                 f"regions.seed={seed}", f"generate.seed={seed}", f"train.seed={seed}"]  # fmt: skip
    config = replace(base, set=overrides, title=f"{ARMS[arm].title}, seed {seed}")
    from ..pipeline import apply_overrides

    config = apply_overrides(config)
    steps = max(1, c.steps // config.rounds)
    budget = [f"train.max_steps={steps}", "train.num_train_epochs=1000", f"grpo.max_steps={steps}",
              "grpo.num_train_epochs=1000"]  # fmt: skip
    if "grpo" in config.method:  # online RL draws its own samples and prompt order: from the arm's seed too
        budget.append(f"grpo.seed={seed}")
    return apply_overrides(replace(config, set=budget))


def share_from(donor: Path, run: Path, prefixes=SHARED) -> None:
    """Copy the stages of ``prefixes`` that ``donor`` finished under the same settings into ``run``; the settings
    headers that name the donor's own files are rewritten to name ``run``'s. Sharing stops at the first stage whose
    settings differ: a later stage with the same settings still reads that stage's other output (greedy's score
    step reads candidates the donor never sampled)."""
    from ..pipeline import RunState

    done = RunState(donor).done
    for step in [s for prefix in prefixes for s in done if s == prefix or s.startswith(prefix + "/")]:
        yaml_file = donor / (step.replace(" ", "-") + ".yaml")
        ours = run / yaml_file.relative_to(donor)
        if not ours.exists() or yaml_file.read_text().replace(str(donor), str(run)) != ours.read_text():
            return
        for path in map(Path, _outputs(yaml_file)):
            target = run / path.relative_to(donor)
            if target.exists():
                continue
            if path.is_dir():
                shutil.copytree(path, target)
                copied = list(target.rglob("spr_settings.json"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                copied = []
                for sibling in path.parent.glob(path.stem + ".*"):  # the file, its settings and summary
                    shutil.copy2(sibling, target.parent / sibling.name)
                    copied.append(target.parent / sibling.name)
            for f in copied:
                if f.name.endswith("settings.json"):
                    f.write_text(f.read_text().replace(str(donor), str(run)))


def _outputs(yaml_file: Path) -> list[str]:
    import yaml

    out = yaml.safe_load(yaml_file.read_text()).get("out")
    return [out] if out else []


def run_arm(c: AblateConfig, arm: str, seed: int, root: Path, log=print) -> Path:
    from ..pipeline import run_pipeline

    out = root / f"{arm}-seed{seed}"
    config = arm_run_config(c, arm, seed, out)
    donor = root / f"{c.arms[0]}-seed{seed}"
    if ARMS[arm].kind == "continued":
        return run_continued(c, config, seed, out, donor, log)
    shares = donor != out and (donor / "run_state.json").exists()
    run_pipeline(config, log=log, prepare=(lambda run, steps: share_from(donor, run)) if shares else None)
    return out


def run_continued(c: AblateConfig, config, seed: int, out: Path, donor: Path, log) -> Path:
    """SFT on ground-truth answers: the arm's own train / merge / eval steps, on data drawn from fresh scenes."""
    from .. import config as C
    from ..data.guard import StageOutput
    from ..pipeline import RunState, config_file, plan, write_results
    from ..stages import run_stage
    from .world import PRESETS

    steps = {s.name: s for s in plan(config)}
    with StageOutput(out, "run", C.output_settings(config), directory=True):
        for step in steps.values():
            C.write_yaml(step.config, config_file(out, step))
        if donor != out and (donor / "run_state.json").exists():
            share_from(donor, out, prefixes=("world", "eval-regions", "eval/base"))
        state = RunState(out)
        data = out / "round-1" / "sft.jsonl"
        if "round-1/data" not in state.done:
            t = time.time()
            rows = c.steps * int(config.train.get("per_device_train_batch_size", 4))
            continued_sft_data(Path(steps["round-1/generate"].config.model), PRESETS[config.world["preset"]], seed,
                               rows, config.generate.get("prompts"), data)  # fmt: skip
            state.mark("round-1/data", time.time() - t)
        prepare = [n for n in steps if n in ("world", "eval-regions") or n.startswith("eval/base/")]
        evaluations = [n for n in steps if n.startswith("round-1/eval")]
        for name in [
            *prepare,
            "round-1/train",
            *(["round-1/merge"] if "round-1/merge" in steps else []),
            *evaluations,
        ]:
            if name in state.done:
                continue
            cfg = steps[name].config
            if name == "round-1/train":
                cfg = replace(cfg, data=str(data), loss_type=["sft"])
            log(f"\n{out.name}: {name}")
            t = time.time()
            run_stage(steps[name].stage, cfg)
            state.mark(name, time.time() - t)
        write_results(replace(config, report=False), out, log=lambda m: None)
    return out


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


def continued_sft_data(base: Path, world_config, seed: int, n: int, prompts: str | None, out: Path) -> Path:
    """``out``: ``n`` ground-truth examples on fresh scenes (seeds ``"<seed>:continued:<i>"``, disjoint from the
    world's splits and the base's own training scenes), drawn as the base recipe draws them: referring
    expressions of the recipe's kinds with its share, else grounded region descriptions under the run's prompts."""
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
    images = out.parent / "sft_images"
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
    write_jsonl(out, rows)
    return out


# ----------------------------------------------------------------------------------------------- the run


def run_ablation(config: AblateConfig, log=print) -> dict:
    from ..data.guard import StageOutput

    root = Path(config.out).resolve()
    started = time.time()
    with StageOutput(root, "ablate", output_settings(config), config.overwrite, directory=True):
        if config.jobs > 1 and len(config.seeds) > 1:
            run_seeds_in_parallel(config, root)
        else:
            for seed in config.seeds:
                run_seed(config, seed, root, log)
        results = collect_results(config, root)
        (root / "results.json").write_text(json.dumps(results, indent=1))
        (root / "results.md").write_text(results_markdown(results))
    log("\n" + results_markdown(results))
    log(f"ablation finished in {time.time() - started:.0f} s: {root / 'results.md'}")
    return results


def run_seed(config: AblateConfig, seed: int, root: Path, log=print) -> None:
    for arm in config.arms:
        log(f"\n=== {arm}, seed {seed} ===")
        run_arm(config, arm, seed, root, log)


def _seed_worker(config: AblateConfig, seed: int, root: Path) -> None:
    import torch

    torch.set_num_threads(1)
    run_seed(config, seed, root, log=lambda m: print(f"[seed {seed}] {m}", flush=True))


def run_seeds_in_parallel(config: AblateConfig, root: Path) -> None:
    """Each seed's arms in a process of its own (their run directories are disjoint: every arm and seed is its own
    guarded run), ``jobs`` at a time; the first failure stops the experiment."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no forked torch state
    with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context) as pool:
        for future in [pool.submit(_seed_worker, config, seed, root) for seed in config.seeds]:
            future.result()


def run(config: AblateConfig) -> int:
    from .demo import tiny_model_threads

    tiny_model_threads()
    run_ablation(config)
    return 0


# ------------------------------------------------------------------------------------------------- results


PREPARED = ("world", "eval-regions", "eval/base")  # made once per seed for every arm: no arm's cost


def arm_cost(run: Path, donor: Path) -> dict:
    """Wall time the arm's round steps took, those it reused from the first arm (``donor``) at the first arm's
    time, so that every arm shows what it would cost alone; and the tokens it generated (sampled candidates, and
    online RL's answers while it trains). The world and the base's evaluation are shared by all and left out."""
    from ..pipeline import RunState

    done, made = RunState(run).done, RunState(donor).done

    def reused(step: str) -> bool:
        return donor != run and any(step == p or step.startswith(p + "/") for p in SHARED)

    seconds = sum(made.get(s, t) if reused(s) else t for s, t in done.items()
                  if not any(s == p or s.startswith(p + "/") for p in PREPARED))  # fmt: skip
    tokens = 0
    for step in [s for s in done if s.endswith("/generate")]:
        # the summary of the run that sampled them (a reusing arm's own run found them all present)
        summary = (donor if reused(step) else run) / step.split("/")[0] / "candidates.summary.json"
        if summary.exists():
            tokens += json.loads(summary.read_text()).get("new_tokens", 0)
    for trained in run.glob("round-*/adapter/spr_train.json"):  # online RL samples while it trains
        tokens += json.loads(trained.read_text()).get("generated tokens", 0)
    return {"seconds": round(seconds, 1), "generated tokens": tokens}


def collect_results(c: AblateConfig, root: Path) -> dict:
    base, arms = None, {}
    for arm in c.arms:
        arms[arm] = {}
        for seed in c.seeds:
            run = root / f"{arm}-seed{seed}"
            results = json.loads((run / "results.json").read_text())
            models = results["models"]
            base = base or {**models["base"], **results["eval"]}
            arms[arm][str(seed)] = {
                **list(models.values())[-1],
                **arm_cost(run, root / f"{c.arms[0]}-seed{seed}"),
            }
    summary = {}
    for arm, per_seed in arms.items():
        summary[arm] = {"seeds": len(per_seed)}
        for k in (*METRICS, "seconds", "generated tokens"):
            values = [m[k] for m in per_seed.values() if m.get(k) is not None]
            if not values:
                continue
            deltas = np.array(values) - (base.get(k, 0) if k in METRICS else 0)
            summary[arm][k] = {"mean": float(np.mean(values)), "delta_mean": float(deltas.mean()),
                               "delta_sd": float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0}  # fmt: skip
        for k, interval in seed_mean_intervals(c, root, arm).items():
            summary[arm][k]["ci"] = interval
    return {
        "base": base,
        "arms": arms,
        "summary": summary,
        "settings": {**output_settings(c), "arms": c.arms, "seeds": c.seeds},
    }


def seed_mean_intervals(c: AblateConfig, root: Path, arm: str) -> dict[str, list[float]]:
    """Paired bootstrap 95% intervals of the arm's seed-mean change against the base, per REC metric: the
    expressions are resampled (the same draws for the base and every seed), so the interval says how much the
    change depends on which expressions were drawn (:mod:`spr.evaluate.bootstrap`)."""
    from ..evaluate import bootstrap, rec
    from ..evaluate.compare import load_predictions

    def columns(records: list[dict], ids: list[str]):
        by_id = {str(r["id"]): r for r in records}
        cols = rec.sample_columns([by_id[i] for i in ids])
        return np.stack([cols[k][0] for k in REC_KEYS], 1), np.stack([cols[k][1] for k in REC_KEYS], 1)

    first = root / f"{arm}-seed{c.seeds[0]}"
    base = load_predictions(first / "eval" / "base" / "rec")
    if not base:
        return {}
    ids = sorted(str(r["id"]) for r in base)
    num_base, den = columns(base, ids)
    nums = []
    for seed in c.seeds:
        rounds = sorted(
            (root / f"{arm}-seed{seed}").glob("round-*/eval/rec"), key=lambda d: int(d.parts[-3][6:])
        )
        records = load_predictions(rounds[-1]) if rounds else None
        if not records or {str(r["id"]) for r in records} != set(ids):
            return {}
        nums.append(columns(records, ids)[0])
    _, lo, hi = bootstrap.paired_bootstrap(num_base, den, np.mean(nums, axis=0), den)
    return {k: [float(lo[j]), float(hi[j])] for j, k in enumerate(REC_KEYS)}


def results_markdown(results: dict) -> str:
    from ..table import markdown_table

    base, summary, settings = results["base"], results["summary"], results["settings"]
    seeds = settings["seeds"]
    arms = list(summary)
    n = base.get("rec_n") or 0
    p = base.get("acc@0.9") or 0.0
    se = math.sqrt(p * (1 - p) / n) if n else float("nan")

    def cell(arm: str, k: str) -> str:
        m = summary[arm].get(k)
        if not m:
            return "-"
        if k in BOX_ERRORS:
            return f"{m['mean']:+.2f}"
        ci = f" [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]" if m.get("ci") else ""
        return f"{m['delta_mean']:+.3f}" + (f" ± {m['delta_sd']:.3f}" if len(seeds) > 1 else "") + ci

    def base_cell(k: str) -> str:
        return f"{base[k]:+.2f}" if k in BOX_ERRORS else f"{base[k]:.3f}"

    rows = [[k, base_cell(k), *(cell(a, k) for a in arms)] for k in METRICS if base.get(k) is not None]
    rows.append(["wall time (s)", "", *(f"{summary[a]['seconds']['mean']:.0f}" for a in arms)])
    rows.append(["generated tokens", "", *(f"{summary[a]['generated tokens']['mean']:.0f}" for a in arms)])
    over = f"mean ± sd over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    head = (
        f"Change against the base on held-out {settings['eval_split']} scenes ({n} referring expressions), {over}; "
        f"every arm trains for {settings['steps']} optimizer steps; wall time: the arm's own steps (those it reused "
        "from the first arm at the first arm's time), without the world and the base's evaluation. Sampling error "
        f"of the base's acc@0.9 alone: ± {se:.3f}; accuracy at IoU t counts IoU >= t. width/height_error and "
        "centre_dx/dy: mean signed error (predicted - true, px) of the boxes with IoU >= 0.5, each arm's own "
        "value (mean over seeds), not a change. [lo, hi]: paired bootstrap 95% interval of the seed-mean change, "
        "resampling the expressions.\n\n"
    )
    return head + markdown_table(["metric", "base", *(ARMS[a].title for a in arms)], rows) + "\n"
