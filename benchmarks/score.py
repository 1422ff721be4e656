"""Candidates scored per second, region by region (the scoring stage's way: the region's image embeddings and
references computed once, all its texts batched) against scoring each candidate on its own, in the same run.

    .venv/bin/python benchmarks/score.py [--per-region 1 4 16] [--regions 4] [--scorers loc labels clip]
                                         [--clip-model DIR] [--repeat 3] [--threads 1]

Scorers: ``loc`` (localization and refinement only, semantic ``none``), ``labels`` (all-MiniLM-L6-v2),
``clip`` (a tiny random CLIP built for the run unless ``--clip-model`` gives a real one). Each candidate is scored
twice (original and refined), as `spr score` does. Images are decoded once beforehand in both modes, so the
ratio measures sharing and batching, not file reading. The best of ``--repeat`` runs is reported.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections import Counter

from PIL import Image, ImageDraw

from spr import formats
from spr.data.records import Candidate, Region
from spr.scoring import RegionScorer, make_semantic_scorer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS = ["person", "bicycle", "car", "dog", "traffic light", "bench", "bus", "tree", "cup", "umbrella"]
ADJECTIVES = ["red", "small", "large", "old", "blue", "parked", "white", "distant"]
SIZE = (640, 480)


def make_region(i: int, rng: random.Random, image_dir: str) -> tuple[Region, Image.Image]:
    im = Image.new("RGB", SIZE, (220, 220, 220))
    draw = ImageDraw.Draw(im)
    objects = []
    for k in range(6):
        x, y = 60 + 90 * k, rng.randint(100, 300)
        box = [float(x), float(y), float(x + rng.randint(40, 80)), float(y + rng.randint(40, 120))]
        draw.rectangle(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
        objects.append({"label": rng.choice(LABELS), "box": box})
    path = os.path.join(image_dir, f"bench{i}.png")
    im.save(path)
    region_box = [min(o["box"][0] for o in objects), min(o["box"][1] for o in objects),
                  max(o["box"][2] for o in objects), max(o["box"][3] for o in objects)]  # fmt: skip
    region = Region(id=f"r{i}", image=path, image_size=list(SIZE), region_box=region_box, objects=objects)
    return region, im


def make_candidates(region: Region, n: int, rng: random.Random) -> list[Candidate]:
    """``n`` different descriptions: random subsets of the objects, random words, boxes jittered."""
    out = []
    for s in range(n):
        parts = []
        for obj in rng.sample(region.objects, rng.randint(2, len(region.objects))):
            j = [v + rng.uniform(-12, 12) for v in obj["box"]]
            phrase = f"a {rng.choice(ADJECTIVES)} {obj['label']}"
            parts.append(
                f"<|object_ref_start|>{phrase}<|object_ref_end|>"
                + formats.format_box(j, "qwen2_vl", image_size=SIZE)
            )
        text = (
            f"Sample {s}: the region shows "
            + ", ".join(parts)
            + f", seen from {rng.choice(ADJECTIVES)} angle."
        )
        parsed = formats.parse(text, "qwen2_vl", image_size=SIZE)
        out.append(
            Candidate(
                id=f"{region.id}/p0/{s}", region_id=region.id, prompt_id="p0", prompt="Describe.", sample=s,
                text=text, groundings=[g.to_dict() for g in parsed], fmt="qwen2_vl", image=region.image,
            )
        )  # fmt: skip
    return out


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-region", type=int, nargs="+", default=[1, 4, 16], help="candidates per region")
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument(
        "--scorers", nargs="+", default=["loc", "labels", "clip"], choices=["loc", "labels", "clip"]
    )
    parser.add_argument("--clip-model", help="CLIP / SigLIP model dir (default: a tiny random CLIP)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable numbers on a machine shared with other jobs)",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="spr-bench-")
    rng = random.Random(args.seed)
    regions = [make_region(i, rng, tmp) for i in range(args.regions)]

    print(f"torch threads: {torch.get_num_threads()}; {args.regions} regions; best of {args.repeat}")
    print(f"{'scorer':<8} {'per region':>10} {'batched cand/s':>15} {'one by one cand/s':>18} {'ratio':>6}")
    for name in args.scorers:
        if name == "loc":
            semantic = make_semantic_scorer("none")
        elif name == "labels":
            semantic = make_semantic_scorer("labels")
        else:
            clip_dir = args.clip_model
            if clip_dir is None:
                from spr.models.tiny_clip import build_tiny_clip

                clip_dir = str(build_tiny_clip(os.path.join(tmp, "tiny_clip")))
            semantic = make_semantic_scorer("clip", clip_model=clip_dir)
        scorer = RegionScorer(semantic)
        for k in args.per_region:
            work = [(region, image, make_candidates(region, k, rng)) for region, image in regions]
            n = sum(len(c) for _, _, c in work)

            def batched(work=work, scorer=scorer):
                for region, image, cands in work:
                    scorer.score_region(region, cands, Counter(), image=image)

            def one_by_one(work=work, scorer=scorer):
                for region, image, cands in work:
                    for c in cands:
                        scorer.score_region(region, [c], Counter(), image=image)

            batched()  # warm-up (lazy initialisation, caches)
            t_batched, t_single = timed(batched, args.repeat), timed(one_by_one, args.repeat)
            print(
                f"{name:<8} {k:>10} {n / t_batched:>15.1f} {n / t_single:>18.1f} {t_single / t_batched:>6.2f}"
            )


if __name__ == "__main__":
    main()
