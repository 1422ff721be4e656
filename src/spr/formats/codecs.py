"""Registers the built-in codecs (one module per format)."""

from . import qwen2_vl, register

for _module in (qwen2_vl,):
    register(_module.CODEC)
