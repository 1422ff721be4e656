"""Shared fixtures: small COCO-style datasets written to disk the way users bring them."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def make_coco(root: Path, n_images: int = 3, size=(640, 480), objects=(7, 6, 3), seed: int = 0) -> Path:
    """Write images with coloured rectangles and their COCO annotations; returns the annotation path.

    Image i holds ``objects[i]`` non-overlapping objects (the last image has too few for a region by default).
    """
    rng = random.Random(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": f"{c} box"} for i, c in enumerate(COLOURS)]
    images, annotations = [], []
    for i in range(n_images):
        im = Image.new("RGB", size, (235, 235, 235))
        draw = ImageDraw.Draw(im)
        placed: list[tuple[float, float, float, float]] = []
        while len(placed) < objects[i % len(objects)]:
            w, h = rng.randint(30, 90), rng.randint(30, 90)
            x, y = rng.randint(0, size[0] - w), rng.randint(0, size[1] - h)
            box = (x, y, x + w, y + h)
            if any(
                not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]) for b in placed
            ):
                continue
            placed.append(box)
            cat = rng.randrange(len(COLOURS))
            draw.rectangle(box, fill=list(COLOURS.values())[cat])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        name = f"img{i + 1:03d}.png"
        im.save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": size[0], "height": size[1]})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def coco(tmp_path) -> tuple[Path, Path]:
    """(annotations.json, images dir) of three 640x480 images with 7, 6 and 3 objects."""
    return make_coco(tmp_path), tmp_path / "images"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family) -> Path``: a tiny random model of that family, built once per session."""
    from spr.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family, seed=0)
        return built[family]

    return get
