"""Benchmark data as it sits on disk: lmms-lab's RefCOCO parquet files (images embedded) and Ref-L4 (parquet or
JSON annotations, images in a directory or in images.tar.gz), each built here in the published layout; the
dispatch of `read_rec`; the Ref-L4 submission file; the train/eval overlap check."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from evaluate_fixtures import SCENES, make_rec_jsonl, make_refer, make_regions, write_images
from test_evaluate_predict import ScriptedAdapter, _box_text, run_task

from spr.errors import UserError
from spr.evaluate import overlap, rec, refl4
from spr.evaluate.readers import read_rec, rec_layout

QUESTION = "Please carefully observe the area circled in the image and come up with a caption for the area."


def _xywh(box):
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def _coco_name(name: str) -> str:
    return f"COCO_train2014_{int(name[-1]):012d}.jpg"


# ---------------------------------------------------------------------------------- lmms-lab parquet


def lmms_rows(images: dict[str, Path], names=("img1", "img2")) -> list[dict]:
    """One row per referent, as lmms-lab/RefCOCO has them: every row carries its image's bytes."""
    rows = []
    for name in names:
        for k, (label, box) in enumerate(SCENES[name][1]):
            ann = 1000 * int(name[-1]) + k
            rows.append(
                {
                    "question_id": str(ann),
                    "image": {"bytes": images[name].read_bytes(), "path": None},
                    "question": QUESTION,
                    "answer": [f"the {label}", label],
                    "segmentation": [float(v) for v in (box[0], box[1], box[2], box[1], box[2], box[3])],
                    "bbox": [float(v) for v in _xywh(box)],
                    "iscrowd": 0,
                    "file_name": _coco_name(name).replace(".jpg", f"_{ann}.jpg"),
                }
            )
    return rows


def write_lmms(path: Path, rows: list[dict]) -> Path:
    """A parquet file written the way lmms-lab's were: `datasets` with an Image feature (struct {bytes, path})."""
    import datasets

    features = datasets.Features(
        {
            "question_id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Sequence(datasets.Value("string")),
            "segmentation": datasets.Sequence(datasets.Value("float32")),
            "bbox": datasets.Sequence(datasets.Value("float32")),
            "iscrowd": datasets.Value("int8"),
            "file_name": datasets.Value("string"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: [r[k] for r in rows] for k in features}
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def make_lmms(root: Path) -> Path:
    """lmms-lab/RefCOCO's tree: data/<split>-0000k-of-0000n.parquet; val in two shards (img1), testA (img2)."""
    images = write_images(root / "src")
    val = lmms_rows(images, ["img1"])
    write_lmms(root / "data" / "val-00000-of-00002.parquet", val[:1])
    write_lmms(root / "data" / "val-00001-of-00002.parquet", val[1:])
    write_lmms(root / "data" / "testA-00000-of-00001.parquet", lmms_rows(images, ["img2"]))
    return root


def test_lmms_parquet_gives_one_sample_per_expression_with_images_cached(tmp_path):
    root = make_lmms(tmp_path / "RefCOCO")
    assert rec_layout(root)[0] == "lmms-lab"
    problems: list[str] = []
    cache = tmp_path / "cache"
    samples = read_rec(root, problems=problems, cache_dir=cache)
    assert problems == []
    assert len(samples) == 8  # 4 referents x 2 expressions, as lmms-eval explodes `answer`
    by_id = {s.id: s for s in samples}
    s = by_id["val/1001/0"]
    assert s.expression == "the blue box" and s.split == "val"
    assert s.box == SCENES["img1"][1][1][1]  # [x, y, w, h] -> (x1, y1, x2, y2), original pixels
    assert by_id["val/1001/1"].expression == "blue box"
    assert {x.split for x in samples} == {"val", "testA"}
    # images written once per distinct image, byte for byte, and readable where the runner looks
    assert len(list(cache.iterdir())) == 2
    assert Path(s.image).read_bytes() == (tmp_path / "RefCOCO" / "src" / "img1.png").read_bytes()
    assert s.file_name == "COCO_train2014_000000000001_1001.jpg"
    # --splits reads only the files of those splits; a parquet file can be given alone
    assert {x.split for x in read_rec(root, splits=["testA"], cache_dir=cache)} == {"testA"}
    one = read_rec(root / "data" / "testA-00000-of-00001.parquet", cache_dir=cache)
    assert [x.id for x in one] == ["testA/2000/0", "testA/2000/1", "testA/2001/0", "testA/2001/1"]


def test_lmms_hub_converted_layout_and_raw_bytes_and_paths(tmp_path):
    """The hub's converted tree (default/<split>/0000.parquet), an image column of raw bytes, and rows whose
    image is a path."""
    images = write_images(tmp_path / "images")
    rows = lmms_rows(images, ["img1"])
    table = pa.table(
        {
            "question_id": [r["question_id"] for r in rows],
            "image": pa.array([r["image"]["bytes"] for r in rows], pa.binary()),
            "answer": [r["answer"] for r in rows],
            "bbox": [r["bbox"] for r in rows],
        }
    )
    (tmp_path / "default" / "val").mkdir(parents=True)
    pq.write_table(table, tmp_path / "default" / "val" / "0000.parquet")
    by_path = pa.table(
        {
            "image": [{"bytes": None, "path": "img2.png"}],
            "answer": [["the green box"]],
            "bbox": [_xywh(SCENES["img2"][1][0][1])],
        }
    )
    (tmp_path / "default" / "test").mkdir(parents=True)
    pq.write_table(by_path, tmp_path / "default" / "test" / "0000.parquet")
    samples = read_rec(tmp_path / "default", images_dir=tmp_path / "images", cache_dir=tmp_path / "cache")
    assert {s.split for s in samples} == {"val", "test"} and len(samples) == 5
    test = next(s for s in samples if s.split == "test")
    assert test.id == "test/0000:1/0" and test.image == str(
        tmp_path / "images" / "img2.png"
    )  # no question_id


def test_lmms_malformed_files_and_rows_are_named(tmp_path):
    images = write_images(tmp_path / "src")
    rows = lmms_rows(images, ["img1"])
    bad = [
        {**rows[0], "question_id": "short-bbox", "bbox": [1.0, 2.0, 3.0]},
        {**rows[0], "question_id": "flat-bbox", "bbox": [1.0, 2.0, 0.0, 5.0]},
        {
            **rows[0],
            "question_id": "not-an-image",
            "image": {"bytes": b"\x89PNG but not really", "path": None},
        },
        {**rows[0], "question_id": "no-expression", "answer": []},
        rows[1],
    ]
    path = write_lmms(tmp_path / "data" / "val-00000-of-00001.parquet", bad)
    problems: list[str] = []
    samples = read_rec(path, problems=problems, cache_dir=tmp_path / "cache")
    assert [s.id for s in samples] == ["val/1001/0", "val/1001/1"]  # only the good row
    text = "\n".join(problems)
    assert (
        f"{path}: row 1 (question_id 'short-bbox'): bbox must be [x, y, w, h] (four numbers), got 3 value(s)"
        in text
    )
    assert "row 2 (question_id 'flat-bbox'): unusable bbox" in text and "zero or negative size" in text
    assert "row 3 (question_id 'not-an-image'): undecodable image" in text
    assert "row 4 (question_id 'no-expression'): no referring expression in 'answer'" in text
    assert len(list((tmp_path / "cache").iterdir())) == 1  # nothing written for the skipped rows

    # a missing column is the file's problem: named, with what the file has
    (tmp_path / "nobbox").mkdir()
    pq.write_table(
        pq.read_table(path).drop_columns(["bbox"]), tmp_path / "nobbox" / "val-00000-of-00001.parquet"
    )
    with pytest.raises(
        UserError, match=r"missing column\(s\) bbox .*it has question_id, image, question, answer"
    ):
        read_rec(tmp_path / "nobbox", cache_dir=tmp_path / "cache")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "val-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="not a readable parquet file"):
        read_rec(tmp_path / "junk", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------- Ref-L4

REFL4_COLUMNS = ("id", "caption", "bbox", "bbox_area", "bbox_id", "ori_category_id", "image_id", "height",
                 "width", "file_name", "is_rewrite", "split")  # fmt: skip


def refl4_rows() -> list[dict]:
    """Ref-L4 annotations as its dataset card shows them: ids 0.., [x, y, w, h] boxes, Objects365 names."""
    rows = []
    for split, name in (("val", "img1"), ("test", "img2")):
        size, objects = SCENES[name]
        for label, box in objects:
            x, y, w, h = (float(v) for v in _xywh(box))
            n = len(rows)
            rows.append(
                {
                    "id": n,
                    "caption": f"The {label} in the picture.",
                    "bbox": [x, y, w, h],
                    "bbox_area": w * h,
                    "bbox_id": f"o365_{500 + n}",
                    "ori_category_id": "o365_64",
                    "image_id": f"o365_{name}",
                    "height": size[1],
                    "width": size[0],
                    "file_name": f"objects365_v2_0000000{name[-1]}.jpg",
                    "is_rewrite": bool(n % 2),
                    "split": split,
                }
            )
    return rows


def write_refl4_images(directory: Path) -> dict[str, Path]:
    """The scenes saved under Ref-L4's file names (JPEG, as Objects365's are)."""
    src = write_images(directory / ".src")
    out = {}
    for name, path in src.items():
        target = directory / f"objects365_v2_0000000{name[-1]}.jpg"
        from PIL import Image

        Image.open(path).convert("RGB").save(target, quality=95)
        out[name] = target
    for p in src.values():
        p.unlink()
    (directory / ".src").rmdir()
    return out


def make_refl4(root: Path, images: str = "dir") -> Path:
    """Ref-L4's tree: ref-l4-val.parquet, ref-l4-test.parquet, and images/ (extracted) or images.tar.gz."""
    root.mkdir(parents=True, exist_ok=True)
    rows = refl4_rows()
    for split in ("val", "test"):
        part = [r for r in rows if r["split"] == split]
        pq.write_table(pa.Table.from_pylist(part), root / f"ref-l4-{split}.parquet")
    staged = write_refl4_images(root / ("images" if images == "dir" else ".staged"))
    if images == "tar":
        with tarfile.open(root / "images.tar.gz", "w:gz") as tar:
            for p in staged.values():
                tar.add(p, arcname=p.name)  # members named by file_name, as the Ref-L4 dataloader expects
        for p in staged.values():
            p.unlink()
        (root / ".staged").rmdir()
    return root


def test_refl4_parquet_layout(tmp_path):
    root = make_refl4(tmp_path / "Ref-L4")
    layout, files = rec_layout(root)
    assert layout == "ref-l4" and [f.name for f in files] == ["ref-l4-test.parquet", "ref-l4-val.parquet"]
    problems: list[str] = []
    samples = read_rec(root, problems=problems)
    assert problems == [] and len(samples) == 4
    by_id = {s.id: s for s in samples}
    s = by_id["1"]
    assert s.source_id == 1 and s.benchmark == "ref-l4" and s.split == "val"
    assert s.expression == "The blue box in the picture." and s.box == SCENES["img1"][1][1][1]
    assert s.image == str(root / "images" / "objects365_v2_00000001.jpg") and Path(s.image).exists()
    assert {x.split for x in read_rec(root, splits=["test"])} == {"test"}

    # the same records as a JSON list (the dataset card's form)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "ref-l4-val.json").write_text(
        json.dumps([r for r in refl4_rows() if r["split"] == "val"])
    )
    from_json = read_rec(tmp_path / "ann" / "ref-l4-val.json", images_dir=root / "images")
    assert rec_layout(tmp_path / "ann" / "ref-l4-val.json")[0] == "ref-l4"
    assert [(x.id, x.box, x.image) for x in from_json] == [
        (x.id, x.box, x.image) for x in samples if x.split == "val"
    ]


def test_refl4_images_come_out_of_images_tar_once(tmp_path, capsys):
    root = make_refl4(tmp_path / "Ref-L4", images="tar")
    cache = tmp_path / "cache"
    problems: list[str] = []
    samples = read_rec(root, problems=problems, cache_dir=cache)
    assert problems == [] and all(Path(s.image).parent == cache and Path(s.image).exists() for s in samples)
    assert "extracting 2 Ref-L4 image(s)" in capsys.readouterr().err
    again = read_rec(root, cache_dir=cache)  # already extracted: the archive is not opened again
    assert [s.image for s in again] == [
        s.image for s in samples
    ] and "extracting" not in capsys.readouterr().err
    # without a cache directory nor extracted images: said once, counted by the runner as image failures
    problems = []
    read_rec(root, problems=problems)
    assert len(problems) == 1 and "2 Ref-L4 image(s) (4 annotations" in problems[0]


def test_refl4_malformed_records_and_files(tmp_path):
    rows = refl4_rows()
    rows[0]["bbox"] = [1.0, 2.0, 3.0]
    rows[1]["bbox"] = [1.0, 2.0, -3.0, 4.0]
    rows[2]["caption"] = None
    path = tmp_path / "ref-l4-val.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems: list[str] = []
    samples = read_rec(path, problems=problems)
    assert [s.id for s in samples] == ["3"]
    text = "\n".join(problems)
    assert f"{path}: record 1 (id 0): bbox must be [x, y, w, h] (four numbers), got 3 value(s)" in text
    assert (
        "record 2 (id 1): unusable bbox [x, y, w, h] = [1.0, 2.0, -3.0, 4.0]: zero or negative size" in text
    )
    assert "record 3 (id 2): missing field(s) caption" in text
    # JSON holds what parquet cannot: a box as a string, a record that is not an object
    rows = refl4_rows()
    rows[1]["bbox"] = "12 13 14 15"
    (tmp_path / "ann.json").write_text(json.dumps([*rows, "junk"]))
    problems = []
    assert [s.id for s in read_rec(tmp_path / "ann.json", problems=problems)] == ["0", "2", "3"]
    assert "record 2 (id 1): bbox must be [x, y, w, h] (four numbers), got '12 13 14 15'" in "\n".join(
        problems
    )
    assert "record 5: not an object" in "\n".join(problems)

    table = pa.Table.from_pylist(refl4_rows()).drop_columns(["file_name"])
    pq.write_table(table, tmp_path / "nofile.parquet")
    with pytest.raises(
        UserError, match=r"nofile.parquet: not the Ref-L4 layout: missing column\(s\) file_name"
    ):
        read_rec(tmp_path / "nofile.parquet")
    (tmp_path / "bad.json").write_text('[{"caption": "x", "bbox": [1, 2, 3, 4], "file_name": "a.jpg"}]')
    with pytest.raises(UserError, match=r"not the Ref-L4 layout: missing column\(s\) id"):
        read_rec(tmp_path / "bad.json")


def test_read_rec_dispatches_on_what_the_path_holds(tmp_path):
    assert rec_layout(make_rec_jsonl(tmp_path / "j"))[0] == "jsonl"
    assert rec_layout(make_refer(tmp_path / "r"))[0] == "refer"
    assert rec_layout(make_lmms(tmp_path / "l"))[0] == "lmms-lab"
    assert rec_layout(make_refl4(tmp_path / "f"))[0] == "ref-l4"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"neither refs\(\*\)\.p .* nor \*\.parquet"):
        read_rec(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in [*(tmp_path / "l" / "data").glob("testA*"), tmp_path / "f" / "ref-l4-val.parquet"]:
        (mixed / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UserError, match="two layouts"):
        read_rec(mixed)


def test_duplicate_ids_are_reported_and_skipped(tmp_path):
    path = make_rec_jsonl(tmp_path)
    path.write_text(path.read_text() + path.read_text().splitlines()[0] + "\n")
    problems: list[str] = []
    assert len(read_rec(path, problems=problems)) == 4
    assert any("id 'img1-0' given more than once" in p for p in problems)


# --------------------------------------------------------------------------------- through the runner


def test_refl4_run_writes_the_submission_file(tmp_path):
    root = make_refl4(tmp_path / "Ref-L4")
    answers = {
        "The red box in the picture.": _box_text("img1", 0),
        "The green box in the picture.": "no idea",
    }
    m = run_task(rec, "scripted", root, tmp_path / "run", ScriptedAdapter(answers))
    assert m["n"] == 4 and m["acc@0.5"] == pytest.approx(1 / 4) and m["parse_fail"] == pytest.approx(3 / 4)
    sub = json.loads((tmp_path / "run" / refl4.SUBMISSION_FILE).read_text())
    assert m["refl4_submission"] == str(tmp_path / "run" / refl4.SUBMISSION_FILE)
    assert sorted(r["id"] for r in sub) == [0, 1, 2, 3]  # Ref-L4's own integer ids, every annotation once
    by_id = {r["id"]: r for r in sub}
    assert by_id[0]["format"] == "xyxy" and by_id[0]["pred_bbox"] == pytest.approx(
        list(SCENES["img1"][1][0][1]), abs=0.5
    )  # noqa: E501
    assert by_id[2]["pred_bbox"] == [0.0, 0.0, 0.0, 0.0]  # no box: IoU 0 under Ref-L4's evaluator too


def test_lmms_run_reads_cached_images_and_resumes(tmp_path):
    root = make_lmms(tmp_path / "RefCOCO")
    adapter = ScriptedAdapter({"the red box": _box_text("img1", 0), "blue box": _box_text("img1", 1)})
    out = tmp_path / "runs" / "base"
    m = run_task(rec, "scripted", root, out, adapter, splits=["val"])
    assert m["n"] == 4 and m["image_fail"] == 0.0 and m["acc@0.5"] == pytest.approx(2 / 4)
    assert len(list((tmp_path / "runs" / "base.images").iterdir())) == 1  # beside the run, not in it
    again = ScriptedAdapter(adapter.answers)
    assert run_task(rec, "scripted", root, out, again, splits=["val"])["acc@0.5"] == m["acc@0.5"]
    assert again.asked == []


# ------------------------------------------------------------------------------------------ overlap


def test_image_key_treats_coco_namings_as_one_image():
    assert overlap.image_key("a/b/COCO_train2014_000000380440.jpg") == "coco:000000380440"
    assert overlap.image_key("COCO_train2014_000000380440_491042.jpg") == "coco:000000380440"
    assert overlap.image_key("/coco/train2017/000000380440.jpg") == "coco:000000380440"
    assert overlap.image_key("/o365/patch3/objects365_v2_00922765.jpg") == "objects365_v2_00922765.jpg"


def test_overlap_with_training_regions_is_counted_and_warned(tmp_path, capsys):
    root = make_refl4(tmp_path / "Ref-L4")
    regions = make_regions(tmp_path / "regions")  # two regions on images of their own
    train = tmp_path / "regions" / "train"
    train.mkdir()
    # same name as an evaluation image, other bytes; and the other evaluation image's bytes under another name
    (train / "objects365_v2_00000001.jpg").write_bytes(b"a different picture")
    (train / "renamed.jpg").write_bytes((root / "images" / "objects365_v2_00000002.jpg").read_bytes())
    rows = [json.loads(x) for x in regions.read_text().splitlines()]
    rows[0]["image"] = str(train / "objects365_v2_00000001.jpg")
    rows.append({**rows[1], "id": "extra", "image": "train/renamed.jpg"})  # relative to the regions file
    regions.write_text("".join(json.dumps(r) + "\n" for r in rows))

    m = run_task(rec, "scripted", root, tmp_path / "run", ScriptedAdapter({}), train_regions=str(regions))
    o = m["train_overlap"]
    assert o["train_images"] == 3 and o["eval_images"] == 2
    assert o["by_name"] == 1 and o["by_name_samples"] == 2
    assert o["by_content"] == 1 and o["by_content_samples"] == 2
    err = capsys.readouterr().err
    assert "warning: train/eval overlap by file name: 1 of 2 evaluation images (2 of 4 samples)" in err
    assert "objects365_v2_00000002.jpg = renamed.jpg" in err
    assert sum("train/eval overlap" in p for p in m["problems"]) == 2
    # no overlap: no warning; a missing regions file is the user's error, before any prediction
    clean = run_task(
        rec,
        "scripted",
        root,
        tmp_path / "run2",
        ScriptedAdapter({}),
        train_regions=str(make_regions(tmp_path / "r2")),
    )  # noqa: E501
    assert clean["train_overlap"]["by_name"] == 0 and not any("overlap" in p for p in clean["problems"])
    with pytest.raises(UserError, match="--train-regions"):
        run_task(
            rec,
            "scripted",
            root,
            tmp_path / "run3",
            ScriptedAdapter({}),
            train_regions=str(tmp_path / "nope.jsonl"),
        )  # noqa: E501


def test_lmms_bytes_are_hashed_against_training_images(tmp_path):
    """Embedded images are compared by content too (their cache files), and by their COCO name."""
    root = make_lmms(tmp_path / "RefCOCO")
    regions = tmp_path / "regions.jsonl"
    src = tmp_path / "RefCOCO" / "src"
    regions.write_text(
        json.dumps(
            {
                "id": "r1",
                "image": str(src / "img2.png"),
                "image_size": [80, 80],
                "region_box": [0, 0, 9, 9],
                "objects": [],
            }
        )  # noqa: E501
        + "\n"
        + json.dumps(
            {
                "id": "r2",
                "image": "/nowhere/coco/train2017/000000000001.jpg",
                "image_size": [1, 1],
                "region_box": [0, 0, 1, 1],
                "objects": [],
            }
        )  # noqa: E501
        + "\n"
    )
    m = run_task(rec, "scripted", root, tmp_path / "run", ScriptedAdapter({}), train_regions=str(regions))
    assert (
        m["train_overlap"]["by_content"] == 1 and m["train_overlap"]["by_content_samples"] == 4
    )  # img2 = testA
    assert (
        m["train_overlap"]["by_name"] == 1 and m["train_overlap"]["by_name_samples"] == 4
    )  # COCO image 1 = val
