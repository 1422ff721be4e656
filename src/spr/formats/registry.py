"""The registry of box formats: each codec module registers its ``CODEC`` once, when it is imported
(``CODEC = register(SomeCodec(name=...))``); :mod:`spr.formats.codecs` imports every module of the package."""

from __future__ import annotations

from .base import Codec

_REGISTRY: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Add ``codec`` under ``codec.name`` and return it; a second codec of the same name is an error."""
    if not isinstance(codec, Codec):
        raise TypeError(f"register() takes a Codec, got {type(codec).__name__}")
    if not codec.name:
        raise ValueError("a box format needs a name")
    if codec.name in _REGISTRY:
        raise ValueError(f"box format {codec.name!r} is already registered")
    _REGISTRY[codec.name] = codec
    return codec


def get(fmt: str) -> Codec:
    try:
        return _REGISTRY[fmt]
    except (KeyError, TypeError):
        raise KeyError(f"unknown box format {fmt!r}; available: {', '.join(available())}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)
