"""Region captions and grounded region descriptions of the shapes world.

- Captions are plain English: "a red circle" for one object, "two red circles, a blue square and an orange
  star" for a group (objects counted by label, in reading order of their first appearance).
- Grounded descriptions are lists of (phrase, box) in reading order (top to bottom by centre row band, then
  left to right), with no text format attached, so that any box codec can render them as a training target.
"""

from __future__ import annotations

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + "es" if shape.endswith(("s", "x", "sh", "ch")) else shape + "s"


def label_of(obj) -> str:
    return f"{obj.colour} {obj.shape}"


def reading_order(objects, band: float | None = None) -> list[int]:
    """Indices of ``objects`` top to bottom, then left to right. Centres within ``band`` pixels of each other
    vertically (default: half the median object height) count as one row, so a slightly lower object to the left
    still comes first."""
    if not objects:
        return []
    if band is None:
        heights = sorted(o.box[3] - o.box[1] for o in objects)
        band = max(heights[len(heights) // 2] / 2, 1.0)
    centres = [((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in objects]
    order = sorted(range(len(objects)), key=lambda i: centres[i][1])
    rows: list[list[int]] = []
    for i in order:
        if rows and centres[i][1] - centres[rows[-1][0]][1] <= band:
            rows[-1].append(i)
        else:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda i: centres[i][0])]


def object_captions(obj) -> list[str]:
    label = label_of(obj)
    return [f"{article(label)} {label}", f"{label}"]


def group_caption(objects) -> str:
    """Objects counted by label in reading order: "two red circles, a blue square and an orange star"."""
    counts: dict[tuple[str, str], int] = {}
    for i in reading_order(objects):
        key = (objects[i].colour, objects[i].shape)
        counts[key] = counts.get(key, 0) + 1
    parts = []
    for (colour, shape), n in counts.items():
        if n == 1:
            parts.append(f"{article(colour)} {colour} {shape}")
        else:
            parts.append(f"{NUMBERS[n] if n < len(NUMBERS) else n} {colour} {plural(shape)}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def grounded_description(objects) -> list[tuple[str, list[float]]]:
    """(phrase, box) for every object, in reading order; the phrase is the object's label."""
    return [(label_of(objects[i]), [float(v) for v in objects[i].box]) for i in reading_order(objects)]
