"""Imports every module of :mod:`spr.formats`, so that each codec module registers its ``CODEC`` (one module per
format: adding a format is adding its module). Helper modules (base, text, grid, bracket, ...) define no CODEC
and register nothing."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from . import registry

_PACKAGE = __name__.rpartition(".")[0]
_SELF = __name__.rpartition(".")[2]


def _import_all() -> list[str]:
    package = sys.modules[_PACKAGE]
    names = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name == _SELF or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_PACKAGE}.{info.name}")
        codec = getattr(module, "CODEC", None)
        if codec is not None:
            name = getattr(codec, "name", None)
            if name not in registry.CODECS or registry.CODECS.get(name) is not codec:
                raise ImportError(
                    f"{module.__name__} defines CODEC but does not register it: "
                    "write CODEC = register(...) (from .registry import register)"
                )
            names.append(codec.name)
    return names


MODULES_WITH_CODECS = _import_all()
