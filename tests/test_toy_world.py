"""The shapes world: determinism, bounded overlap, tight boxes, unique referents, and the files `spr eval` reads."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from spr.cli import main
from spr.data.coco import Problems, load_coco
from spr.errors import UserError
from spr.evaluate.readers import read_captions, read_rec
from spr.regions import RegionConfig, regions_for_image
from spr.toy import descriptions as D
from spr.toy.dataset import write_world
from spr.toy.expressions import ExpressionConfig, expressions_for_scene
from spr.toy.world import COLOURS, PRESETS, SHAPES, SceneObject, WorldConfig, make_scene

SMALL = {"train": 6, "val": 3, "test": 3}


def _digest(root: Path) -> dict[str, str]:
    """Hashes of every file a world wrote, except world.json (which records timings)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "world.json"
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=3, counts=SMALL, progress=False)
    return out


# ------------------------------------------------------------------------------ an independent referent checker

_EXPR = re.compile(
    rf"^the (?:(small|large|smallest|largest) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)}|shape)"
    rf"(?: (left of|right of|above|below) the ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}))?$"
)


def _entirely(rel: str, a, b) -> bool:
    return {"left of": a[2] <= b[0], "right of": a[0] >= b[2], "above": a[3] <= b[1], "below": a[1] >= b[3]}[
        rel
    ]


def referents(expression: str, objects, size_margin: float = 1.3) -> list[int]:
    """Objects an expression can mean, read from its words alone (written apart from the generator)."""
    m = _EXPR.match(expression)
    assert m, f"expression outside the grammar: {expression!r}"
    size, colour, shape, rel, anchor_colour, anchor_shape = m.groups()
    found = [
        i
        for i, o in enumerate(objects)
        if (colour is None or o.colour == colour) and shape in ("shape", o.shape)
    ]
    if size:
        if (size in ("small", "large")) != (len(found) == 2):
            return found  # 'small' means one of two, 'smallest' one of three or more
        side = {
            i: math.sqrt((objects[i].box[2] - objects[i].box[0]) * (objects[i].box[3] - objects[i].box[1]))
            for i in found
        }
        pick = (min if size.startswith("small") else max)(found, key=side.get)
        ratio = [max(side[pick], side[i]) / min(side[pick], side[i]) for i in found if i != pick]
        return [pick] if all(r >= size_margin for r in ratio) else found
    if rel:
        anchors = [i for i, o in enumerate(objects) if (o.colour, o.shape) == (anchor_colour, anchor_shape)]
        if len(anchors) != 1:
            return found + anchors  # an ambiguous anchor makes the whole expression ambiguous
        found = [
            i for i in found if i != anchors[0] and _entirely(rel, objects[i].box, objects[anchors[0]].box)
        ]
    return found


# ----------------------------------------------------------------------------------------------------- tests


def test_same_seed_same_files_and_other_seed_other_files(tmp_path, world):
    again = tmp_path / "again"
    write_world(again, seed=3, counts=SMALL, progress=False)
    assert _digest(again) == _digest(world)
    other = tmp_path / "other"
    write_world(other, seed=4, counts=SMALL, progress=False)
    a, b = _digest(world), _digest(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))


def test_splits_hold_different_scenes_with_unique_ids(world):
    hashes, image_ids, ann_ids = set(), set(), set()
    for split in ("train", "val", "test"):
        coco = json.loads((world / split / "annotations.json").read_text())
        assert len(coco["images"]) == SMALL[split]
        for im in coco["images"]:
            h = hashlib.sha256((world / split / "images" / im["file_name"]).read_bytes()).hexdigest()
            assert h not in hashes, f"{split} repeats a scene"
            hashes.add(h)
            assert im["id"] not in image_ids
            image_ids.add(im["id"])
        ids = {a["id"] for a in coco["annotations"]}
        assert not ids & ann_ids
        ann_ids |= ids


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_scenes_respect_the_difficulty_settings(preset):
    config = PRESETS[preset]
    size = config.image_size
    for k in range(40):
        scene = make_scene(config, f"t:{k}", render=False)
        assert config.objects[0] <= len(scene.objects) <= config.objects[1]
        assert {o.colour for o in scene.objects} <= set(config.colours)
        assert {o.shape for o in scene.objects} <= set(config.shapes)
        for i, o in enumerate(scene.objects):
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            assert (
                config.object_size[0] * size - 1e-6
                <= max(x2 - x1, y2 - y1)
                <= config.object_size[1] * size + 1e-6
            )
            assert o.visible >= config.min_visible
            for p in scene.objects[i + 1 :]:
                w = min(x2, p.box[2]) - max(x1, p.box[0])
                h = min(y2, p.box[3]) - max(y1, p.box[1])
                smaller = min((x2 - x1) * (y2 - y1), (p.box[2] - p.box[0]) * (p.box[3] - p.box[1]))
                assert w <= 0 or h <= 0 or w * h <= config.max_overlap * smaller + 1e-9


def test_boxes_are_tight_around_the_drawn_pixels():
    config = WorldConfig(backgrounds=("plain",), max_overlap=0.0, shapes=SHAPES, colours=tuple(COLOURS))
    for k in range(15):
        scene = make_scene(config, f"tight:{k}")
        img = np.asarray(scene.image).astype(int)
        background = img[0, 0]
        ink = np.abs(img - background).sum(axis=-1) > 60
        covered = np.zeros_like(ink)
        for o in scene.objects:
            x1, y1, x2, y2 = o.box
            covered[
                max(int(y1) - 1, 0) : int(math.ceil(y2)) + 1, max(int(x1) - 1, 0) : int(math.ceil(x2)) + 1
            ] = True
            inside = ink[int(y1) : int(math.ceil(y2)), int(x1) : int(math.ceil(x2))]
            # every edge of the box touches the shape
            assert inside[:2].any() and inside[-2:].any() and inside[:, :2].any() and inside[:, -2:].any(), o
        assert not (ink & ~covered).any(), f"pixels drawn outside every box in scene {k}"


def test_every_expression_has_exactly_one_referent_over_many_scenes():
    kinds = set()
    for preset in ("default", "hard"):
        config = PRESETS[preset]
        for k in range(250):
            scene = make_scene(config, f"refs:{preset}:{k}", render=False)
            for e in expressions_for_scene(scene.objects, random.Random(k), ExpressionConfig()):
                kinds.add(e.kind)
                assert referents(e.text, scene.objects) == [e.target], (e, scene.objects)
    assert kinds == {"label", "shape", "colour", "size", "relation"}


def test_the_checker_catches_ambiguous_expressions():
    objs = [
        SceneObject("circle", "red", (0, 0, 10, 10)),
        SceneObject("circle", "red", (30, 0, 40, 10)),
        SceneObject("square", "blue", (60, 0, 70, 10)),
    ]
    assert referents("the red circle", objs) == [0, 1]
    assert referents("the circle left of the blue square", objs) == [0, 1]
    assert referents("the small red circle", objs) == [0, 1]  # equal sizes
    assert referents("the circle", objs[1:]) == [0]


def test_written_expressions_point_at_their_annotated_referent(world):
    for split in ("train", "val", "test"):
        coco = json.loads((world / split / "annotations.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        by_image: dict = {}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            colour, shape = names[a["category_id"]].split(" ")
            by_image.setdefault(a["image_id"], []).append(
                (a["id"], SceneObject(shape, colour, (x, y, x + w, y + h)))
            )
        rows = [json.loads(line) for line in (world / split / "rec.jsonl").read_text().splitlines()]
        assert rows and {r["split"] for r in rows} == {split}
        for r in rows:
            anns = by_image[r["image_id"]]
            found = referents(r["expression"], [o for _, o in anns])
            assert [anns[i][0] for i in found] == [r["ann_id"]], r
            assert np.allclose(anns[found[0]][1].box, r["box"], atol=0.011)


def test_both_rec_layouts_give_the_same_samples(world):
    problems: list[str] = []
    jsonl = read_rec(world / "val" / "rec.jsonl", problems=problems)
    refer = read_rec(world / "val", problems=problems)
    assert not problems
    assert len(jsonl) == len(refer) > 0
    a = {s.id: s for s in jsonl}
    for s in refer:
        assert a[s.id].expression == s.expression and Path(a[s.id].image) == Path(s.image)
        assert np.allclose(a[s.id].box, s.box, atol=1e-6)
        assert Path(s.image).exists()


def test_coco_annotations_captions_and_regions_are_readable(world):
    problems = Problems()
    images = load_coco(
        world / "test" / "annotations.json", world / "test" / "images", on_error="stop", problems=problems
    )
    assert len(images) == SMALL["test"] and not problems
    for image in images:
        regions, reason = regions_for_image(image, RegionConfig())
        assert regions and reason is None  # at least 5 objects in every scene
    caps: list[str] = []
    captions = read_captions(world / "test" / "captions.jsonl", problems=caps)
    assert not caps
    assert {json.loads(line)["kind"] for line in (world / "test" / "captions.jsonl").read_text().splitlines()} == {
        "object", "group", "region"
    }  # fmt: skip
    assert all(Path(c.image).exists() for c in captions)
    grounded = [json.loads(line) for line in (world / "test" / "grounded.jsonl").read_text().splitlines()]
    full = [g for g in grounded if g["kind"] == "image"]
    assert len(full) == SMALL["test"]
    total = sum(len(images[i].objects) for i in range(len(images)))
    assert sum(len(g["groundings"]) for g in full) == total


def test_captions_and_reading_order_read_naturally():
    objs = [
        SceneObject("circle", "red", (50, 0, 60, 10)),
        SceneObject("star", "orange", (0, 40, 10, 50)),
        SceneObject("circle", "red", (0, 2, 10, 12)),
        SceneObject("square", "blue", (20, 1, 30, 11)),
    ]
    assert D.reading_order(objs) == [2, 3, 0, 1]
    assert D.group_caption(objs) == "two red circles, a blue square and an orange star"
    assert D.object_captions(objs[1])[0] == "an orange star"
    assert [p for p, _ in D.grounded_description(objs)] == [
        "red circle",
        "blue square",
        "red circle",
        "orange star",
    ]


def test_rerun_resumes_and_never_mixes_runs(tmp_path):
    out = tmp_path / "w"
    write_world(out, seed=1, counts={"train": 2, "val": 1, "test": 1}, progress=False)
    stamp = (out / "train" / "rec.jsonl").stat().st_mtime_ns
    write_world(out, seed=1, counts={"train": 2, "val": 1, "test": 1}, progress=False)
    assert (out / "train" / "rec.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings.*seed 1 here, 2 asked"):
        write_world(out, seed=2, counts={"train": 2, "val": 1, "test": 1}, progress=False)
    manifest = write_world(
        out, seed=2, counts={"train": 2, "val": 1, "test": 1}, overwrite=True, progress=False
    )
    assert manifest["seed"] == 2 and manifest["complete"]
    # an interrupted run: the manifest is incomplete and a split is half written
    manifest["complete"] = False
    (out / "world.json").write_text(json.dumps(manifest))
    (out / "test").rename(out / "test.partial")
    write_world(out, seed=2, counts={"train": 2, "val": 1, "test": 1}, progress=False)
    assert (out / "test" / "rec.jsonl").exists() and not (out / "test.partial").exists()
    assert (out / "train" / "rec.jsonl").stat().st_mtime_ns != stamp  # overwritten once, then kept
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a shapes world"):
        write_world(foreign, progress=False)


def test_bad_settings_name_what_is_wrong():
    with pytest.raises(UserError, match="hexagon"):
        WorldConfig(shapes=("circle", "hexagon"))
    with pytest.raises(UserError, match="could not fit"):
        make_scene(WorldConfig(objects=(20, 20), object_size=(0.4, 0.5), max_overlap=0.0), 0, render=False)


def test_cli_writes_a_world_and_reports_bad_options(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["toy", "world", "--out", str(out), "--train", "2", "--val", "1", "--test", "1", "--preset", "easy",
                 "--size", "96", "--quiet"])  # fmt: skip
    assert code == 0
    assert "| train" in capsys.readouterr().out
    world_json = json.loads((out / "world.json").read_text())
    assert world_json["world"]["image_size"] == 96 and world_json["world"]["shapes"] == [
        "circle",
        "square",
        "triangle",
    ]
    assert (
        main(["toy", "world", "--out", str(tmp_path / "bad"), "--shapes", "circle,hexagon", "--quiet"]) == 2
    )
    assert "hexagon" in capsys.readouterr().err
