"""`spr <command>`: one command per pipeline stage, in pipeline order (the commands: :mod:`spr.stages`).

Every command's flags are generated from its config dataclass (:mod:`spr.config`), and every command takes
``--config file.yaml`` with the same names. Only the modules of the command being run are imported, so
`spr regions` does not pay for torch.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from . import config as C
from .errors import UserError
from .stages import COMMANDS, resolve


def _add_command(sub, name: str, target, path: str) -> None:
    module = resolve(target)
    # argparse %-formats a subcommand's help in its group's listing ("95% interval" would raise there)
    p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
    if hasattr(module, "SUBCOMMANDS"):
        group = p.add_subparsers(dest=f"_{path}", metavar="<subcommand>")
        for child, child_module in module.SUBCOMMANDS.items():
            _add_command(group, child, child_module, f"{path} {child}")
        p.set_defaults(_parser=p, _command=path)
        return
    C.add_arguments(p, module.Config)
    p.set_defaults(_module=module, _command=path)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spr", description="Spatial Preference Rewarding for grounding MLLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, add_help=False, help=argparse.SUPPRESS)
            continue
        _add_command(sub, name, module_name, name)
    return parser


# the machine's, not the program's: disk full, quota, read-only or forbidden output (one line, no traceback)
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not sys.stderr.isatty():  # CI logs and files: no progress bars (ours: tqdm's disable=None)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers when it loads
    from .training.precision import ignore_checkpointing_deprecation

    ignore_checkpointing_deprecation()  # raised inside PEFT and TRL: nothing a user of spr can change
    module = getattr(args, "_module", None)
    if module is None:
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    command = args._command
    try:
        config = C.from_args(module.Config, args)
        return int(module.run(config) or 0)
    except UserError as e:
        print(f"spr {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"spr {command}: error: {e.strerror}{where}; what was written is kept (a last line cut short is "
            "repaired on resume): fix this and re-run the same command to resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"spr {command}: interrupted; what was written so far is kept, re-run to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
