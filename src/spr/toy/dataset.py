"""Write a shapes world to disk: train / val / test splits in the layouts SPR's stages and `spr eval` read.

Directory layout (``spr toy world --out DIR``)::

    DIR/world.json                 settings (seed, counts, world and expression config) and, once complete,
                                   the statistics of each split
    DIR/<split>/                   split = train, val, test; scenes of different splits come from different seeds
      images/<split>-000001.png    the scenes
      annotations.json             COCO detection format; category name = label ("red circle"), bbox [x, y, w, h]
      instances.json               the same content, under the name the RefCOCO "refer" layout expects
      refs(unc).p                  RefCOCO "refer" refs (pickle of plain dicts): one ref per referred object
      rec.jsonl                    referring expressions {id, image, expression, box, split}; id "ref_id/sent_id"
                                   as `spr eval rec` gives samples of refs(unc).p
      captions.jsonl               region captions {id, image, box, captions, split, kind}; kind = object, group
                                   (2-3 neighbours) or region (an SPR region of 5 objects)
      grounded.jsonl               grounded descriptions {id, image, image_size, box, groundings: [{phrase, box}],
                                   split, kind}; kind = image (every object) or region (an SPR region)

All boxes in the JSONL files are [x1, y1, x2, y2] original pixels; image paths are relative to the split
directory. Ids are unique across splits (image ids start at 1,000,001 / 2,000,001 / 3,000,001 for train / val /
test; annotation id = image id * 100 + object index; sentence id = annotation id * 10 + expression index).

Re-running with the same settings resumes: finished splits are kept (each is written to ``<split>.partial``
and renamed when complete). Other settings, or a directory that is not a shapes world, stop with a message
instead of mixing runs; ``overwrite=True`` replaces a previous world.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.coco import AnnotatedImage, AnnotatedObject
from ..data.jsonl import write_jsonl
from ..errors import UserError
from ..regions import RegionConfig, regions_for_image
from . import descriptions as D
from .expressions import ExpressionConfig, expressions_for_scene
from .world import Scene, SceneObject, WorldConfig, make_scene

SPLITS = ("train", "val", "test")
ID_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}
FORMAT = 1


def scene_seed(seed: int, split: str, index: int) -> str:
    return f"{seed}:{split}:{index}"


@dataclass
class SplitFiles:
    """Everything one split contributes, accumulated scene by scene."""

    images: list
    annotations: list
    refs: list
    rec: list
    captions: list
    grounded: list

    @classmethod
    def empty(cls) -> SplitFiles:
        return cls([], [], [], [], [], [])


def _xyxy(box) -> list[float]:
    return [round(float(v), 2) for v in box]


def _regions(objects: list[SceneObject], image_id: int, size, n: int, seed: int, per_image: int = 1):
    """SPR-style regions of ``n`` grown objects (spr.regions), as (box, member objects)."""
    image = AnnotatedImage(
        image_id, Path(""), size, [AnnotatedObject(o.label, o.box, 0, k) for k, o in enumerate(objects)]
    )
    regions, _ = regions_for_image(image, RegionConfig(objects_per_region=n, per_image=per_image, seed=seed))
    by_box = {tuple(o.box): o for o in objects}
    return [(r.region_box, [by_box[tuple(m["box"])] for m in r.objects]) for r in regions]


def add_scene(
    files: SplitFiles,
    scene: Scene,
    split: str,
    index: int,
    seed: int,
    categories: dict,
    expr: ExpressionConfig,
) -> None:
    """Append the records of one scene (already saved as ``images/<file_name>``) to ``files``."""
    image_id = ID_BASE[split] + index + 1
    file_name = f"{split}-{index + 1:06d}.png"
    image_path = f"images/{file_name}"
    w, h = scene.size
    for o in scene.objects:
        o.box = tuple(_xyxy(o.box))
    files.images.append(
        {
            "id": image_id,
            "file_name": file_name,
            "width": w,
            "height": h,
            "background": scene.background,
            "seed": scene.seed,
        }
    )
    ann_ids = []
    for k, o in enumerate(scene.objects):
        x1, y1, x2, y2 = o.box
        ann_ids.append(image_id * 100 + k)
        files.annotations.append(
            {"id": ann_ids[-1], "image_id": image_id, "category_id": categories[o.label], "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
             "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "visible": round(o.visible, 3)}
        )  # fmt: skip

    by_object: dict[int, list] = {}
    for e in expressions_for_scene(scene.objects, random.Random(f"expressions:{scene.seed}"), expr):
        by_object.setdefault(e.target, []).append(e)
    for k, exprs in by_object.items():
        ann_id, o = ann_ids[k], scene.objects[k]
        sentences = [
            {"sent": e.text, "raw": e.text, "tokens": e.text.split(), "sent_id": ann_id * 10 + j}
            for j, e in enumerate(exprs)
        ]
        files.refs.append(
            {"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": categories[o.label],
             "file_name": file_name, "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences}
        )  # fmt: skip
        for s, e in zip(sentences, exprs):
            if expr.rec_kinds and e.kind not in expr.rec_kinds:
                continue
            files.rec.append(
                {"id": f"{ann_id}/{s['sent_id']}", "image": image_path, "expression": e.text, "box": list(o.box),
                 "split": split, "kind": e.kind, "label": o.label, "image_id": image_id, "ann_id": ann_id}
            )  # fmt: skip

    def caption(cid: str, box, members, kind: str, captions: list[str]) -> None:
        files.captions.append(
            {"id": f"{image_id}/{cid}", "image": image_path, "box": _xyxy(box), "captions": captions, "split": split,
             "kind": kind, "labels": [m.label for m in members]}
        )  # fmt: skip

    for k, o in enumerate(scene.objects):
        caption(f"object{k}", o.box, [o], "object", D.object_captions(o))
    rng = random.Random(f"groups:{scene.seed}")
    groups = _regions(scene.objects, image_id, scene.size, rng.choice((2, 3)), rng.randrange(2**31))
    for g, (box, members) in enumerate(groups):
        caption(f"group{g}", box, members, "group", [D.group_caption(members)])
    regions = _regions(scene.objects, image_id, scene.size, 5, seed)
    for r, (box, members) in enumerate(regions):
        caption(f"region{r}", box, members, "region", [D.group_caption(members)])

    def grounded(gid: str, box, members, kind: str) -> None:
        files.grounded.append(
            {"id": f"{image_id}/{gid}", "image": image_path, "image_size": [w, h], "box": _xyxy(box),
             "groundings": [{"phrase": p, "box": b} for p, b in D.grounded_description(members)], "split": split,
             "kind": kind}
        )  # fmt: skip

    grounded("image", (0, 0, w, h), scene.objects, "image")
    for r, (box, members) in enumerate(regions):
        grounded(f"region{r}", box, members, "region")


def write_split(
    split_dir: Path, split: str, n: int, seed: int, config: WorldConfig, expr: ExpressionConfig, progress=True
) -> dict:
    """Generate ``n`` scenes of ``split`` into ``split_dir``; returns the split's statistics."""
    from tqdm import tqdm

    start = time.perf_counter()
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    categories = {label: i + 1 for i, label in enumerate(config.labels())}
    files = SplitFiles.empty()
    for index in tqdm(range(n), desc=f"shapes world {split}", unit="scene", disable=not progress):
        scene = make_scene(config, scene_seed(seed, split, index))
        scene.image.save(split_dir / "images" / f"{split}-{index + 1:06d}.png")
        add_scene(files, scene, split, index, seed, categories, expr)
    coco = {
        "info": {"description": f"SPR shapes world, split {split}, seed {seed}"},
        "images": files.images,
        "annotations": files.annotations,
        "categories": [
            {
                "id": i,
                "name": label,
                "supercategory": label.split(" ", 1)[1],
                "colour": label.split(" ", 1)[0],
                "shape": label.split(" ", 1)[1],
            }
            for label, i in categories.items()
        ],  # fmt: skip
    }
    text = json.dumps(coco)
    (split_dir / "annotations.json").write_text(text)
    (split_dir / "instances.json").write_text(text)
    with (split_dir / "refs(unc).p").open("wb") as f:
        pickle.dump(files.refs, f, protocol=2)  # protocol 2: readable by the refer toolkit under Python 2 too
    write_jsonl(split_dir / "rec.jsonl", files.rec)
    write_jsonl(split_dir / "captions.jsonl", files.captions)
    write_jsonl(split_dir / "grounded.jsonl", files.grounded)
    return {
        "scenes": n,
        "objects": len(files.annotations),
        "referred objects": len(files.refs),
        "expressions": len(files.rec),
        "captions": len(files.captions),
        "grounded": len(files.grounded),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _settings(seed: int, counts: dict, config: WorldConfig, expr: ExpressionConfig) -> dict:
    return {"format": FORMAT, "seed": seed, "counts": dict(counts), "world": config.to_dict(),
            "expressions": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(expr).items()}}  # fmt: skip


def _describe_difference(old: dict, new: dict) -> str:
    diffs = []
    for key in ("format", "seed", "counts"):
        if old.get(key) != new[key]:
            diffs.append(f"{key} {old.get(key)} here, {new[key]} asked")
    for group in ("world", "expressions"):
        for k, v in new[group].items():
            if (old.get(group) or {}).get(k) != v:
                diffs.append(f"{k} {(old.get(group) or {}).get(k)} here, {v} asked")
    return "; ".join(diffs) or "unknown difference"


def write_world(
    out: str | Path,
    seed: int = 0,
    counts: dict | None = None,
    config: WorldConfig | None = None,
    expressions: ExpressionConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write (or finish writing) the world; returns the contents of ``world.json``."""
    out = Path(out)
    counts = counts or {"train": 1000, "val": 200, "test": 200}
    config, expressions = config or WorldConfig(), expressions or ExpressionConfig()
    if not 1 <= expressions.per_object <= 9:
        raise UserError(f"shapes world: expressions per object must be 1..9, got {expressions.per_object}")
    bad = {k: v for k, v in counts.items() if k not in SPLITS or int(v) < 0}
    if bad:
        raise UserError(f"shapes world: splits are {', '.join(SPLITS)} with counts >= 0, got {bad}")
    settings = _settings(seed, counts, config, expressions)
    manifest_path = out / "world.json"
    ours = {"world.json", *SPLITS, *(f"{s}.partial" for s in SPLITS)}
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    present = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if present and not manifest_path.exists():
        raise UserError(
            f"{out}: not empty and not a shapes world (no world.json); choose an empty or new --out"
        )
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(
                f"{manifest_path}: unreadable ({e}); remove {out} or choose another --out"
            ) from None
        foreign = [name for name in present if name not in ours]
        same = {k: manifest.get(k) for k in settings} == settings
        if overwrite and not same:
            if foreign:
                raise UserError(
                    f"{out}: will not overwrite: it also holds {', '.join(foreign)}, which the world did not write"
                )
            for name in present:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif not same:
            raise UserError(
                f"{out} holds a shapes world made with other settings ({_describe_difference(manifest, settings)}); "
                "choose another --out, or pass --overwrite to replace it"
            )
        elif manifest.get("complete"):
            return manifest
    resumed = manifest_path.exists() and json.loads(manifest_path.read_text()).get("splits") or {}
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**settings, "complete": False, "splits": {}}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    old_stats = {}
    for split in SPLITS:
        n = int(counts.get(split, 0))
        final, partial = out / split, out / f"{split}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        if final.exists() and (final / "grounded.jsonl").exists():
            old_stats[split] = resumed.get(split) or {"scenes": n}
            continue
        if final.exists():
            shutil.rmtree(final)
        stats = write_split(partial, split, n, seed, config, expressions, progress)
        partial.rename(final)
        manifest["splits"][split] = stats
        manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest["splits"] = {**old_stats, **manifest["splits"]}
    manifest["complete"] = True
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest
