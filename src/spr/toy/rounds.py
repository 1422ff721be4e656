"""The stages of one SPR round in the shapes world, called one by one: what `spr toy ablate` builds its arms from.
(`spr demo` itself is `spr run` with a shipped config: :mod:`spr.toy.demo`.)

Formerly the demo:

shapes world -> base model (shipped, else trained and cached) -> regions -> generate -> score (tiny CLIP +
localization) -> refine + pairs -> DPO (LoRA) -> merge -> evaluation of base and SPR model on held-out test
scenes -> report.html, results.md, results.json.

Every stage is the same `spr <stage>` command a user runs on real data, called with files in the run directory,
so the demo is also the reference for wiring the stages together. The run directory remembers its settings
(demo.json): a re-run with the same settings resumes where it stopped; other settings are refused instead of
mixing two runs in one directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import opt, output_settings
from ..data.jsonl import count_records
from ..errors import UserError
from ..stages import run_stage

ASSETS = Path(__file__).parent / "assets"


@dataclass
class DemoConfig:
    """`spr demo`: one SPR round in the shapes world, evaluated against the base on held-out test scenes."""

    out: str = opt("runs/demo", "run directory (re-running with the same settings resumes)", output=False)
    seed: int = opt(0, "seed of the world and of the SPR round")
    preset: str = opt("easy", "world difficulty (spr toy world --preset); must be the world the base was trained on")
    train_scenes: int = opt(160, "world scenes the SPR round draws its regions from (one region per scene)")
    test_scenes: int = opt(150, "held-out scenes for the evaluation; never used for training or selection")
    val_scenes: int = opt(50, "validation scenes (for choosing settings; the demo itself does not read them)")
    samples: int = opt(6, "candidates per region and prompt")
    prompts: str = opt("region_box,crop,hints", "the description prompts (spr generate --prompts)")
    temperature: float = opt(1.0, "sampling temperature")
    max_new_tokens: int = opt(200, "longest description, in tokens")
    beta: float = opt(0.1, "DPO beta")
    learning_rate: float = opt(
        3e-4, "LoRA learning rate (chosen on the world's validation scenes: docs/toy-world.md)"
    )
    loss_type: list[str] = opt(
        ["sigmoid", "sft"], "TRL loss types: DPO plus an SFT term on the chosen answer (as in RPO)"
    )
    epochs: int = opt(1, "epochs over the pairs")
    lora_r: int = opt(16, "LoRA rank")
    batch_size: int = opt(4, "pairs per optimizer step")
    rec_limit: int = opt(1000, "test referring expressions evaluated per model (the first N of the test split)")
    description_limit: int = opt(150, "test regions whose grounded descriptions are evaluated per model")
    base_model: str | None = opt(None, "base model directory", default_text="the shipped shapes-world base", output=False)
    clip_model: str | None = opt(None, "CLIP directory for the semantic score", default_text="the shipped tiny CLIP", output=False)
    overwrite: bool = opt(False, "discard what --out holds and start afresh", output=False)


STAGES = ("world", "regions", "generate", "score", "pairs", "train", "merge", "eval", "report")


class DemoRun:
    """The run directory: its settings, which stages are done, and where each file lives."""

    STATE = "demo.json"
    KIND = "demo"

    def __init__(self, out: str | Path, config: DemoConfig, overwrite: bool = False):
        self.dir = Path(out).resolve()
        self.config = config
        self.state_path = self.dir / self.STATE
        self._claim(overwrite)

    def _claim(self, overwrite: bool) -> None:
        settings = output_settings(self.config)
        if self.dir.exists() and any(self.dir.iterdir()):
            if not self.state_path.exists():
                if not overwrite:
                    raise UserError(
                        f"{self.dir} is not empty and holds no {self.KIND} run; choose another --out or pass --overwrite"
                    )
            else:
                try:
                    state = json.loads(self.state_path.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise UserError(
                        f"{self.state_path}: unreadable ({e}); pass --overwrite to start this run afresh"
                    ) from None
                if state.get("settings") != settings and not overwrite:
                    diff = [k for k in settings if state.get("settings", {}).get(k) != settings[k]]
                    raise UserError(
                        f"{self.dir} holds a {self.KIND} run with other settings ({', '.join(diff)}); use another --out, the same settings to resume, or --overwrite"
                    )
            if overwrite:
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.state_path.exists():
            self._save({"settings": settings, "done": {}})

    def _load(self) -> dict:
        return json.loads(self.state_path.read_text())

    def _save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def done(self, stage: str) -> bool:
        return stage in self._load()["done"]

    def mark(self, stage: str, seconds: float) -> None:
        state = self._load()
        state["done"][stage] = round(seconds, 1)
        self._save(state)

    def path(self, *parts) -> Path:
        return self.dir.joinpath(*map(str, parts))

    def stage(self, name: str, fn, output: Path | None = None, label: str = "", log=print) -> None:
        """Run ``fn`` unless stage ``name`` is done; a stage that should write records and wrote none fails."""
        if self.done(name):
            log(f"{label}{name}: done earlier, skipped")
            return
        log(f"\n{label}{name}")
        t = time.time()
        fn()
        if output is not None and count_records(output) == 0:
            raise UserError(f"stage {name} wrote no records to {output}; see its summary above")
        self.mark(name, time.time() - t)


def _cache_dir() -> Path:
    return Path(os.environ.get("SPR_CACHE", Path.home() / ".cache" / "spr"))


def _shipped_or_cached(name: str, given, recipe: str, recipe_config, log) -> Path:
    """``given``, else the model shipped in assets/<name>, else one trained by its recipe and cached."""
    if given:
        return Path(given).resolve()
    shipped = ASSETS / name
    if (shipped / "model.safetensors").exists():
        return shipped
    cached = _cache_dir() / f"toy-{name}"
    if not (cached / "model.safetensors").exists():
        log(f"no shipped {name} model: training one with its recipe into {cached}")
        run_stage(recipe, replace(recipe_config, out=str(cached)))
    return cached


def base_model_dir(log=print, given: str | Path | None = None, preset: str = "default") -> Path:
    """The base model: given, shipped, or trained by a short run of the recipe (minutes; far weaker)."""
    from .base_recipe import TrainBaseConfig

    recipe = TrainBaseConfig(preset=preset, steps=600, vision_steps=200, threads=1)
    return _shipped_or_cached("base", given, "toy train-base", recipe, log)


def clip_model_dir(log=print, given: str | Path | None = None) -> Path:
    """The tiny CLIP of the world: given, shipped, or trained by its recipe (about a minute)."""
    from .clip_recipe import TrainClipConfig

    return _shipped_or_cached("clip", given, "toy train-clip", TrainClipConfig(threads=1), log)


def world_command(out: Path, seed: int, c: DemoConfig, train: int, val: int, test: int) -> None:
    from .world_cli import WorldCommandConfig

    run_stage("toy world", WorldCommandConfig(out=str(out), seed=seed, preset=c.preset, train=train, val=val,
                                              test=test, quiet=True))  # fmt: skip


def round_stages(c: DemoConfig, seed: int, world: Path, d: Path, models: dict) -> list[tuple]:
    """The stages of one SPR round up to its pairs, as (name, function, records it must write): regions of the
    world's train split -> candidates of the base -> scores (tiny CLIP + localization) -> pairs and dpo.jsonl,
    all in directory ``d``."""
    from ..generate import GenerateConfig
    from ..regions import RegionConfig
    from ..scoring.combine import ScoreConfig

    regions, candidates, scores = d / "regions.jsonl", d / "candidates.jsonl", d / "scores.jsonl"
    return [
        ("regions", lambda: run_stage("regions", RegionConfig(
            annotations=str(world / "train" / "annotations.json"), images=str(world / "train" / "images"),
            out=str(regions), seed=seed)), regions),
        ("generate", lambda: run_stage("generate", GenerateConfig(
            model=str(models["base"]), regions=str(regions), out=str(candidates), samples=c.samples,
            temperature=c.temperature, max_new_tokens=c.max_new_tokens, prompts=c.prompts, seed=seed,
            batch_size=8)), candidates),
        ("score", lambda: run_stage("score", ScoreConfig(
            regions=str(regions), candidates=str(candidates), out=str(scores), semantic="clip",
            clip_model=str(models["clip"]))), scores),
        ("pairs", lambda: pairs_command(d, scores, d / "pairs.jsonl"), d / "dpo.jsonl"),
    ]  # fmt: skip


def pairs_command(d: Path, scores: Path, out: Path) -> None:
    from ..pairs import PairConfig

    run_stage("pairs", PairConfig(regions=str(d / "regions.jsonl"), candidates=str(d / "candidates.jsonl"),
                                  scores=str(scores), out=str(out)))  # fmt: skip


def train_command(c: DemoConfig, base: Path, data: Path, out: Path, seed: int, loss_type=None, **overrides) -> None:
    """`spr train` with the demo's LoRA settings and ``loss_type`` (default: the demo's); ``overrides``: more
    TrainConfig fields."""
    from ..train import TrainConfig

    run_stage("train", TrainConfig(
        model=str(base), data=str(data), out=str(out), beta=c.beta, loss_type=list(loss_type or c.loss_type),
        learning_rate=c.learning_rate, num_train_epochs=c.epochs, lora_r=c.lora_r, seed=seed,
        per_device_train_batch_size=c.batch_size, **overrides))  # fmt: skip


def merge_command(adapter: Path, base: Path, out: Path) -> None:
    from ..merge import MergeConfig

    run_stage("merge", MergeConfig(adapter=str(adapter), base=str(base), out=str(out)))


def evaluate_command(c: DemoConfig, model: Path, rec_data: Path, regions: Path, out: Path) -> None:
    """REC on the test expressions and grounded descriptions of the test regions, into out/rec and
    out/description."""
    from ..evaluate.description import DescriptionConfig
    from ..evaluate.rec import RecConfig

    run_stage("eval rec", RecConfig(model=str(model), data=str(rec_data), out=str(out / "rec"),
                                    limit=c.rec_limit, batch_size=16))  # fmt: skip
    run_stage("eval description", DescriptionConfig(
        model=str(model), data=str(regions), out=str(out / "description"), limit=c.description_limit,
        max_new_tokens=c.max_new_tokens))  # fmt: skip


def test_data(c: DemoConfig, world: Path, base: Path, d: Path, split: str = "test") -> tuple[Path, Path]:
    """(referring expressions of the kinds the base was trained on, regions) of the world's ``split``, written
    into ``d`` as <split>_rec.jsonl and <split>_regions.jsonl."""
    from ..regions import RegionConfig

    regions = d / f"{split}_regions.jsonl"
    run_stage("regions", RegionConfig(annotations=str(world / split / "annotations.json"),
                                      images=str(world / split / "images"), out=str(regions), seed=c.seed))  # fmt: skip
    rec = test_expressions(world / split / "rec.jsonl", trained_kinds(base), d / f"{split}_rec.jsonl")
    return rec, regions


def run_demo(config: DemoConfig, log=print) -> dict:
    run = DemoRun(config.out, config, config.overwrite)
    c = config
    base_model, clip_model = c.base_model, c.clip_model
    world = run.path("world")
    t_all = time.time()

    def stage(name: str, fn, output: Path | None = None) -> None:
        run.stage(name, fn, output, f"[{STAGES.index(name) + 1}/{len(STAGES)}] ", log)

    stage("world", lambda: world_command(world, c.seed, c, c.train_scenes, c.val_scenes, c.test_scenes))
    # Model locations are looked up on every run (they are not outputs of the run directory).
    models = {"base": base_model_dir(log, base_model, c.preset), "clip": clip_model_dir(log, clip_model)}
    log(f"base model: {models['base']}\ntiny CLIP: {models['clip']}")
    for name, fn, output in round_stages(c, c.seed, world, run.dir, models):
        stage(name, fn, output)
    stage("train", lambda: train_command(c, models["base"], run.path("dpo.jsonl"), run.path("dpo"), c.seed))
    stage("merge", lambda: merge_command(run.path("dpo"), models["base"], run.path("spr_model")))

    def evaluate() -> None:
        rec_data, regions = test_data(c, world, models["base"], run.dir)
        for name, model in (("base", models["base"]), ("spr", run.path("spr_model"))):
            evaluate_command(c, model, rec_data, regions, run.path("eval", name))

    stage("eval", evaluate)
    stage("report", lambda: write_results(run, models["base"], log))
    results = json.loads(run.path("results.json").read_text())
    log(
        f"\ndemo finished in {time.time() - t_all:.0f} s: {run.path('report.html')}, {run.path('results.md')}"
    )
    return results


def trained_kinds(base: Path) -> list[str]:
    """The referring-expression kinds the base was trained on (from its recipe.json); empty for all."""
    recipe = Path(base) / "recipe.json"
    if not recipe.exists():
        return []
    return list(json.loads(recipe.read_text()).get("expression_kinds") or [])


def test_expressions(rec_jsonl: Path, kinds: list[str], out: Path) -> Path:
    """The test split's referring expressions of the given kinds (all when empty), with absolute image paths,
    written to ``out``. A base trained on label expressions only is tested on those: relations would test what
    it never learned."""
    rows = []
    for line in rec_jsonl.read_text().splitlines():
        row = json.loads(line)
        if not kinds or row.get("kind") in kinds:
            row["image"] = str((rec_jsonl.parent / row["image"]).resolve())
            rows.append(json.dumps(row))
    out.write_text("".join(r + "\n" for r in rows))
    return out


# ------------------------------------------------------------------------------------------------- results

REC_KEYS = ("acc@0.5", "acc@0.6", "acc@0.7", "acc@0.8", "acc@0.9", "mean_iou")


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def model_metrics(eval_dir: Path) -> dict:
    """The REC and description metrics that ``evaluate_command`` wrote into ``eval_dir``, in one flat dict."""
    rec = _metrics(eval_dir / "rec")
    desc = _metrics(eval_dir / "description")
    out = {k: rec[k] for k in REC_KEYS}
    out["rec_parse_fail"] = rec.get("parse_fail")
    out["rec_n"] = rec.get("n")
    for k in ("f1@0.5", "f1@0.75", "precision@0.5", "recall@0.5", "semantic"):
        if k in desc:
            out[f"description_{k}"] = desc[k]
    return out


def collect_results(run: DemoRun, base: Path) -> dict:
    results: dict = {name: model_metrics(run.path("eval", name)) for name in ("base", "spr")}
    results["rec_expression_kinds"] = trained_kinds(base) or "all"
    summary = run.path("pairs.summary.json")
    results["pairs"] = json.loads(summary.read_text()) if summary.exists() else {}
    results["settings"] = output_settings(run.config)
    return results


def results_markdown(results: dict) -> str:
    from ..table import markdown_table

    keys = [k for k in results["base"] if k in results["spr"] and isinstance(results["base"][k], int | float)]
    rows = [[k, results["base"][k], results["spr"][k], results["spr"][k] - results["base"][k]] for k in keys]
    n = results["base"].get("rec_n")
    kinds = results.get("rec_expression_kinds", "all")
    kinds = kinds if isinstance(kinds, str) else ", ".join(kinds)
    head = (
        f"Shapes world, held-out test scenes ({n} referring expressions of kind: {kinds}); "
        "SPR = one round of the method.\n\n"
    )
    return head + markdown_table(["metric", "base", "SPR", "delta"], rows) + "\n"


def write_results(run: DemoRun, base: Path, log=print) -> None:
    results = collect_results(run, base)
    run.path("results.json").write_text(json.dumps(results, indent=1))
    table = results_markdown(results)
    run.path("results.md").write_text(table)
    report_command(run.dir, "SPR demo (shapes world)")
    log("\n" + table)


def report_command(run_dir: Path, title: str) -> None:
    from ..report.command import ReportConfig

    run_stage("report", ReportConfig(run=str(run_dir), title=title))
