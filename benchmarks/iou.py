"""Time spr.boxes.iou against pycocotools.mask.iou on the same random boxes.

    .venv/bin/python benchmarks/iou.py [--sizes 1000 3000] [--repeat 3]

Each side gets boxes in its own layout (xyxy for spr, xywh for pycocotools), prepared before timing; the best
of ``--repeat`` runs is reported, and the two matrices are checked to be equal.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pycocotools import mask as coco_mask

from spr import boxes as B


def best_time(repeat: int, fn, *args) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000], help="N for N x N boxes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    print(f"{'boxes':>11} {'spr.boxes.iou':>14} {'pycocotools':>12} {'spr/coco':>9}  max |diff|")
    for n in args.sizes:
        xy = rng.uniform(0, 1000, size=(2, n, 2))
        wh = rng.uniform(1, 300, size=(2, n, 2))
        a, b = (np.concatenate([xy[i], xy[i] + wh[i]], axis=1) for i in range(2))
        a_xywh, b_xywh = (np.concatenate([xy[i], wh[i]], axis=1) for i in range(2))
        crowd = np.zeros(n, dtype=np.uint8)
        t_spr, ours = best_time(args.repeat, B.iou, a, b)
        t_coco, theirs = best_time(args.repeat, coco_mask.iou, a_xywh, b_xywh, crowd)
        diff = float(np.abs(ours - theirs).max())
        print(f"{n:>5}x{n:<5} {t_spr:>13.3f}s {t_coco:>11.3f}s {t_spr / t_coco:>9.2f}  {diff:.1e}")


if __name__ == "__main__":
    main()
