"""Referring expressions with exactly one referent in their scene.

Objects are anything with ``colour``, ``shape`` and ``box`` (x1, y1, x2, y2). An object's size is the square
root of its box area. The kinds of expression and what they mean:

- ``label``:    "the red circle"        the only red circle in the scene.
- ``shape``:    "the circle"            the only circle.
- ``colour``:   "the red shape"         the only red object.
- ``size``:     "the small red circle" / "the large red circle" when there are exactly two red circles,
                "the smallest red circle" / "the largest red circle" when there are more; used only when the
                referent's size differs from every other red circle's by at least ``size_margin`` (a factor).
- ``relation``: "the circle left of the yellow triangle", "the red square above the blue star": the anchor's
                label is unique; "A left of B" means A's box lies entirely left of B's left edge (right of: entirely
                right of B's right edge; above / below likewise with the top / bottom edges). Used only when the
                referent is the one object of its description in that relation, and every other object of the
                description clearly is not (its centre lies past the anchor's edge), so no near miss can be read
                either way.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

RELATIONS = ("left of", "right of", "above", "below")


@dataclass
class ExpressionConfig:
    size_margin: float = 1.3
    """Size words only when the referent's size differs from every same-label object's by this factor."""
    per_object: int = 3
    """At most this many expressions per object, of different kinds where possible."""
    relations: tuple[str, ...] = RELATIONS
    """Spatial relations to use; empty for no relational expressions."""
    rec_kinds: tuple[str, ...] = ()
    """Kinds (label, shape, colour, size, relation) written to rec.jsonl; empty for all. The refs pickle keeps
    every kind. A base trained on some kinds is tested on those."""


@dataclass
class Expression:
    text: str
    target: int  # index of the referent in the scene's objects
    kind: str  # label | shape | colour | size | relation


def size_of(box) -> float:
    return math.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def holds(relation: str, a, b) -> bool:
    """Box ``a`` lies entirely on the ``relation`` side of box ``b``."""
    if relation == "left of":
        return a[2] <= b[0]
    if relation == "right of":
        return a[0] >= b[2]
    if relation == "above":
        return a[3] <= b[1]
    if relation == "below":
        return a[1] >= b[3]
    raise ValueError(f"unknown relation {relation!r}")


def clearly_not(relation: str, a, b) -> bool:
    """Box ``a``'s centre lies past ``b``'s edge: nobody would say ``a`` is ``relation`` ``b``."""
    cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    if relation == "left of":
        return cx >= b[0]
    if relation == "right of":
        return cx <= b[2]
    if relation == "above":
        return cy >= b[1]
    if relation == "below":
        return cy <= b[3]
    raise ValueError(f"unknown relation {relation!r}")


def _size_expression(objects, i: int, margin: float) -> str | None:
    me = objects[i]
    same = [j for j, o in enumerate(objects) if j != i and (o.colour, o.shape) == (me.colour, me.shape)]
    if not same:
        return None
    mine, others = size_of(me.box), [size_of(objects[j].box) for j in same]
    small, large = ("small", "large") if len(same) == 1 else ("smallest", "largest")
    if all(mine * margin <= s for s in others):
        return f"the {small} {me.colour} {me.shape}"
    if all(mine >= s * margin for s in others):
        return f"the {large} {me.colour} {me.shape}"
    return None


def _relation_expressions(objects, i: int, relations) -> list[str]:
    me = objects[i]
    counts: dict[tuple[str, str], int] = {}
    for o in objects:
        counts[(o.colour, o.shape)] = counts.get((o.colour, o.shape), 0) + 1
    out = []
    for a, anchor in enumerate(objects):
        if a == i or counts[(anchor.colour, anchor.shape)] != 1:
            continue
        for rel in relations:
            if not holds(rel, me.box, anchor.box):
                continue
            # the shortest description of the referent that no other object shares in this relation
            for words, same in (
                (me.shape, lambda o: o.shape == me.shape),
                (f"{me.colour} {me.shape}", lambda o: (o.colour, o.shape) == (me.colour, me.shape)),
            ):
                rivals = [o for j, o in enumerate(objects) if j not in (i, a) and same(o)]
                if all(clearly_not(rel, o.box, anchor.box) for o in rivals):
                    out.append(f"the {words} {rel} the {anchor.colour} {anchor.shape}")
                    break
    return out


def expressions_for_object(objects, i: int, config: ExpressionConfig | None = None) -> dict[str, list[str]]:
    """Every valid expression for object ``i``, by kind."""
    config = config or ExpressionConfig()
    me = objects[i]
    by_kind: dict[str, list[str]] = {}
    if sum((o.colour, o.shape) == (me.colour, me.shape) for o in objects) == 1:
        by_kind["label"] = [f"the {me.colour} {me.shape}"]
    if sum(o.shape == me.shape for o in objects) == 1:
        by_kind["shape"] = [f"the {me.shape}"]
    if sum(o.colour == me.colour for o in objects) == 1:
        by_kind["colour"] = [f"the {me.colour} shape"]
    size = _size_expression(objects, i, config.size_margin)
    if size:
        by_kind["size"] = [size]
    relational = _relation_expressions(objects, i, config.relations)
    if relational:
        by_kind["relation"] = relational
    return by_kind


def expressions_for_scene(
    objects, rng: random.Random, config: ExpressionConfig | None = None
) -> list[Expression]:
    """Up to ``config.per_object`` expressions per object, one per kind first (kinds in random order).

    Objects that no expression singles out (e.g. one of two equal red circles side by side) get none.
    """
    config = config or ExpressionConfig()
    out: list[Expression] = []
    for i in range(len(objects)):
        by_kind = expressions_for_object(objects, i, config)
        pools = {k: rng.sample(v, len(v)) for k, v in by_kind.items()}
        kinds = rng.sample(sorted(pools), len(pools))
        chosen: list[Expression] = []
        while len(chosen) < config.per_object and any(pools.values()):
            for k in kinds:
                if pools[k] and len(chosen) < config.per_object:
                    chosen.append(Expression(pools[k].pop(), i, k))
        out.extend(chosen)
    return out
