"""Registers the built-in codecs (one module per format)."""

from . import (
    cogvlm,
    ferret,
    florence2,
    internvl,
    kosmos2,
    minigpt_v2,
    paligemma,
    plain_norm,
    plain_pixel,
    qwen2_5_vl,
    qwen2_vl,
    register,
    shikra,
)

for _module in (
    qwen2_vl,
    qwen2_5_vl,
    internvl,
    ferret,
    shikra,
    cogvlm,
    florence2,
    paligemma,
    kosmos2,
    minigpt_v2,
    plain_norm,
    plain_pixel,
):
    register(_module.CODEC)
