"""Stage configs: one dataclass per command, whose fields are the command's options.

Every field is declared with :func:`opt` (a default or ``required``, one help sentence, optional choices). From
the dataclass alone :func:`add_arguments` makes the command-line flags (``lora_r`` -> ``--lora-r``, booleans as
``--flag/--no-flag``, lists as several values) and their help with the default shown, and :func:`from_args`
builds the config from ``--config file.yaml`` (same field names) overridden by the flags given on the command
line. Validation lives in the dataclass's ``__post_init__``, so a config built in Python, from YAML or from
flags is checked the same way. :func:`output_settings` is what a stage's settings header records.

>>> @dataclass
... class Example:
...     model: str = opt(required, "model directory")
...     samples: int = opt(4, "candidates per prompt")
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import UserError


class _Required:
    def __repr__(self) -> str:
        return "required"


required = _Required()
"""``opt(required, "help")``: a field the command line (or YAML) must give. In Python the field defaults to
None, so library code can build a config without the stage's file paths (``RegionConfig(per_image=3)``)."""


def opt(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    output: bool = True,
    positional: bool = False,
    default_text: str | None = None,
    cli: bool = True,
    name: str | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    special: tuple = (),
    finite: bool = True,
):
    """A config field. ``output=False`` marks a field that does not change what the stage writes (device,
    batch size, progress ...): it is left out of the settings header, so a resume may change it.
    ``default_text`` replaces the shown default where the value alone would mislead (``None`` meaning "auto").
    ``cli=False`` keeps a field out of the command line (set from Python or YAML only). ``name`` is the
    option's name where the field's own cannot be it (``lam`` is ``--lambda`` and ``lambda:`` in YAML).
    A number's range: ``min`` / ``max`` (inclusive), ``above`` (exclusive), ``special`` values allowed outside
    it (``-1``: "run the epochs"); a float must be finite unless ``finite=False`` (:func:`check_numbers`)."""
    if not help:
        raise ValueError("every config field needs a help sentence")
    metadata = dict(help=help, choices=choices, output=output, positional=positional, cli=cli, finite=finite)
    bounds = dict(min=min, max=max, above=above)
    metadata.update({k: v for k, v in bounds.items() if v is not None})
    if special:
        metadata["special"] = tuple(special)
    if name is not None:
        metadata["name"] = name
    if default is required:
        metadata["required"] = True
        default = None
    if default_text is not None:
        metadata["default_text"] = default_text
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------------- types


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp) -> tuple[Any, bool]:
    """(inner type, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported union type {tp}")
    return tp, False


def _kind(tp) -> tuple[str, Any, bool]:
    """("scalar" | "list" | "tuple" | "bool" | "dict", element type, optional)."""
    inner, optional = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        return "bool", bool, optional
    if origin in (list, tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        return ("list" if origin is list else "tuple"), (args[0] if args else str), optional
    if origin is dict or inner is dict:
        return "dict", dict, optional
    return "scalar", inner, optional


def _literal_choices(tp) -> tuple | None:
    inner, _ = _strip_optional(tp)
    if typing.get_origin(inner) is Literal:
        return typing.get_args(inner)
    return None


def _scalar(value, tp, name: str):
    """``value`` (from YAML or a flag) as type ``tp``; UserError naming the field when it is not one."""
    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise UserError(
                f"{name}: must be one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}"
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise UserError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise UserError(f"{name}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise UserError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise UserError(f"{name}: expected an integer, got {value!r}") from None
    if tp is str:
        if isinstance(value, str | Path):
            return str(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # YAML reads `prompts: 1` as a number
        raise UserError(f"{name}: expected text, got {value!r}")
    return value


def coerce(value, tp, name: str):
    """A value read from YAML or the command line, checked against the field type ``tp``."""
    kind, elem, optional = _kind(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"{name}: may not be empty (null)")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise UserError(f"{name}: expected true or false, got {value!r}")
    if kind in ("list", "tuple"):
        items = list(value) if isinstance(value, list | tuple) else [value]
        out = [_scalar(v, elem, name) for v in items]
        return tuple(out) if kind == "tuple" else out
    if kind == "dict":
        if not isinstance(value, dict):
            raise UserError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    return _scalar(value, elem, name)


def _number_problem(value, f: dataclasses.Field) -> str | None:
    """Why ``value`` is out of field ``f``'s range, or None."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value in f.metadata.get("special", ())
    ):
        return None
    if isinstance(value, float) and not math.isfinite(value) and f.metadata.get("finite", True):
        return f"must be a finite number, got {value}"
    low, high, above = (f.metadata.get(k) for k in ("min", "max", "above"))
    special = "".join(f" (or {s})" for s in f.metadata.get("special", ()))
    if low is not None and value < low:
        return f"must be at least {low}{special}, got {value}"
    if above is not None and value <= above:
        return f"must be above {above}{special}, got {value}"
    if high is not None and value > high:
        return f"must be at most {high}{special}, got {value}"
    return None


def check_numbers(config) -> None:
    """Every number of ``config`` finite and in its field's declared range (:func:`opt`); ValueError naming the
    first that is not. :func:`build` calls it, so flags, YAML and run configs are all checked; a config's
    ``__post_init__`` may call it too."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for item in value if isinstance(value, list | tuple) else [value]:
            problem = _number_problem(item, f)
            if problem:
                raise ValueError(f"{option_name(f)}: {problem}")


# ------------------------------------------------------------------------------------------------- the CLI


def option_name(f: dataclasses.Field) -> str:
    return f.metadata.get("name", f.name)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def default_of(f: dataclasses.Field):
    """The field's default, or MISSING for a required field."""
    if f.metadata.get("required"):
        return MISSING
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def help_text(f: dataclasses.Field) -> str:
    text = f.metadata["help"].rstrip(".")
    default = default_of(f)
    if default is MISSING:
        return f"{text} (required)"
    shown = f.metadata.get("default_text", _shown(default))
    return f"{text} (default: {shown})".replace("%", "%%")


class OptionGroup:
    """Base of an option group (:mod:`spr.options`): options several stage configs inherit, declared once."""


def _group_fields(cls) -> list[str]:
    """The fields ``cls`` has from option groups (the classes that derive from OptionGroup directly), in the
    order the groups are listed."""
    groups = [
        base for base in cls.__mro__ if OptionGroup in base.__bases__ and dataclasses.is_dataclass(base)
    ]
    return list(dict.fromkeys(name for group in groups for name in group.__dataclass_fields__))


def cli_fields(cls) -> list[dataclasses.Field]:
    """The command-line fields of ``cls``: its own first, then those of its option groups."""
    fields = {
        f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and "help" in f.metadata
    }
    grouped = [n for n in _group_fields(cls) if n in fields]
    return [f for n, f in fields.items() if n not in grouped] + [fields[n] for n in grouped]


def add_arguments(parser: argparse.ArgumentParser, cls, config_file: bool = True) -> None:
    """One option per field of ``cls`` (see the module docstring), plus ``--config`` when ``config_file``."""
    hints = _hints(cls)
    if config_file:
        parser.add_argument(
            "--config",
            metavar="YAML",
            default=argparse.SUPPRESS,
            help="read options from this YAML file (same names as the options, with _ for -); "
            "options given on the command line override it",
        )
    for f in cli_fields(cls):
        kind, elem, _ = _kind(hints[f.name])
        choices = f.metadata.get("choices") or _literal_choices(hints[f.name])
        kw: dict[str, Any] = dict(help=help_text(f), default=argparse.SUPPRESS)
        if f.metadata.get("positional"):
            parser.add_argument(f.name, metavar=f.name.upper(), nargs="?", **kw)
            continue
        if kind == "bool":
            parser.add_argument(
                flag_name(option_name(f)), dest=f.name, action=argparse.BooleanOptionalAction, **kw
            )
            continue
        if kind == "dict":
            kw["type"] = _yaml_mapping
            kw["metavar"] = "YAML"
        if choices:
            kw["choices"] = choices
        if kind in ("list", "tuple"):  # --loss-type sigmoid sft, or the flag repeated
            kw.update(nargs="*", action="extend")
        scalar = typing.get_args(elem)[0] if typing.get_origin(elem) is Literal else elem
        if scalar in (int, float):
            kw["type"] = scalar
        parser.add_argument(flag_name(option_name(f)), dest=f.name, **kw)


def _yaml_mapping(text: str) -> dict:
    """A mapping given on the command line as YAML: ``--regions '{annotations: a.json, images: img}'``."""
    try:
        value = load_yaml(text, "the value")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{key: value}}', got {text!r}")
    return value


# A config is small: these stop a hostile one (an alias bomb, "billion laughs", expands exponentially once its
# values are copied; deep nesting exhausts the recursion of the YAML composer) before it costs memory or time.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # values with every alias expanded; the shipped run configs have a few hundred
MAX_YAML_DEPTH = 50


def load_yaml(text: str | bytes, source: str):
    """YAML ``text`` (bytes must be UTF-8) as Python values, refused with one line naming ``source`` when it is
    too large, not UTF-8, not YAML, nested deeper than ``MAX_YAML_DEPTH`` or more than ``MAX_YAML_VALUES``
    values once its aliases are expanded."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source}: {len(text)} bytes, more than a config may have ({MAX_YAML_BYTES})")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{source}: not UTF-8 text (byte {e.start}: {text[e.start : e.start + 1]!r})"
            ) from None
    if _bracket_depth(text) > MAX_YAML_DEPTH:  # before YAML's scanner, which is quadratic in bracket nesting
        raise UserError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not a readable YAML file: {' '.join(str(e).split())}") from None
    check_size(data, source)
    return data


def _bracket_depth(text: str) -> int:
    """The deepest nesting of [ and { in ``text`` (brackets inside quotes count too: an over-estimate)."""
    depth = deepest = 0
    for m in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def check_size(value, source: str) -> None:
    """UserError when ``value`` (YAML already loaded) is nested too deeply or too large once its aliases are
    expanded (see :func:`load_yaml`)."""
    _expanded_size(value, source, 0, {})


def _expanded_size(value, source: str, depth: int, sizes: dict) -> int:
    """The number of values in ``value`` with each alias counted as often as it is used (memoized by object,
    so an alias bomb is measured in linear time)."""
    if depth > MAX_YAML_DEPTH:
        raise UserError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep (or an alias holds itself)")
    if not isinstance(value, dict | list):
        return 1
    if id(value) not in sizes:
        children = value.values() if isinstance(value, dict) else value
        n = 1 + sum(_expanded_size(child, source, depth + 1, sizes) for child in children)
        if n > MAX_YAML_VALUES:
            raise UserError(
                f"{source}: more than {MAX_YAML_VALUES} values once its aliases (*name) are expanded; "
                "a config this large is refused (an alias bomb?)"
            )
        sizes[id(value)] = n
    return sizes[id(value)]


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # no more: load_yaml refuses a longer one
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except OSError as e:
        raise UserError(f"{path}: not a readable YAML file: {e}") from None
    data = load_yaml(raw, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    return data


def build(cls, values: dict, source: str = "config"):
    """``cls(**values)`` with every value checked against its field's type; unknown names, missing required
    fields and invalid values become UserErrors that name the field and ``source``."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    aliases = {option_name(f): n for n, f in fields.items()}
    values = {aliases.get(k, k): v for k, v in values.items()}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(
            f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(aliases))}"
        )
    kwargs = {k: coerce(v, hints[k], f"{source}: {option_name(fields[k])}") for k, v in values.items()}
    missing = [n for n, f in fields.items() if kwargs.get(n) is None and default_of(f) is MISSING]
    if missing:
        raise UserError(
            f"{source}: missing required option(s): {', '.join(flag_name(option_name(fields[n])) for n in missing)}"
        )
    for k, v in kwargs.items():  # before the config's own __post_init__, which may not expect a nan
        for item in v if isinstance(v, list | tuple) else [v]:
            problem = _number_problem(item, fields[k])
            if problem:
                raise UserError(f"{source}: {option_name(fields[k])}: {problem}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"{source}: {e}") from None


def from_args(cls, args: argparse.Namespace, section: str | None = None):
    """The config of ``cls`` from ``--config`` (a flat mapping of its fields, or of a run config whose
    ``section`` holds them) overridden by the flags given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)} | {option_name(f) for f in dataclasses.fields(cls)}
    values: dict = {}
    source = "command line"
    if getattr(args, "config", None):
        data = read_yaml(args.config)
        if section and isinstance(data.get(section), dict):
            data = data[section]
        values.update(data)
        source = f"{args.config} / command line"
    values.update({k: v for k, v in vars(args).items() if k in names})
    return build(cls, values, source)


# ------------------------------------------------------------------------------------------------ outputs


def to_dict(config) -> dict:
    """Every field under its option name, as plain JSON/YAML values (tuples as lists): what ``--config``
    reads back."""
    import json

    data = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return {option_name(f): data[f.name] for f in dataclasses.fields(config)}


def output_settings(config) -> dict:
    """The fields of ``config`` that decide what its stage writes (those not declared ``output=False``)."""
    data = to_dict(config)
    return {
        option_name(f): data[option_name(f)]
        for f in dataclasses.fields(config)
        if f.metadata.get("output", True)
    }


def write_yaml(config, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    return path


__all__ = [
    "add_arguments",
    "build",
    "from_args",
    "opt",
    "output_settings",
    "required",
    "to_dict",
    "dataclass",
]
