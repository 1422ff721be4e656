"""`spr run`: the whole method on one model and its data, for K rounds, in one resumable run directory.

Read top to bottom: the config (one section per stage, holding that stage's own config fields); the plan (every
step of every round, as the stage command and its config, in order); running the plan (each step once, skipping
those done, each stage resuming itself); the results table that grows a row per round.

A round is regions -> generate -> score -> pairs -> train -> merge -> eval (``method: dpo``, SPR as published),
or regions -> grpo -> merge -> eval (``method: grpo``: online RL with the same scores as rewards, `spr grpo`);
``method`` may list one per round. Round k+1 samples its candidates from
round k's merged model (on fresh regions, or round 1's), and its DPO reference is round k's model (``reference:
previous``: a new LoRA on the merged model) or the base (``reference: base``: round k's adapter trained on, the
frozen base as reference). Every round's model, and the base, is evaluated on the same evaluation data.

Layout::

    RUN/run.yaml                 the resolved config          RUN/spr_settings.json  what resuming must match
    RUN/run_state.json           steps done                   RUN/results.json, results.md, report.html
    RUN/world/                   the shapes world (``world`` section; the demo)
    RUN/eval/regions.jsonl       held-out regions for the description task (``eval_regions`` section)
    RUN/eval/base/<task>/        the base model's evaluation
    RUN/round-K/{regions,candidates,scores,pairs,dpo}.jsonl, adapter/, model/, eval/<task>/, <stage>.yaml

``spr run --dry-run`` writes every step's YAML and prints one command per step with its launcher, to submit to a
scheduler as separate jobs. String values may use ``{run}``, ``{world}`` (``{run}/world``) and ``{assets}`` (the
shapes world's shipped models).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from . import config as C
from .config import opt, required
from .data.guard import StageOutput
from .errors import UserError
from .stages import command, run_stage

ASSETS = Path(__file__).parent / "toy" / "assets"
STAGE_SECTIONS = ("regions", "generate", "score", "pairs", "train", "grpo", "merge")
# what the run sets itself in each section (the files of the round); a section may not set them
RUN_SET = {
    "regions": ("out",),
    "generate": ("model", "regions", "out"),
    "score": ("regions", "candidates", "out"),
    "pairs": ("regions", "candidates", "scores", "out", "dpo_out"),
    "train": ("model", "data", "out", "adapter", "reference"),
    "grpo": ("model", "out"),
    "merge": ("adapter", "base", "out"),
}
LAUNCHERS = ("python", "accelerate", "torchrun")
# settings of the whole run, stated once at the top and handed to every stage whose command has the option
RUN_WIDE = ("family", "device", "dtype", "min_pixels", "max_pixels")
MAX_ROUNDS = 100  # a bound, so that a typo (rounds=100000000) is refused rather than planned for hours


@dataclass
class RunConfig:
    """`spr run`: the stages of SPR for ``rounds`` rounds. Each section holds the fields of that stage's own
    config (`spr <stage> --help`); the run fills in the files."""

    out: str = opt(required, "run directory (the same command resumes a killed run)", output=False)
    model: str = opt(required, "the base model directory")
    rounds: int = opt(
        1, "SPR rounds; round k+1 samples from round k's model (on-policy)", min=1, max=MAX_ROUNDS
    )
    fresh_regions: bool = opt(
        True, "each round draws its own regions (seed + round); off: every round uses round 1's"
    )
    reference: Literal["previous", "base"] = opt(
        "previous", "DPO reference of round k+1: round k's model, or the base (round k's adapter trained on)"
    )
    method: list[str] = opt(
        ["dpo"], "dpo (SPR's pairs and DPO) or grpo (online RL, `spr grpo`); one, or one per round"
    )
    family: str | None = opt(
        None, "model family of every stage", default_text="each stage's own (config.json)"
    )
    device: str | None = opt(
        None,
        "torch device of every stage that has one (auto, cpu, cuda ...)",
        default_text="each stage's own (auto)",
    )
    dtype: str | None = opt(
        None, "dtype of every stage that loads or saves the model", default_text="each stage's own"
    )
    min_pixels: int | None = opt(
        None,
        "image processor pixel budget, lower end, of every stage",
        default_text="each stage's own",
        min=1,
    )
    max_pixels: int | None = opt(
        None, "image processor pixel budget, upper end, of every stage (a model that writes boxes in pixels of the "
        "resized input needs one budget for generate, train and eval)", default_text="each stage's own", min=1,
    )  # fmt: skip
    world: dict | None = opt(
        None, "a shapes world to generate first into {run}/world (`spr toy world` fields)"
    )
    regions: dict = opt({}, "`spr regions` fields: annotations, images, objects_per_region, seed ...")
    eval_regions: dict | None = opt(
        None, "`spr regions` fields for held-out regions (the description task's data)"
    )
    generate: dict = opt({}, "`spr generate` fields: samples, temperature, prompts, include_greedy ...")
    score: dict = opt({}, "`spr score` fields: semantic, clip_model, lambda ...")
    pairs: dict = opt({}, "`spr pairs` fields: pairing, min_margin")
    train: dict = opt({}, "`spr train` fields: learning_rate, beta, loss_type, lora_r ...")
    grpo: dict = opt(
        {}, "`spr grpo` fields (method grpo): rewards, rec, num_generations ...; regions: round = the round's"
    )
    merge: dict = opt({}, "`spr merge` fields: dtype")
    eval: dict = opt({}, "evaluation tasks to run on the base and every round: {task: its `spr eval` fields}")
    launcher: dict = opt(
        {},
        "per stage, how to start it: {stage: {kind: python|accelerate|torchrun, config_file, num_processes}}",
    )
    report: bool = opt(True, "write report.html at the end (spr report)")
    title: str = opt("SPR run", "title of results.md and report.html")
    dry_run: bool = opt(False, "write every step's config and print its command, run nothing", output=False)
    overwrite: bool = opt(False, "discard what the run directory holds and start afresh", output=False)
    set: list[str] = opt(
        [], "override a section field: section.field=value (YAML value), repeatable", output=False, name="set"
    )

    def __post_init__(self):
        C.check_numbers(self)
        if len(self.method) not in (1, self.rounds) or set(self.method) - {"dpo", "grpo"}:
            raise ValueError(
                f"method: dpo or grpo, once or once per round ({self.rounds}); got {self.method}"
            )
        for task, fields in self.eval.items():
            if not isinstance(fields, dict | None):
                raise ValueError(
                    f"eval {task}: expected a mapping of `spr eval {task}` fields, got {fields!r}"
                )
        given = {k for k in RUN_WIDE if getattr(self, k) is not None}
        sections = {
            **{n: getattr(self, n) for n in STAGE_SECTIONS},
            **{f"eval {t}": v for t, v in self.eval.items()},
        }
        for name, fields in sections.items():
            taken = sorted(set(fields or {}) & set(RUN_SET.get(name, ())))
            if taken:
                raise ValueError(f"section {name}: {', '.join(taken)} are set by the run (the round's files)")
            twice = sorted(set(fields or {}) & given)
            if twice:
                raise ValueError(
                    f"section {name}: {', '.join(twice)} is set for the whole run at the top; set it once"
                )
        for stage, spec in self.launcher.items():
            if not isinstance(spec, dict | None):
                raise ValueError(
                    f"launcher {stage}: expected a mapping {{kind: ..., num_processes: ...}}, got {spec!r}"
                )
            if stage not in (*STAGE_SECTIONS, "eval") or (spec or {}).get("kind", "python") not in LAUNCHERS:
                raise ValueError(
                    f"launcher {stage}: {spec}; stages: {', '.join(STAGE_SECTIONS)}, eval; kinds: {', '.join(LAUNCHERS)}"
                )


HELP = "Run the whole method (regions -> ... -> eval) for K on-policy rounds in one resumable run directory."
Config = RunConfig


# ------------------------------------------------------------------------------------------------- the plan


@dataclass
class Step:
    name: str  # "round-1/generate"
    stage: str  # the command: "generate", "eval rec" ...
    config: object  # an instance of the stage's Config
    section: str = ""  # the launcher section


def _fill(value, values: dict):
    """``{run}``-style placeholders in every string of ``value``."""
    if isinstance(value, str):
        for k, v in values.items():
            value = value.replace("{" + k + "}", str(v))
        return value
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def apply_overrides(config: RunConfig) -> RunConfig:
    """``--set generate.samples=8``: a section field, its value read as YAML."""
    changes: dict = {}
    for item in config.set:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if (
            sep
            and not dot
            and key in ("rounds", "reference", "method", "fresh_regions", "model", "title", *RUN_WIDE)
        ):
            changes[key] = _yaml_value(raw)  # a top-level field: rounds=2
            continue
        if not (sep and dot and name):
            raise UserError(
                f"--set {item!r}: write section.field=value (or rounds=, reference=, method=, model=)"
            )
        if section not in (*STAGE_SECTIONS, "world", "eval_regions", "eval"):
            raise UserError(f"--set {item!r}: no section {section!r}")
        target = changes.setdefault(section, dict(getattr(config, section) or {}))
        value = _yaml_value(raw)
        if section == "eval":  # eval.rec.limit=100
            task, _, field_name = name.partition(".")
            target.setdefault(task, {})[field_name] = value
        else:
            target[name] = value
    if not changes:
        return config
    try:
        return C.build(RunConfig, {**C.to_dict(config), **changes, "set": []}, source="--set")
    except UserError as e:
        raise UserError(str(e)) from None


def _yaml_value(raw: str):
    """A --set value as YAML reads it (3, true, [a, b]), except paths starting with a placeholder."""
    import yaml

    if raw.startswith(("{run}", "{world}", "{assets}")):
        return raw
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError):
        return raw
    C.check_size(value, f"--set value {raw[:40]!r}")
    return value


def _stage_config(stage: str, section: str, values: dict, shared: dict | None = None):
    """The config of command ``stage`` from its section's ``values``, with the run-wide settings (``shared``)
    that its Config declares."""
    cls = command(stage).Config
    declared = {f.name for f in dataclasses.fields(cls)}
    values = {**{k: v for k, v in (shared or {}).items() if k in declared}, **values}
    return C.build(cls, values, source=f"run config, section {section}")


def run_wide(config: RunConfig) -> dict:
    """The run-wide settings given (family, dtype, pixel budget): handed to every stage that has the option."""
    return {k: getattr(config, k) for k in RUN_WIDE if getattr(config, k) is not None}


def plan(config: RunConfig) -> list[Step]:
    """Every step of the run, in order, with its config (files filled in)."""
    run = Path(config.out).resolve()
    placeholders = {"run": run, "world": run / "world", "assets": ASSETS}
    filled = (
        "model",
        "world",
        "regions",
        "eval_regions",
        "generate",
        "score",
        "pairs",
        "train",
        "grpo",
        "merge",
    )
    c = replace(config, **{k: _fill(getattr(config, k), placeholders) for k in (*filled, "eval")})
    shared = run_wide(c)

    def step(name: str, stage: str, section: str, values: dict, launcher: str | None = None) -> Step:
        config = _stage_config(stage, section, values, shared)
        return Step(name, stage, config, section if launcher is None else launcher)

    steps: list[Step] = []
    if c.world is not None:
        steps.append(step("world", "toy world", "world", {**c.world, "out": str(run / "world")}, launcher=""))
    eval_regions = None
    if c.eval_regions is not None:
        eval_regions = run / "eval" / "regions.jsonl"
        values = {**c.eval_regions, "out": str(eval_regions)}
        steps.append(step("eval-regions", "regions", "eval_regions", values, launcher="regions"))

    def evaluations(model: str, where: Path, label: str) -> list[Step]:
        out = []
        for task, fields in c.eval.items():
            fields = dict(fields or {})
            if task == "description" and "data" not in fields and eval_regions is not None:
                fields["data"] = str(eval_regions)
            values = {**fields, "model": model, "out": str(where / task)}
            out.append(step(f"{label}/eval {task}", f"eval {task}", f"eval.{task}", values, launcher="eval"))
        return out

    steps += evaluations(c.model, run / "eval" / "base", "eval/base")
    policy, adapter = c.model, None
    seed_regions = C.coerce(c.regions.get("seed", 0), int, "run config, section regions: seed")
    seed_generate = C.coerce(c.generate.get("seed", 0), int, "run config, section generate: seed")
    for k in range(1, c.rounds + 1):
        d = run / f"round-{k}"
        if k == 1 or c.fresh_regions:
            regions = d / "regions.jsonl"
            values = {**c.regions, "out": str(regions), "seed": seed_regions + k - 1}
            steps.append(step(f"round-{k}/regions", "regions", "regions", values))
        method = c.method[0] if len(c.method) == 1 else c.method[k - 1]
        # keep training round k-1's adapter on the base; the base stays the reference
        if c.reference == "base":
            train_model, merge_base = c.model, c.model
        else:  # a new adapter on round k-1's model, which is then the reference
            train_model, merge_base, adapter = policy, policy, None
        if method == "grpo":
            fields = dict(c.grpo)
            if fields.get("regions") == "round":
                fields["regions"] = str(regions)
            if adapter is not None:
                raise UserError(
                    "reference: base continues round k's adapter, which `spr grpo` does not: use previous"
                )
            values = {**fields, "model": train_model, "out": str(d / "adapter")}
            steps.append(step(f"round-{k}/grpo", "grpo", "grpo", values))
        else:
            steps += dpo_steps(c, step, k, d, regions, policy, train_model, adapter, seed_generate)
        if c.train.get("method") == "full" and method == "dpo":  # the trained directory is the whole model
            policy, adapter = str(d / "adapter"), None
        else:
            values = {**c.merge, "adapter": str(d / "adapter"), "base": merge_base, "out": str(d / "model")}
            steps.append(step(f"round-{k}/merge", "merge", "merge", values))
            policy, adapter = str(d / "model"), str(d / "adapter")
        steps += evaluations(policy, d / "eval", f"round-{k}")
    return steps


def dpo_steps(
    c: RunConfig, step, k: int, d: Path, regions: Path, policy: str, train_model: str, adapter, seed: int
):
    """SPR's round: candidates of the policy, scores, pairs, DPO (``step`` makes a Step, see :func:`plan`)."""
    files = {n: str(d / f"{n}.jsonl") for n in ("candidates", "scores", "pairs", "dpo")}
    inputs = {"regions": str(regions), "candidates": files["candidates"]}
    generate = {
        **c.generate,
        "model": policy,
        "regions": str(regions),
        "out": files["candidates"],
        "seed": seed + k - 1,
    }
    score = {**c.score, **inputs, "out": files["scores"]}
    pairs = {**c.pairs, **inputs, "scores": files["scores"], "out": files["pairs"], "dpo_out": files["dpo"]}
    train = {
        **c.train,
        "model": train_model,
        "data": files["dpo"],
        "out": str(d / "adapter"),
        "adapter": adapter,
    }
    return [
        step(f"round-{k}/generate", "generate", "generate", generate),
        step(f"round-{k}/score", "score", "score", score),
        step(f"round-{k}/pairs", "pairs", "pairs", pairs),
        step(f"round-{k}/train", "train", "train", train),
    ]


def command_line(step: Step, config_file: Path, launchers: dict) -> list[str]:
    """The shell command of ``step``: its launcher, then `spr <stage> --config <file>`."""
    spec = dict(launchers.get(step.section) or {})
    kind = spec.get("kind", "python")
    n = str(spec.get("num_processes", 1))
    if kind == "accelerate":
        prefix = ["accelerate", "launch"]
        if spec.get("config_file"):
            prefix += ["--config_file", str(spec["config_file"])]
        prefix += ["--num_processes", n, "-m", "spr.cli"]
    elif kind == "torchrun":
        prefix = ["torchrun", "--standalone", "--nproc_per_node", n, "-m", "spr.cli"]
    else:
        prefix = ["python", "-m", "spr.cli"]
    return [*prefix, *step.stage.split(), "--config", str(config_file)]


def config_file(run: Path, step: Step) -> Path:
    return run / (step.name.replace(" ", "-") + ".yaml")


# ---------------------------------------------------------------------------------------------- running it


class RunState:
    """``run_state.json``: which steps are done, and how long each took."""

    def __init__(self, run: Path):
        self.path = run / "run_state.json"
        self.done: dict[str, float] = json.loads(self.path.read_text())["done"] if self.path.exists() else {}

    def mark(self, step: str, seconds: float) -> None:
        self.done[step] = round(seconds, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"done": self.done}, indent=1))
        os.replace(tmp, self.path)


def execute(step: Step, file: Path, launchers: dict) -> None:
    """In this process for the python launcher (no second start-up of torch), else as a subprocess."""
    spec = launchers.get(step.section) or {}
    if spec.get("kind", "python") == "python":
        run_stage(step.stage, step.config)
        return
    cmd = command_line(step, file, launchers)
    cmd[0] = str(Path(sys.executable).with_name(cmd[0])) if cmd[0] != "python" else sys.executable
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise UserError(f"step {step.name} failed (exit {result.returncode}): {shlex.join(cmd)}")


def run_pipeline(config: RunConfig, log=print, prepare=None) -> dict | None:
    """Run (or resume) the plan of ``config``. ``prepare(run_dir, steps)``, when given, runs once the run
    directory is locked and before any step (`spr toy ablate` copies what an arm shares with another)."""
    config = apply_overrides(config)
    run = Path(config.out).resolve()
    steps = plan(config)
    if config.dry_run:  # held to the run's lock and settings like a run (never --overwrite: it deletes)
        with StageOutput(run, "run", C.output_settings(config), overwrite=False, directory=True):
            for step in steps:
                file = config_file(run, step)
                C.write_yaml(step.config, file)
                log(shlex.join(command_line(step, file, config.launcher)))
        return None
    with StageOutput(run, "run", C.output_settings(config), config.overwrite, directory=True):
        C.write_yaml(config, run / "run.yaml")
        for step in steps:
            C.write_yaml(step.config, config_file(run, step))
        if prepare is not None:
            prepare(run, steps)
        state = RunState(run)
        started = time.time()
        for i, step in enumerate(steps, start=1):
            label = f"[{i}/{len(steps)}] {step.name}"
            if step.name in state.done:
                log(f"{label}: done earlier, skipped")
                continue
            log(f"\n{label}")
            t = time.time()
            execute(step, config_file(run, step), config.launcher)
            state.mark(step.name, time.time() - t)
        results = write_results(config, run, log)
        log(f"\nrun finished in {time.time() - started:.0f} s: {run / 'results.md'}")
        return results


# -------------------------------------------------------------------------------------------------- results


# in metrics.json, not the results table
LEFT_OUT = (
    "center_acc",
    "image_fail",
    "_small",
    "_medium",
    "_large",
)


def model_metrics(task_dirs: dict[str, Path]) -> dict:
    """One flat row of a model's metrics: REC's unprefixed (acc@0.5 ...), other tasks' as <task>_<metric>."""
    from .evaluate import get_task

    row: dict = {}
    for task, d in task_dirs.items():
        metrics = json.loads((d / "metrics.json").read_text())
        for m in get_task(task).metrics:
            if not m.name.endswith(LEFT_OUT) and isinstance(metrics.get(m.name), int | float):
                row[m.name if task == "rec" else f"{task}_{m.name}"] = metrics[m.name]
    return row


def eval_summary(task_dirs: dict[str, Path]) -> dict:
    """What the numbers are on: the samples per task and the splits of the data."""
    out: dict = {}
    splits: set[str] = set()
    for task, d in task_dirs.items():
        metrics = json.loads((d / "metrics.json").read_text())
        out[f"{task}_n"] = metrics.get("n")
        splits |= {s for s, v in (metrics.get("splits") or {}).items() if s != "all" and not v.get("missing")}
    out["split"] = ", ".join(sorted(splits)) or "all"
    return out


def write_results(config: RunConfig, run: Path, log=print) -> dict:
    from .table import markdown_table

    base_dirs = {t: run / "eval" / "base" / t for t in config.eval}
    models = {"base": model_metrics(base_dirs)}
    for k in range(1, config.rounds + 1):
        models[f"round {k}"] = model_metrics({t: run / f"round-{k}" / "eval" / t for t in config.eval})
    first = next(iter(models.values()), {})
    evaluated = {**eval_summary(base_dirs), "note": config.title}
    results = {
        "eval": evaluated,
        "models": models,
        "pairs": [_summary(run / f"round-{k}" / "pairs.summary.json") for k in range(1, config.rounds + 1)],
    }
    (run / "results.json").write_text(json.dumps(results, indent=1))
    names = list(models)
    rows = [
        [k, *(models[n].get(k) for n in names), _delta(models[names[-1]].get(k), first.get(k))] for k in first
    ]
    table = markdown_table(["metric", *names, f"{names[-1]} - base"], rows)
    text = f"# {config.title}\n\n{_eval_note(evaluated)}\n\n{table}\n"
    (run / "results.md").write_text(text)
    log("\n" + text)
    # the report shows a round's scored candidates and pairs: the first round that made them (an online-RL
    # round has none; a run of online RL alone gets no report, its results are results.md)
    scored = [k for k in range(1, config.rounds + 1) if (run / f"round-{k}" / "scores.jsonl").exists()]
    if config.report and scored:
        from .report.command import ReportConfig

        run_stage("report", ReportConfig(run=str(run / f"round-{scored[0]}"), results=str(run / "results.json"),
                                         out=str(run / "report.html"), title=config.title))  # fmt: skip
    elif config.report:
        log("no report.html: no round scored candidates (online RL rounds make no pairs); see results.md")
    return results


def _summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _delta(a, b):
    return a - b if isinstance(a, int | float) and isinstance(b, int | float) else None


def _eval_note(evaluated: dict) -> str:
    parts = [f"{k[:-2]}: {v} samples" for k, v in evaluated.items() if k.endswith("_n") and v is not None]
    return (f"Every model evaluated on the same data, split {evaluated['split']} (" + "; ".join(parts)
            + "); accuracy at IoU t counts IoU >= t.")  # fmt: skip


def run(config: RunConfig) -> int:
    run_pipeline(config)
    return 0
