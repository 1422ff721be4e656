"""Reader for the Flickr30k Entities layout (phrase grounding).

::

    ROOT/Sentences/<image_id>.txt     one sentence per line, phrases marked "[/EN#18/people A child]"
    ROOT/Annotations/<image_id>.xml   PASCAL-VOC-like: <object><name>18</name><bndbox>...</bndbox></object>
    ROOT/{train,val,test}.txt         optional image-id lists that define the splits
    IMAGES/<image_id>.jpg             default IMAGES: ROOT/flickr30k-images, else ROOT/images

One sample per phrase that has at least one box (phrases marked ``nobndbox`` or ``scene`` only, and the
non-visual id 0, are left out, as the benchmark does). An entity can have several boxes; the protocols that score
them live in :mod:`spr.evaluate.phrase_grounding`.

Coordinates: the XML holds 1-based inclusive pixel indices (MATLAB style). The continuous original-pixel box of
pixels ``xmin..xmax`` is ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from spr import boxes as B
from spr.errors import UserError

Box = tuple[float, float, float, float]

_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]*)*)\s+([^\]]*)\]")


@dataclass
class PhraseSample:
    """One phrase of one sentence and every box of its entity."""

    id: str  # "<image_id>/<sentence index>/<phrase index>"
    image: str
    phrase: str
    sentence: str
    boxes: list[Box] = field(default_factory=list)
    entity_id: str = ""
    phrase_type: list[str] = field(default_factory=list)
    split: str = "all"


def parse_sentence(line: str) -> tuple[str, list[dict]]:
    """The plain sentence and its phrases ``{"phrase", "entity_id", "types", "start"}`` (character offsets)."""
    phrases = []
    plain = []
    pos = 0
    length = 0
    for m in _PHRASE.finditer(line):
        before = line[pos : m.start()]
        plain.append(before)
        length += len(before)
        text = m.group(3).strip()
        types = [t for t in m.group(2).split("/") if t]
        phrases.append({"phrase": text, "entity_id": m.group(1), "types": types, "start": length})
        plain.append(text)
        length += len(text)
        pos = m.end()
    plain.append(line[pos:])
    return " ".join("".join(plain).split()), phrases


def parse_annotation(path: Path) -> dict:
    """``{"boxes": {entity_id: [box, ...]}, "nobox": set, "scene": set, "size": (W, H) or None}``."""
    root = ET.parse(path).getroot()
    out: dict = {"boxes": {}, "nobox": set(), "scene": set(), "size": None}
    size = root.find("size")
    if size is not None:
        try:
            out["size"] = (int(size.findtext("width")), int(size.findtext("height")))
        except (TypeError, ValueError):
            out["size"] = None
    for obj in root.findall("object"):
        names = [n.text.strip() for n in obj.findall("name") if n.text]
        bnd = obj.find("bndbox")
        if bnd is not None:
            vals = [bnd.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            try:
                xmin, ymin, xmax, ymax = (float(v) for v in vals)
            except (TypeError, ValueError):
                continue
            box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
            if B.problem(box):
                continue
            for name in names:
                out["boxes"].setdefault(name, []).append(box)
        else:
            if (obj.findtext("nobndbox") or "0").strip() not in ("0", ""):
                out["nobox"].update(names)
            if (obj.findtext("scene") or "0").strip() not in ("0", ""):
                out["scene"].update(names)
    return out


def _split_lists(root: Path) -> dict[str, str]:
    """image id -> split, from ROOT/<split>.txt files (train/val/test and any other *.txt list)."""
    split_of: dict[str, str] = {}
    for name in ("train", "val", "test"):
        f = root / f"{name}.txt"
        if f.exists():
            for line in f.read_text(encoding="utf-8").split():
                split_of[line.strip()] = name
    return split_of


def read_flickr30k(
    root: str | Path,
    images_dir: str | Path | None = None,
    splits=None,
    problems: list[str] | None = None,
    limit_images: int | None = None,
) -> list[PhraseSample]:
    """Phrase grounding samples from a Flickr30k Entities directory; unreadable files are reported and skipped."""
    root = Path(root)
    problems = problems if problems is not None else []
    sent_dir, ann_dir = root / "Sentences", root / "Annotations"
    if not sent_dir.is_dir() or not ann_dir.is_dir():
        raise UserError(
            f"{root}: expected the Flickr30k Entities layout (Sentences/ and Annotations/ directories)"
        )
    if images_dir is None:
        images_dir = root / "flickr30k-images"
        if not images_dir.is_dir():
            images_dir = root / "images"
    images_dir = Path(images_dir)
    split_of = _split_lists(root)

    out: list[PhraseSample] = []
    files = sorted(sent_dir.glob("*.txt"))
    n_images = 0
    for sent_file in files:
        image_id = sent_file.stem
        split = split_of.get(image_id, "all") if split_of else "all"
        if splits and split not in splits:
            continue
        if limit_images is not None and n_images >= limit_images:
            break
        ann_file = ann_dir / f"{image_id}.xml"
        try:
            ann = parse_annotation(ann_file)
        except FileNotFoundError:
            problems.append(f"{ann_file}: missing; the sentences of image {image_id} are skipped")
            continue
        except ET.ParseError as e:
            problems.append(f"{ann_file}: not valid XML ({e}); the sentences of image {image_id} are skipped")
            continue
        try:
            lines = sent_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{sent_file}: cannot read ({e}); skipped")
            continue
        n_images += 1
        image = str(images_dir / f"{image_id}.jpg")
        for s, line in enumerate(x for x in lines if x.strip()):
            sentence, phrases = parse_sentence(line)
            for p, ph in enumerate(phrases):
                boxes = ann["boxes"].get(ph["entity_id"])
                if ph["entity_id"] == "0" or not boxes or not ph["phrase"]:
                    continue
                out.append(
                    PhraseSample(
                        id=f"{image_id}/{s}/{p}",
                        image=image,
                        phrase=ph["phrase"],
                        sentence=sentence,
                        boxes=list(boxes),
                        entity_id=ph["entity_id"],
                        phrase_type=ph["types"],
                        split=split,
                    )
                )
    return out
