"""`spr demo`: the whole SPR method, offline, in the shapes world.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

ASSETS = Path(__file__).parent / "assets"


@dataclass
class DemoConfig:
    seed: int = 0
    preset: str = "easy"
    """World difficulty (spr toy world --preset); must be the world the base model was trained on."""
    train_scenes: int = 160
    """World scenes the SPR round draws its regions from (one region per scene)."""
    test_scenes: int = 150
    """Held-out scenes for the evaluation; never used for training or selection."""
    val_scenes: int = 50
    samples: int = 6
    """Candidates per region and prompt."""
    prompts: str = "region_box,crop,hints"
    temperature: float = 1.0
    max_new_tokens: int = 200
    beta: float = 0.1
    learning_rate: float = 3e-4
    """Chosen on the world's validation scenes (docs/toy-world.md): at 1e-4 LoRA barely moves the tiny base in
    one epoch; at 1e-3 DPO made the shipped base's boxes and descriptions worse."""
    loss_type: tuple[str, ...] = ("sigmoid", "sft")
    """TRL loss types: DPO plus an SFT term on the chosen answer (as in RPO). Pure DPO (``sigmoid``) at a rate
    that moves the model lowers the likelihood of chosen and rejected alike, and the descriptions degrade."""
    epochs: int = 1
    lora_r: int = 16
    batch_size: int = 4
    """Pairs per optimizer step."""
    rec_limit: int = 1000
    """Test referring expressions evaluated per model (the first N of the test split)."""
    description_limit: int = 150


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
        settings = json.loads(json.dumps(asdict(self.config)))  # tuples as the lists they are read back as
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
        if output is not None and _count_lines(output) == 0:
            raise UserError(f"stage {name} wrote no records to {output}; see its summary above")
        self.mark(name, time.time() - t)


def _spr(*argv) -> None:
    from ..cli import main

    argv = [str(a) for a in argv]
    code = main(argv)
    if code != 0:
        raise UserError(
            f"stage `spr {' '.join(argv[:2])}` failed (exit {code}); fix the cause and re-run the demo to resume"
        )


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _cache_dir() -> Path:
    return Path(os.environ.get("SPR_CACHE", Path.home() / ".cache" / "spr"))


def _shipped_or_cached(name: str, given, train_argv: list, log) -> Path:
    """``given``, else the model shipped in assets/<name>, else one trained by its recipe and cached."""
    if given:
        return Path(given).resolve()
    shipped = ASSETS / name
    if (shipped / "model.safetensors").exists():
        return shipped
    cached = _cache_dir() / f"toy-{name}"
    if not (cached / "model.safetensors").exists():
        log(f"no shipped {name} model: training one with its recipe into {cached}")
        _spr("toy", *train_argv, "--out", cached)
    return cached


def base_model_dir(log=print, given: str | Path | None = None, preset: str = "default") -> Path:
    """The base model: given, shipped, or trained by a short run of the recipe (minutes; far weaker)."""
    return _shipped_or_cached(
        "base",
        given,
        ["train-base", "--preset", preset, "--steps", 600, "--vision-steps", 200, "--threads", 1],
        log,
    )


def clip_model_dir(log=print, given: str | Path | None = None) -> Path:
    """The tiny CLIP of the world: given, shipped, or trained by its recipe (about a minute)."""
    return _shipped_or_cached("clip", given, ["train-clip", "--threads", 1], log)


def world_command(out: Path, seed: int, c: DemoConfig, train: int, val: int, test: int) -> None:
    _spr("toy", "world", "--out", out, "--seed", seed, "--preset", c.preset, "--train", train, "--val", val,
         "--test", test, "--quiet")  # fmt: skip


def round_stages(c: DemoConfig, seed: int, world: Path, d: Path, models: dict) -> list[tuple]:
    """The stages of one SPR round up to its pairs, as (name, function, records it must write): regions of the
    world's train split -> candidates of the base -> scores (tiny CLIP + localization) -> pairs and dpo.jsonl,
    all in directory ``d``."""
    regions, candidates, scores = d / "regions.jsonl", d / "candidates.jsonl", d / "scores.jsonl"
    return [
        ("regions", lambda: _spr("regions", "--annotations", world / "train" / "annotations.json",
                                 "--images", world / "train" / "images", "--out", regions, "--seed", seed), regions),
        ("generate", lambda: _spr("generate", "--model", models["base"], "--regions", regions, "--out", candidates,
                                  "--samples", c.samples, "--temperature", c.temperature,
                                  "--max-new-tokens", c.max_new_tokens, "--prompts", c.prompts, "--seed", seed,
                                  "--batch-size", 8), candidates),
        ("score", lambda: _spr("score", "--regions", regions, "--candidates", candidates, "--out", scores,
                               "--semantic", "clip", "--clip-model", models["clip"]), scores),
        ("pairs", lambda: pairs_command(d, scores, d / "pairs.jsonl"), d / "dpo.jsonl"),
    ]  # fmt: skip


def pairs_command(d: Path, scores: Path, out: Path) -> None:
    _spr("pairs", "--regions", d / "regions.jsonl", "--candidates", d / "candidates.jsonl", "--scores", scores,
         "--out", out)  # fmt: skip


def train_command(
    c: DemoConfig, base: Path, data: Path, out: Path, seed: int, loss_type=None, *extra
) -> None:
    """`spr train` with the demo's LoRA settings and ``loss_type`` (default: the demo's); ``extra``: more
    `spr train` options."""
    _spr("train", "--model", base, "--data", data, "--out", out, "--beta", c.beta,
         "--loss-type", *(loss_type or c.loss_type),
         "--learning-rate", c.learning_rate, "--num-train-epochs", c.epochs, "--lora-r", c.lora_r,
         "--seed", seed, "--per-device-train-batch-size", c.batch_size, *extra)  # fmt: skip


def evaluate_command(c: DemoConfig, model: Path, rec_data: Path, regions: Path, out: Path) -> None:
    """REC on the test expressions and grounded descriptions of the test regions, into out/rec and
    out/description."""
    _spr("eval", "rec", "--model", model, "--data", rec_data, "--out", out / "rec", "--limit", c.rec_limit,
         "--batch-size", 16)  # fmt: skip
    _spr("eval", "description", "--model", model, "--data", regions, "--out", out / "description",
         "--limit", c.description_limit, "--max-new-tokens", c.max_new_tokens)  # fmt: skip


def test_data(c: DemoConfig, world: Path, base: Path, d: Path, split: str = "test") -> tuple[Path, Path]:
    """(referring expressions of the kinds the base was trained on, regions) of the world's ``split``, written
    into ``d`` as <split>_rec.jsonl and <split>_regions.jsonl."""
    regions = d / f"{split}_regions.jsonl"
    _spr("regions", "--annotations", world / split / "annotations.json", "--images", world / split / "images",
         "--out", regions, "--seed", c.seed)  # fmt: skip
    rec = test_expressions(world / split / "rec.jsonl", trained_kinds(base), d / f"{split}_rec.jsonl")
    return rec, regions


def run_demo(
    out: str | Path, config: DemoConfig, overwrite: bool = False, base_model=None, clip_model=None, log=print
) -> dict:
    run = DemoRun(out, config, overwrite)
    c = config
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
    stage(
        "merge",
        lambda: _spr(
            "merge", "--adapter", run.path("dpo"), "--base", models["base"], "--out", run.path("spr_model")
        ),
    )

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
    results["settings"] = asdict(run.config)
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
    _spr("report", "--run", run.dir, "--title", "SPR demo (shapes world)")
    log("\n" + table)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "Run the whole SPR method offline in the synthetic shapes world and show what it changed."


def add_common_arguments(p, d: DemoConfig) -> None:
    """The options `spr demo` and `spr toy ablate` share; ``common_settings`` reads them back."""
    p.add_argument(
        "--train-scenes", type=int, default=d.train_scenes, help="scenes the SPR regions come from"
    )
    p.add_argument("--test-scenes", type=int, default=d.test_scenes, help="held-out evaluation scenes")
    p.add_argument("--samples", type=int, default=d.samples, help="candidates per region and prompt")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="LoRA learning rate")
    p.add_argument("--overwrite", action="store_true", help="discard what --out holds and start afresh")
    p.add_argument("--base-model", help="base model directory (default: the shipped shapes-world base)")
    p.add_argument(
        "--clip-model", help="CLIP directory for the semantic score (default: the shipped tiny CLIP)"
    )


def common_settings(args) -> dict:
    keys = ("train_scenes", "test_scenes", "samples", "temperature", "learning_rate")
    return {k: getattr(args, k) for k in keys}


def add_arguments(p) -> None:
    d = DemoConfig()
    p.add_argument(
        "--out", default="runs/demo", help="run directory (re-running with the same settings resumes)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the world and of the SPR round")
    p.add_argument("--rec-limit", type=int, default=d.rec_limit, help="test referring expressions per model")
    add_common_arguments(p, d)


def run(args) -> int:
    config = DemoConfig(seed=args.seed, rec_limit=args.rec_limit, **common_settings(args))
    run_demo(
        args.out, config, overwrite=args.overwrite, base_model=args.base_model, clip_model=args.clip_model
    )
    return 0
