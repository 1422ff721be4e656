"""Models: load any supported grounding MLLM from a local directory behind one adapter; tiny random models.

>>> adapter = spr.models.load("models/qwen2-vl-2b")          # doctest: +SKIP
>>> adapter.family, adapter.fmt
('qwen2_vl', 'qwen2_vl')

Families: qwen2_vl, qwen2_5_vl, qwen3_vl(_moe), qwen3_5(_moe), glm4v, glm4v_moe, glm46v, llava, llava_onevision,
idefics3, internvl (see :mod:`spr.models.families`).
"""

from __future__ import annotations

from .adapter import ModelAdapter
from .families import FAMILIES, FamilySpec, available_families, get_family
from .loading import load, load_processor

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "ModelAdapter",
    "available_families",
    "get_family",
    "load",
    "load_processor",
]
