"""`spr <command>`: one command per pipeline stage.

Each command lives in its own module, which defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the command being run is imported, so `spr regions` does not pay for
torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from spr.errors import UserError

# command name -> module implementing it. Add a stage by adding a line here.
COMMANDS: dict[str, str] = {
    "tiny-model": "spr.models.tiny",
    "generate": "spr.generate",
    "score": "spr.scoring.command",
    "pairs": "spr.pairs",
    "report": "spr.report.command",
    "regions": "spr.regions",
    "toy": "spr.toy.cli",
    "train": "spr.train",
    "merge": "spr.merge",
    "eval": "spr.evaluate.cli",
    "demo": "spr.toy.demo",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spr", description="Spatial Preference Rewarding for grounding MLLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)
            continue
        module = _load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"spr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"spr {args.command}: interrupted; what was written so far is kept, re-run to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
