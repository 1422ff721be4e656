import json

import numpy as np
import pytest

from spr import boxes as B
from spr.cli import main
from spr.data.coco import load_coco
from spr.data.jsonl import read_records
from spr.data.records import Region
from spr.errors import UserError
from spr.regions import RegionConfig, grow_region, regions_for_image


def test_every_region_holds_more_than_four_objects_inside_its_box(coco):
    ann, images = coco
    imgs = load_coco(ann, images)
    regions = [r for im in imgs for r in regions_for_image(im, RegionConfig(per_image=3))[0]]
    assert len(regions) >= 4  # two eligible images, up to 3 regions each
    for r in regions:
        assert len(r.objects) >= 5
        rb = r.region_box
        for o in r.objects:
            # at least half of each member lies inside the region box
            assert B.intersection_over_area([o["box"]], [rb])[0, 0] >= 0.5
        # the region box is the union of (some of) its objects: every edge touches one of them
        ob = np.array([o["box"] for o in r.objects])
        assert rb[0] in ob[:, 0] and rb[1] in ob[:, 1] and rb[2] in ob[:, 2] and rb[3] in ob[:, 3]
        assert rb[2] <= r.image_size[0] and rb[3] <= r.image_size[1]


def test_image_with_too_few_objects_is_skipped_with_a_reason(coco):
    ann, images = coco
    small = load_coco(ann, images)[2]
    regions, reason = regions_for_image(small, RegionConfig())
    assert regions == [] and "fewer than 5" in reason


def test_growth_merges_the_nearest_object_first():
    # a row of boxes: from the left one, growth must proceed left to right
    boxes = np.array(
        [
            [0, 0, 10, 10],
            [15, 0, 25, 10],
            [100, 0, 110, 10],
            [30, 0, 40, 10],
            [60, 0, 70, 10],
            [200, 0, 210, 10],
        ],
        float,
    )
    assert grow_region(boxes, 0, 5) == [0, 1, 3, 4, 2]


def test_regions_are_deterministic_for_a_seed_and_change_with_it(coco):
    ann, images = coco
    imgs = load_coco(ann, images)
    a = [r.to_dict() for im in imgs for r in regions_for_image(im, RegionConfig(seed=1, per_image=2))[0]]
    b = [r.to_dict() for im in imgs for r in regions_for_image(im, RegionConfig(seed=1, per_image=2))[0]]
    c = [r.to_dict() for im in imgs for r in regions_for_image(im, RegionConfig(seed=2, per_image=2))[0]]
    assert a == b
    assert [r["source"] for r in a] != [r["source"] for r in c]


def test_cli_writes_regions_and_resumes_without_duplicates(coco, tmp_path, capsys):
    ann, images = coco
    out = tmp_path / "regions.jsonl"
    argv = [
        "regions",
        "--annotations",
        str(ann),
        "--images",
        str(images),
        "--out",
        str(out),
        "--per-image",
        "2",
    ]
    assert main(argv) == 0
    first = read_records(out, Region)
    # simulate a kill in the middle of writing the last line
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 20])
    assert main(argv) == 0
    again = read_records(out, Region)
    assert sorted(r.id for r in again) == sorted(r.id for r in first)
    assert {r.id: r.to_dict() for r in again} == {r.id: r.to_dict() for r in first}
    summary = capsys.readouterr().out
    assert "regions written" in summary and "fewer than 5 objects" in summary


def _write(tmp_path, data):
    p = tmp_path / "bad.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_truncated_json_is_a_clear_error_not_a_traceback(coco, tmp_path, capsys):
    ann, images = coco
    bad = _write(tmp_path, ann.read_text()[:200])
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        load_coco(bad, images)
    assert (
        main(
            [
                "regions",
                "--annotations",
                str(bad),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "r.jsonl"),
            ]
        )
        == 2
    )
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mutate, kind",
    [
        (lambda d: d["annotations"][0].update(bbox=[10, 10, 0, 5]), "zero-area box"),
        (lambda d: d["annotations"][0].update(bbox=[5000, 10, 20, 20]), "box outside the image"),
        (lambda d: d["annotations"][0].update(category_id=99), "unknown category id"),
        (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "duplicate annotation id"),
        (lambda d: d["images"][0].update(file_name="missing.png"), "missing image file"),
        (lambda d: d["annotations"][0].update(bbox=["a", 1, 2, 3]), "bad box"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 3]), "bad box"),
    ],
)
def test_broken_records_are_named_and_skipped_or_stop(coco, tmp_path, mutate, kind):
    ann, images = coco
    data = json.loads(ann.read_text())
    mutate(data)
    bad = _write(tmp_path, json.dumps(data))
    from spr.data.coco import Problems

    problems = Problems()
    imgs = load_coco(bad, images, problems=problems)
    assert problems.counts[kind] == 1, problems.counts
    assert "bad.json" in problems.examples[kind][0]
    assert len(imgs) >= 2
    with pytest.raises(UserError, match="bad.json"):
        load_coco(bad, images, on_error="stop")


def test_corrupt_image_is_reported(coco, tmp_path):
    ann, images = coco
    (images / "img001.png").write_bytes(b"not a png")
    from spr.data.coco import Problems

    problems = Problems()
    imgs = load_coco(ann, images, problems=problems)
    assert problems.counts["unreadable image"] == 1 and len(imgs) == 2


def test_partly_outside_box_is_clipped_to_the_image(coco, tmp_path):
    ann, images = coco
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [600, 400, 100, 100]
    imgs = load_coco(_write(tmp_path, data), images)
    obj = next(o for o in imgs[0].objects if o.annotation_id == data["annotations"][0]["id"])
    assert obj.box == (600.0, 400.0, 640.0, 480.0)
