"""The package's shape: layers import downwards only and without cycles; every command's flags, help and YAML
come from its config dataclass; a model family and an evaluation task are each added through their registry."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from spr import config as C
from spr.cli import build_parser, main
from spr.stages import COMMANDS, resolve

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower layers never import higher ones (docs/architecture.md).
LAYERS = [
    ("spr.errors", "spr.config", "spr.registry", "spr.table", "spr.boxes", "spr.clock"),
    ("spr.formats",),
    ("spr.data", "spr.prompts", "spr.options"),
    ("spr.models",),
    ("spr.distributed", "spr.regions", "spr.sampling", "spr.generate", "spr.scoring", "spr.refine", "spr.pairs",
     "spr.training", "spr.train", "spr.merge", "spr.evaluate", "spr.report", "spr.rewards", "spr.grpo"),
    ("spr.stages",),
    ("spr.pipeline", "spr.toy"),
    ("spr.cli",),
]  # fmt: skip


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "spr").rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = f
    return out


def _imports(modules: dict[str, Path]):
    """(importer, imported, at module level, names imported) for every import of one spr module by another."""
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [a.name for a in node.names]
                targets = [(f"{target}.{n}", []) for n in names if f"{target}.{n}" in modules]
                targets.append((target, [n for n in names if f"{target}.{n}" not in modules]))
            else:
                continue
            for target, names in targets:
                if target in modules and target not in (name, "spr"):
                    yield name, target, id(node) in top, names


def test_layers_import_downwards_only_and_no_module_reaches_into_another_s_privates():
    modules = _modules()
    upward, private = [], []
    for importer, imported, _, names in _imports(modules):
        if layer_of(imported) > layer_of(importer):
            upward.append(f"{importer} -> {imported}")
        if imported.split(".")[:2] != importer.split(".")[:2]:
            private += [f"{importer} imports {imported}.{n}" for n in names if n.startswith("_")]
    assert not upward, upward
    assert not private, private


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for importer, imported, at_top, _ in _imports(modules):
        if at_top and not imported == importer.rsplit(".", 1)[0]:  # a package's own __init__ is loaded first
            graph.setdefault(importer, set()).add(imported)
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m) :] + [m]))
        if m in seen:
            return
        stack.append(m)
        for n in graph.get(m, ()):
            visit(n)
        stack.pop()
        seen.add(m)

    for m in modules:
        visit(m)


def test_no_import_circle_even_through_function_level_imports():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for importer, imported, _, _ in _imports(modules):
        if imported != importer.rsplit(".", 1)[0]:
            graph.setdefault(importer, set()).add(imported)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for n in graph.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    reachable = {m: reach(m) for m in modules}
    circles = {frozenset(n for n in reachable[m] if m in reachable[n]) for m in modules if m in reachable[m]}
    assert [set(c) for c in circles] == []


# ----------------------------------------------------------------------------------------------- commands


def leaf_commands():
    """("spr eval rec", command object) for every runnable command, groups expanded."""
    out = []

    def walk(prefix, target):
        obj = resolve(target)
        if hasattr(obj, "SUBCOMMANDS"):
            for name, child in obj.SUBCOMMANDS.items():
                walk(f"{prefix} {name}", child)
        else:
            out.append((prefix, obj))

    for name, target in COMMANDS.items():
        walk(name, target)
    return out


LEAVES = leaf_commands()


def _subparser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser:
    for part in path.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[part]
    return parser


@pytest.mark.parametrize("path, command", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_option_has_help_and_shows_its_default(path, command):
    parser = _subparser(build_parser(), path)
    assert parser.description, f"spr {path} has no description"
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"spr {path}: {action.option_strings} has no help"
        if action.dest != "config":
            assert "(default: " in action.help or "(required)" in action.help, f"spr {path}: {action.dest}"
    for f in C.cli_fields(command.Config):
        flag = f.name.upper() if f.metadata.get("positional") else C.flag_name(C.option_name(f))
        assert flag in text, f"spr {path} --help does not list {flag}"


@pytest.mark.parametrize("path, command", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_config_builds_from_defaults_and_round_trips_through_yaml(path, command, tmp_path):
    cls = command.Config
    required = {
        C.option_name(f): f"value-{f.name}" for f in dataclasses.fields(cls) if f.metadata.get("required")
    }
    config = C.build(cls, dict(required))
    data = C.to_dict(config)
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(data))
    again = C.from_args(cls, argparse.Namespace(config=str(file)))
    assert C.to_dict(again) == data
    assert cls().__class__ is cls  # library use: every field has a default (required ones are None)


# Names whose meaning is the stage's own (each stage's input or output file, its seed, its batch ...): declared
# by each stage with its own help.
PER_STAGE = {
    "adapter",
    "batch_size",
    "candidates",
    "data",
    "images",
    "limit",
    "max_new_tokens",
    "method",
    "model",
    "out",
    "overwrite",
    "pairs",
    "prompt",
    "regions",
    "scores",
    "seed",
    "set",
    "steps",
    "title",
    "train",
    "world",
    "eval_scenes",
    "family",
}  # family: `spr tiny-model` builds one (required), the others load one
# One name, two options: each stage's own meaning (the names are TRL's or the paper's), so each declares it.
SAME_NAME_OTHER_OPTION = {
    "beta": "DPO's beta (train) vs the KL coefficient against the base (grpo)",
    "loss_type": "DPO losses (train) vs GRPO losses (grpo)",
    "per_device_train_batch_size": "pairs (train) vs completions (grpo)",
    "lr": "each toy recipe's own learning rate (base model, CLIP)",
    "warmup": "each toy recipe's own warm-up steps (base model, CLIP)",
    "box_jitter": "the annotator's noise on the base's training boxes vs the CLIP's crop jitter",
    "semantic": "the scorer to use (score, grpo) vs an optional extra score of the descriptions (eval description)",
    "temperature": "0 decodes greedily (generate) vs rollouts that must sample (grpo)",
    "top_p": "the paper's nucleus (generate) vs the policy's own distribution, which GRPO's ratio assumes (grpo)",
}


def test_an_option_shared_by_stages_is_declared_once():
    from spr.pipeline import RUN_WIDE, RunConfig

    declared: dict[str, dict[str, tuple]] = {}
    for _, command in LEAVES:
        for f in dataclasses.fields(command.Config):
            owner = next(k for k in command.Config.__mro__ if f.name in k.__dict__.get("__annotations__", {}))
            if owner is RunConfig and f.name in RUN_WIDE:
                continue  # the run-wide statement of the stages' own option, handed to each (spr run)
            declared.setdefault(f.name, {})[owner.__qualname__] = (
                f.metadata.get("help"),
                repr(C.default_of(f)),
            )
    twice = {name: by for name, by in declared.items() if len(set(by.values())) > 1}
    new = sorted(set(twice) - PER_STAGE - set(SAME_NAME_OTHER_OPTION))
    assert not new, "declared in two configs with different help or default: " + "; ".join(
        f"{name}: {', '.join(twice[name])}" for name in new
    )
    groups = {"family": "ModelFamily", "min_pixels": "PixelBudget", "max_pixels": "PixelBudget",
              "max_image_pixels": "ImageLimit", "device": "Device", "dtype": "Dtype", "quiet": "Progress",
              "prompts": "DescriptionPrompts", "preset": "WorldPreset", "clip_model": "SemanticModels",
              "label_model": "SemanticModels", "lam": "ScorerOptions", "iou_threshold": "ScorerOptions",
              "num_train_epochs": "TrainerOptions", "warmup_ratio": "TrainerOptions",
              "logging_steps": "TrainerOptions"}  # fmt: skip
    for name, group in groups.items():
        assert set(declared[name]) - {"TinyModelConfig"} == {group}, declared[name]


def test_yaml_and_flags_combine_and_bad_values_name_the_option(tmp_path, capsys):
    from spr.scoring.combine import ScoreConfig

    file = tmp_path / "score.yaml"
    file.write_text("regions: r.jsonl\ncandidates: c.jsonl\nout: s.jsonl\nlambda: 0.5\nrefine: false\n")
    parser = _subparser(build_parser(), "score")
    config = C.from_args(ScoreConfig, parser.parse_args(["--config", str(file), "--lambda", "0.3"]))
    assert config.lam == 0.3 and config.refine is False and config.regions == "r.jsonl"
    file.write_text("regions: r.jsonl\ncandidates: c.jsonl\nout: s.jsonl\nlamda: 0.5\n")
    assert main(["score", "--config", str(file)]) == 2
    assert "unknown option(s) lamda" in capsys.readouterr().err
    file.write_text("regions: r.jsonl\ncandidates: c.jsonl\nout: s.jsonl\nlambda: high\n")
    assert main(["score", "--config", str(file)]) == 2
    assert "lambda: expected a number" in capsys.readouterr().err
    assert main(["score", "--regions", "r.jsonl"]) == 2
    assert "missing required option(s): --candidates, --out" in capsys.readouterr().err


def command_paths():
    """Every command and command group as typed after `spr` ("" for `spr` itself, "eval", "eval rec", ...)."""
    out = [""]

    def walk(prefix, target):
        out.append(prefix)
        for name, child in getattr(resolve(target), "SUBCOMMANDS", {}).items():
            walk(f"{prefix} {name}", child)

    for name, target in COMMANDS.items():
        walk(name, target)
    return out


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: f"spr {p}".strip())
def test_help_of_every_command_and_group_prints_and_exits_0(path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*path.split(), "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: spr {path}".rstrip()), out[:200]


def test_spr_help_lists_the_commands_in_pipeline_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    positions = [
        text.index(f"    {name}")
        for name in ("regions", "generate", "score", "pairs", "train", "merge", "eval")
    ]
    assert positions == sorted(positions)


# ------------------------------------------------------------------------------------------- registries


@pytest.fixture
def throwaway_family():
    """A family added the way docs/architecture.md says: one FamilySpec, registered."""
    from spr.models import families, tiny

    spec = dataclasses.replace(
        families.get_family("llava"),
        name="throwaway",
        model_types=("throwaway",),
        default_fmt="plain_pixel",
        rec_template="Where is {expression}? Answer with a box.",
        tiny=tiny.llava,
    )
    families.register_family(spec)
    yield spec
    families.FAMILIES.unregister("throwaway")


@pytest.mark.slow
def test_a_family_added_through_its_spec_runs_every_stage(throwaway_family, coco, tmp_path):
    from evaluate_fixtures import make_dpo_jsonl, make_rec_jsonl

    from spr.models.tiny import build_tiny_model

    model = build_tiny_model("throwaway", tmp_path / "model")
    annotations, images = coco
    run = tmp_path / "run"
    assert (
        main(
            [
                "regions",
                "--annotations",
                str(annotations),
                "--images",
                str(images),
                "--out",
                str(run / "r.jsonl"),
            ]
        )
        == 0
    )
    assert main(["generate", "--model", str(model), "--family", "throwaway", "--regions", str(run / "r.jsonl"),
                 "--out", str(run / "c.jsonl"), "--samples", "2", "--max-new-tokens", "8", "--limit", "1"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (run / "c.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["fmt"] for r in rows} == {"plain_pixel"}
    data = make_dpo_jsonl(tmp_path / "pairs", n=2, fmt="plain_pixel")
    assert main(["train", "--model", str(model), "--family", "throwaway", "--data", str(data), "--out",
                 str(run / "adapter"), "--max-steps", "1", "--per-device-train-batch-size", "2"]) == 0  # fmt: skip
    assert (
        main(
            [
                "merge",
                "--adapter",
                str(run / "adapter"),
                "--family",
                "throwaway",
                "--out",
                str(run / "merged"),
            ]
        )
        == 0
    )
    assert main(["eval", "rec", "--model", str(run / "merged"), "--family", "throwaway", "--data",
                 str(make_rec_jsonl(tmp_path / "rec")), "--out", str(run / "eval"), "--max-new-tokens", "6"]) == 0  # fmt: skip
    preds = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["status"] in ("ok", "no_box") for p in preds)


@pytest.fixture
def throwaway_task():
    """An evaluation task added the way spr.evaluate.task says: a Task subclass with its config, registered."""
    from spr.evaluate import readers
    from spr.evaluate.task import TASKS, EvalConfig, Metric, Task, register_task

    @dataclasses.dataclass
    class BoxCountConfig(EvalConfig):
        data: str = C.opt(C.required, "REC JSONL file")

    class BoxCount(Task):
        name = "boxcount"
        HELP = "How many boxes the model writes when asked to find one object."
        Config = BoxCountConfig
        metrics = (Metric("mean_boxes", higher_is_better=False),)

        def read(self, config, problems):
            return readers.read_rec_jsonl(config.data, config.splits, problems)

        def prompt(self, adapter, config, sample, view_size):
            return adapter.rec_prompt(sample.expression)

        def record(self, adapter, config, sample, text, view_size, error):
            from spr import formats

            boxes = (
                [] if error else formats.parse(text, adapter.fmt, view_size, **adapter.geometry(view_size))
            )
            return {
                "id": sample.id,
                "split": sample.split,
                "boxes": len(boxes),
                "status": "image_error" if error else "ok",
            }

        def group_metrics(self, records):
            return {
                "n": len(records),
                "mean_boxes": sum(r["boxes"] for r in records) / len(records) if records else None,
            }

    task = register_task(BoxCount())
    yield task
    TASKS.unregister("boxcount")


def test_a_task_added_through_the_registry_runs_from_the_cli(
    throwaway_task, tiny_model_dir, tmp_path, capsys
):
    from evaluate_fixtures import make_rec_jsonl

    data = make_rec_jsonl(tmp_path / "rec")
    out = tmp_path / "boxcount"
    assert main(["eval", "boxcount", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(data),
                 "--out", str(out), "--max-new-tokens", "8"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "boxcount" and metrics["n"] == 4 and metrics["mean_boxes"] is not None
    assert "| mean_boxes" in capsys.readouterr().out
    # compare knows the task's direction: fewer boxes is better here
    from spr.evaluate.compare import compare

    table = compare(
        {"task": "boxcount", "mean_boxes": 2.0}, {"task": "boxcount", "mean_boxes": 1.0}, "a", "b"
    )
    assert "| mean_boxes | 2.0000 | 1.0000 | -1.0000 | b |" in table
