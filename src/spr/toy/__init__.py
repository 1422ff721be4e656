"""The synthetic shapes world: SPR's embedded default, in which every stage runs offline in minutes.

- :mod:`spr.toy.world`: seeded scenes of coloured shapes (config :class:`~spr.toy.world.WorldConfig`).
- :mod:`spr.toy.expressions`: referring expressions with exactly one referent.
- :mod:`spr.toy.descriptions`: region captions and grounded descriptions as (phrase, box) lists.
- :mod:`spr.toy.dataset`: writes train / val / test splits (COCO, RefCOCO refer layout, REC / caption JSONL).
- :mod:`spr.toy.clip_recipe`: a tiny CLIP trained contrastively on the world's region crops.
- :mod:`spr.toy.cli`: ``spr toy world``, ``spr toy train-clip``, ...
"""
