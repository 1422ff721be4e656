"""`spr toy <subcommand>`: the synthetic shapes world and the tiny models trained on it.

Each subcommand lives in its own module defining ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``,
like the top-level commands; add one by adding a line to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import importlib

SUBCOMMANDS: dict[str, str] = {
    "world": "spr.toy.world_cli",
    "train-clip": "spr.toy.clip_recipe",
    "train-base": "spr.toy.base_recipe",
    "ablate": "spr.toy.ablate",
}

HELP = (
    "The synthetic shapes world: generate scenes and data (world), train its tiny models (train-clip, ...)."
)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="toy_command", metavar="<subcommand>")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_toy_run=module.run)
    parser.set_defaults(_toy_parser=parser)


def run(args) -> int:
    if not getattr(args, "_toy_run", None):
        args._toy_parser.print_help()
        return 2
    return args._toy_run(args)
