"""Hostile configs and numbers (issue 23): every one is refused with one line naming the option or the file,
fast, before any work; the bounds come from the ``opt()`` declarations (``min``, ``max``, ``above``, finite)."""

from __future__ import annotations

import time

import pytest

from spr import config as C
from spr.cli import main
from spr.data.jsonl import JsonlError, iter_jsonl

FILES = {
    "generate": ["--model", "m", "--regions", "r.jsonl", "--out", "c.jsonl"],
    "pairs": ["--regions", "r.jsonl", "--candidates", "c.jsonl", "--scores", "s.jsonl", "--out", "p.jsonl"],
    "train": ["--model", "m", "--data", "dpo.jsonl", "--out", "adapter"],
    "grpo": ["--model", "m", "--regions", "r.jsonl", "--out", "adapter"],
    "eval rec": ["--model", "m", "--data", "rec.jsonl", "--out", "eval"],
    "regions": ["--annotations", "a.json", "--images", "img", "--out", "r.jsonl"],
}

BAD_NUMBERS = [
    ("generate", "--temperature", "nan", "temperature: must be a finite number, got nan"),
    ("generate", "--temperature", "-1", "temperature: must be at least 0, got -1.0"),
    ("generate", "--top-p", "nan", "top_p: must be a finite number"),
    ("generate", "--top-p", "0", "top_p: must be above 0"),
    ("generate", "--top-p", "1.5", "top_p: must be at most 1"),
    ("generate", "--max-new-tokens", "0", "max_new_tokens: must be at least 1, got 0"),
    ("generate", "--limit", "-1", "limit: must be at least 1, got -1"),
    ("generate", "--samples", "0", "samples: must be at least 1"),
    ("pairs", "--min-margin", "nan", "min_margin: must be a finite number"),
    ("train", "--max-steps", "0", "max_steps: must be at least 1 (or -1), got 0"),
    ("train", "--num-train-epochs", "0", "num_train_epochs: must be above 0"),
    ("train", "--learning-rate", "inf", "learning_rate: must be a finite number, got inf"),
    ("grpo", "--temperature", "0", "temperature: must be above 0"),
    ("grpo", "--max-steps", "-2", "max_steps: must be at least 1 (or -1), got -2"),
    ("eval rec", "--limit", "-1", "limit: must be at least 1"),
    ("eval rec", "--max-new-tokens", "0", "max_new_tokens: must be at least 1"),
    ("regions", "--limit", "0", "limit: must be at least 1"),
]


@pytest.mark.parametrize("command, flag, value, message", BAD_NUMBERS, ids=lambda v: str(v))
def test_a_bad_number_is_one_line_naming_the_option(command, flag, value, message, capsys, tmp_path):
    assert main([*command.split(), *FILES[command], flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_the_special_value_outside_the_range_and_yaml_numbers_are_checked_alike(tmp_path, capsys):
    from spr.train import TrainConfig

    files = {"model": "m", "data": "dpo.jsonl", "out": "adapter"}
    assert C.build(TrainConfig, {**files, "max_steps": -1}).max_steps == -1
    file = tmp_path / "generate.yaml"
    file.write_text("model: m\nregions: r.jsonl\nout: c.jsonl\ntemperature: .nan\n")
    assert main(["generate", "--config", str(file)]) == 2
    assert f"{file} / command line: temperature: must be a finite number" in capsys.readouterr().err


def _run_config(tmp_path, body: str):
    file = tmp_path / "run.yaml"
    file.write_text(
        f"out: {tmp_path / 'run'}\nmodel: m\nregions: {{annotations: a.json, images: img}}\n{body}"
    )
    return file


BOMB = """world:
  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""

BAD_RUN_CONFIGS = {
    "alias bomb": (BOMB, "values once its aliases (*name) are expanded"),
    "deep nesting": ("title: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 50 levels deep"),
    "nesting under the composer's limit": ("title: " + "[" * 60 + "]" * 60 + "\n", "nested more than 50"),
    "an alias holding itself": ("world: &w {a: *w}\n", "an alias holds itself"),
    "eval task not a mapping": ("eval: {rec: 5}\n", "eval rec: expected a mapping"),
    "launcher not a mapping": ("launcher: {generate: 5}\n", "launcher generate: expected a mapping"),
    "a seed that is not a number": ("generate: {seed: abc}\n", "section generate: seed: expected an integer"),
    "rounds out of range": ("rounds: 100000000\n", "rounds: must be at most 100"),
}


@pytest.mark.parametrize("body, message", BAD_RUN_CONFIGS.values(), ids=BAD_RUN_CONFIGS.keys())
def test_a_hostile_run_config_is_one_line_and_fast(body, message, tmp_path, capsys):
    file = _run_config(tmp_path, body)
    started = time.perf_counter()
    assert main(["run", "--config", str(file), "--dry-run"]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_seed_of_the_regions_section_is_checked_before_use(tmp_path, capsys):
    file = tmp_path / "run.yaml"
    file.write_text(f"out: {tmp_path / 'run'}\nmodel: m\nregions: {{annotations: a, images: i, seed: abc}}\n")
    assert main(["run", "--config", str(file), "--dry-run"]) == 2
    assert "section regions: seed: expected an integer, got 'abc'" in capsys.readouterr().err


def test_set_rounds_to_a_huge_number_is_refused_at_once(tmp_path, capsys):
    file = _run_config(tmp_path, "")
    started = time.perf_counter()
    assert main(["run", "--config", str(file), "--set", "rounds=100000000", "--dry-run"]) == 2
    assert time.perf_counter() - started < 5
    assert "--set: rounds: must be at most 100, got 100000000" in capsys.readouterr().err


def test_a_config_that_is_not_utf8_or_too_large_is_one_line(tmp_path, capsys):
    file = tmp_path / "run.yaml"
    file.write_bytes(b"out: x\nmodel: \xff\xfe\n")
    assert main(["run", "--config", str(file)]) == 2
    assert f"{file}: not UTF-8 text (byte 14" in capsys.readouterr().err
    file.write_bytes(b"# " + b"x" * C.MAX_YAML_BYTES + b"\n")
    assert main(["run", "--config", str(file)]) == 2
    assert "more than a config may have" in capsys.readouterr().err


def test_a_bomb_in_a_set_value_is_refused(tmp_path, capsys):
    file = _run_config(tmp_path, "")
    bomb = "world.x=" + "[" * 200 + "]" * 200
    assert main(["run", "--config", str(file), "--set", bomb, "--dry-run"]) == 2
    assert "nested more than 50 levels deep" in capsys.readouterr().err


def test_a_deeply_nested_jsonl_record_is_one_line_naming_the_file(tmp_path):
    file = tmp_path / "regions.jsonl"
    file.write_text('{"id": "a"}\n{"id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(JsonlError, match=r"regions.jsonl:2: bad JSON: maximum recursion depth"):
        list(iter_jsonl(file))


def test_a_config_built_in_python_can_check_its_numbers():
    from spr.pipeline import RunConfig

    with pytest.raises(ValueError, match="rounds: must be at least 1, got 0"):
        RunConfig(out="o", model="m", rounds=0)
