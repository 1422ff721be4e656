"""The commands of `spr`, by name, and running one from Python with its config.

A command is a module with ``HELP`` (one sentence), ``Config`` (its config dataclass, :mod:`spr.config`) and
``run(config) -> int``; a command group (``eval``, ``toy``) is a module with ``HELP`` and ``SUBCOMMANDS``
(name -> module path, or an object with ``HELP``, ``Config`` and ``run``: a registered evaluation task). The CLI
(:mod:`spr.cli`), `spr run` and the shapes-world recipes all reach the stages through here, so a stage is
called the same way from everywhere. Modules are imported only when their command is used.
"""

from __future__ import annotations

import importlib

from .errors import UserError
from .registry import Registry

# command name -> module implementing it, in the order `spr --help` lists them.
COMMANDS: Registry[str] = Registry("command")
for _name, _module in [
    ("regions", "spr.regions"),
    ("generate", "spr.generate"),
    ("score", "spr.scoring.command"),
    ("pairs", "spr.pairs"),
    ("report", "spr.report.command"),
    ("train", "spr.train"),
    ("grpo", "spr.grpo"),
    ("merge", "spr.merge"),
    ("eval", "spr.evaluate.cli"),
    ("run", "spr.pipeline"),
    ("demo", "spr.toy.demo"),
    ("toy", "spr.toy.cli"),
    ("tiny-model", "spr.models.tiny"),
]:
    COMMANDS.register(_name, _module)


def resolve(target):
    """The command object of a module path (imported) or of an object that already is one."""
    return importlib.import_module(target) if isinstance(target, str) else target


def command(name: str):
    """The command for ``"generate"`` or ``"eval rec"`` (a group's subcommand)."""
    first, *rest = name.split()
    obj = resolve(COMMANDS.get(first))
    for part in rest:
        subcommands = getattr(obj, "SUBCOMMANDS", {})
        if part not in subcommands:
            raise UserError(f"unknown command {name!r}; {first} has: {', '.join(subcommands)}")
        obj = resolve(subcommands[part])
    return obj


def run_stage(name: str, config) -> None:
    """Run command ``name`` with ``config`` (an instance of its Config) in this process; a non-zero exit
    becomes a UserError naming the stage."""
    code = int(command(name).run(config) or 0)
    if code != 0:
        raise UserError(f"stage `spr {name}` failed (exit {code}); fix the cause and run again to resume")
