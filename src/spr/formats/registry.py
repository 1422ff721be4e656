"""The registry of box formats: each codec module registers its ``CODEC`` once, when it is imported
(``CODEC = register(SomeCodec(name=...))``); :mod:`spr.formats.codecs` imports every module of the package."""

from __future__ import annotations

from ..registry import Registry
from .base import Codec

CODECS: Registry[Codec] = Registry("box format")


def register(codec: Codec) -> Codec:
    """Add ``codec`` under ``codec.name`` and return it; a second codec of the same name is an error."""
    if not isinstance(codec, Codec):
        raise TypeError(f"register() takes a Codec, got {type(codec).__name__}")
    return CODECS.register(codec.name, codec)


get = CODECS.get
available = CODECS.available
