"""Linear paths at real sizes: what was quadratic before issue 28 finishes in seconds at tens of thousands of
records, with the same messages."""

from __future__ import annotations

import json
import time

import pytest

from spr.data.coco import Problems, load_coco
from spr.data.jsonl import write_jsonl
from spr.data.records import Region
from spr.errors import UserError
from spr.generate import read_regions


def test_annotations_of_missing_images_are_skipped_in_linear_time(tmp_path):
    n = 40_000  # every image file missing: each annotation's image was skipped (was: a scan of all images each)
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(n)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(n)]
        + [{"id": n, "image_id": "nowhere", "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "cup"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    problems = Problems()
    start = time.perf_counter()
    images = load_coco(path, tmp_path, problems=problems)
    assert time.perf_counter() - start < 30  # about an hour before
    assert images == []
    assert problems.counts["missing image file"] == n
    assert problems.counts["unknown image id"] == 1  # the one whose image is not listed at all


def test_a_repeated_region_id_is_named_in_linear_time(tmp_path):
    path = tmp_path / "regions.jsonl"
    n = 60_000  # was: ids.count per id, about 40 s at this size
    region = dict(image="x.png", image_size=[10, 10], region_box=[0, 0, 5, 5], objects=[])
    write_jsonl(path, [Region(id=f"r{i}", **region) for i in [*range(n), 17, 5]])
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"region ids must be unique; repeated: r17, r5$"):
        read_regions(path)
    assert time.perf_counter() - start < 20
