"""Evaluation data written to disk in each layout `spr eval` reads, with images of coloured rectangles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from PIL import Image, ImageDraw

# Two images, each with a few rectangles: (label, box in original pixels).
SCENES = {
    "img1": ((96, 64), [("red box", (8, 8, 40, 40)), ("blue box", (50, 20, 90, 60))]),
    "img2": ((80, 80), [("green box", (10, 40, 30, 75)), ("yellow box", (40, 5, 75, 35))]),
}
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def write_images(images_dir: Path, ext: str = "png") -> dict[str, Path]:
    images_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (size, objects) in SCENES.items():
        im = Image.new("RGB", size, (235, 235, 235))
        draw = ImageDraw.Draw(im)
        for label, box in objects:
            draw.rectangle(box, fill=COLOURS[label.split()[0]])
        path = images_dir / f"{name}.{ext}"
        im.save(path)
        out[name] = path
    return out


def make_rec_jsonl(root: Path, broken_image: bool = False) -> Path:
    """One expression per object; img1 in split val, img2 in split test. Image paths relative to the file."""
    write_images(root / "images")
    rows = []
    for split, name in (("val", "img1"), ("test", "img2")):
        for k, (label, box) in enumerate(SCENES[name][1]):
            rows.append(
                {
                    "id": f"{name}-{k}",
                    "image": f"images/{name}.png",
                    "expression": f"the {label}",
                    "box": list(box),
                    "split": split,
                }
            )
    if broken_image:
        (root / "images" / "broken.png").write_bytes(b"not a png")
        rows.append(
            {
                "id": "broken-0",
                "image": "images/broken.png",
                "expression": "the red box",
                "box": [1, 1, 5, 5],
                "split": "val",
            }
        )
    path = root / "rec.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_refer(root: Path, protocol: int = 2) -> Path:
    """A RefCOCO-style 'refer' directory: refs(unc).p + instances.json + images/ (COCO [x, y, w, h] boxes)."""
    write_images(root / "images")
    images, anns, refs = [], [], []
    for i, (name, (size, objects)) in enumerate(SCENES.items(), start=1):
        images.append({"id": i, "file_name": f"{name}.png", "width": size[0], "height": size[1]})
        for label, (x1, y1, x2, y2) in objects:
            ann_id = len(anns) + 100
            anns.append({"id": ann_id, "image_id": i, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            ref_id = len(refs)
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann_id,
                    "image_id": i,
                    "category_id": 1,
                    "split": "testA" if i == 1 else "testB",
                    "file_name": f"COCO_{name}_{ann_id}.jpg",
                    "sent_ids": [2 * ref_id, 2 * ref_id + 1],
                    "sentences": [
                        {
                            "sent": f"the {label}",
                            "raw": f"The {label}.",
                            "sent_id": 2 * ref_id,
                            "tokens": ["the"],
                        },
                        {"sent": f"{label}", "raw": f"{label}", "sent_id": 2 * ref_id + 1, "tokens": []},
                    ],
                }
            )
    refs.append(
        {"ref_id": 99, "ann_id": 12345, "image_id": 1, "split": "testA", "sentences": [{"sent": "ghost"}]}
    )
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": []})
    )
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    return root


FLICKR_SENTENCES = {
    "img1": [
        "[/EN#1/other A red box] sits left of [/EN#2/other a blue box] in [/EN#9/scene the picture] .",
        "[/EN#3/other Two boxes] and [/EN#0/notvisual nothing else] .",
    ],
    "img2": ["[/EN#5/other/clothing The green box] is below [/EN#6/other the yellow box] ."],
}


def make_flickr(root: Path) -> Path:
    """Flickr30k Entities layout; entity 3 ("two boxes") has both boxes of img1; val = img1, test = img2."""
    write_images(root / "flickr30k-images", ext="jpg")
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir(parents=True)
    entity_boxes = {
        "img1": {
            "1": [SCENES["img1"][1][0][1]],
            "2": [SCENES["img1"][1][1][1]],
            "3": [SCENES["img1"][1][0][1], SCENES["img1"][1][1][1]],
        },
        "img2": {"5": [SCENES["img2"][1][0][1]], "6": [SCENES["img2"][1][1][1]]},
    }
    for name, lines in FLICKR_SENTENCES.items():
        (root / "Sentences" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        size = SCENES[name][0]
        objs = []
        for ent, boxes in entity_boxes[name].items():
            for x1, y1, x2, y2 in boxes:  # 1-based inclusive pixel indices
                objs.append(
                    f"<object><name>{ent}</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                    f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                )
        objs.append("<object><name>9</name><nobndbox>0</nobndbox><scene>1</scene></object>")
        xml = (
            f"<annotation><filename>{name}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{''.join(objs)}</annotation>"
        )
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    (root / "val.txt").write_text("img1\n")
    (root / "test.txt").write_text("img2\n")
    return root


def make_captions(root: Path) -> Path:
    write_images(root / "images")
    rows = []
    for name, (_, objects) in SCENES.items():
        for k, (label, box) in enumerate(objects):
            rows.append(
                {
                    "id": f"{name}-{k}",
                    "image": f"images/{name}.png",
                    "box": list(box),
                    "captions": [f"a {label}", f"the {label.split()[0]} rectangle"],
                    "split": "val",
                }
            )
    path = root / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_dpo_jsonl(
    root: Path, n: int = 4, fmt: str = "qwen2_vl", prompt: str = "Where is {label}?", geometry_fn=None
) -> Path:
    """``dpo.jsonl`` as `spr pairs` writes it: chosen = the right box, rejected = the other object's box; every
    other pair shows a crop (``crop_box`` set, boxes in crop pixels). ``geometry_fn(view size)``: the codec
    geometry (a model adapter's ``geometry``), for formats that need one."""
    from spr import formats

    images = write_images(root / "images")
    rows = []
    for name, (size, objects) in SCENES.items():
        for k, (label, box) in enumerate(objects):
            other = objects[1 - k][1]
            crop = None
            view = size
            if len(rows) % 2 == 1:
                crop = [0, 0, size[0], size[1]]  # a crop the size of the image keeps both boxes inside
            rows.append(
                {
                    "id": f"{name}/{k}",
                    "images": [str(images[name])],
                    "crop_box": crop,
                    "prompt": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image"},
                                {"type": "text", "text": prompt.format(label=label)},
                            ],
                        }
                    ],
                    "chosen": [
                        {
                            "role": "assistant",
                            "content": [
                                {
                                    "type": "text",
                                    "text": f"the {label} "
                                    + formats.format_box(
                                        box, fmt, view, **(geometry_fn(view) if geometry_fn else {})
                                    ),
                                }
                            ],
                        }
                    ],
                    "rejected": [
                        {
                            "role": "assistant",
                            "content": [
                                {
                                    "type": "text",
                                    "text": f"the {label} "
                                    + formats.format_box(
                                        other, fmt, view, **(geometry_fn(view) if geometry_fn else {})
                                    ),
                                }
                            ],
                        }
                    ],
                }
            )
            if len(rows) >= n:
                break
        if len(rows) >= n:
            break
    path = root / "dpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_regions(root: Path) -> Path:
    """Held-out regions (Region records) for the grounded description evaluation: one per image."""
    images = write_images(root / "images")
    rows = []
    for name, (size, objects) in SCENES.items():
        boxes = [b for _, b in objects]
        region = [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
        rows.append(
            {
                "id": f"{name}/r0",
                "image": str(images[name]),
                "image_size": list(size),
                "region_box": region,
                "objects": [{"label": lbl, "box": list(b)} for lbl, b in objects],
            }
        )
    path = root / "regions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
