"""Time and peak memory of the stages' bookkeeping at real sizes, on synthetic files, and how they grow.

    .venv/bin/python benchmarks/scale.py [--small] [--sizes N1 N2] [--what regions resume pairs]

Each measurement runs in a fresh process (its peak RSS is the process's own) at two sizes, and the growth
exponent is log(value2 / value1) / log(N2 / N1) (1.0: linear; goal <= 1.05):

- ``regions``: ``load_coco`` on a COCO-style file of N images with 7.3 annotations each (COCO train2017: 118k
  images), every image file missing (the path that was quadratic) and then with image checks off;
- ``resume``: what a resumed `spr generate` with nothing to do reads before any model work: the regions file
  (N / 12 regions) and the ids of N candidates already written (``JsonlWriter``), about 1 KB per candidate;
- ``pairs``: `spr pairs` (``spr.pairs.run``) on N candidates with an original and a refined score each.

``seconds`` leave out the imports; ``peak MB`` is the peak RSS above what the interpreter and imports hold (at
least 1). ``--small`` runs sizes 5,000 and 10,000.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_coco(path: Path, images: int) -> None:
    anns, k = [], 0
    for i in range(images):
        for j in range(7 if i % 10 < 7 else 8):  # 7.3 per image
            anns.append({"id": k, "image_id": i, "category_id": 1 + j % 3, "bbox": [10 + j, 20, 30, 40]})
            k += 1
    data = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(images)
        ],
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in ((1, "person"), (2, "dog"), (3, "car"))],
    }
    path.write_text(json.dumps(data))


def region(i: int) -> dict:
    objects = [{"label": "person", "box": [10.0 + k, 20.0, 60.0, 90.0]} for k in range(4)]
    return {"id": f"img{i}/r0", "image": f"/data/coco/{i:012d}.jpg", "image_size": [640, 480],
            "region_box": [10.0, 20.0, 63.0, 90.0], "objects": objects, "source": "coco", "image_id": i}  # fmt: skip


def candidate(region_id: str, prompt: str, sample: int) -> dict:
    text = (
        "A person in a red coat stands beside a parked car <box>(120,200),(340,560)</box> near the kerb. " * 4
    )
    return {"id": f"{region_id}/{prompt}/{sample}", "region_id": region_id, "prompt_id": prompt,
            "prompt": "Describe the objects in the region " * 6, "sample": sample, "text": text,
            "groundings": [{"phrase": "a person", "box": [120.0, 200.0, 340.0, 560.0], "span": [0, 8]}],
            "problems": [], "fmt": "qwen2_vl", "geometry": {"resized": [448, 336]}, "pixel_budget": {},
            "image": f"/data/coco/{region_id}.jpg", "crop_box": None}  # fmt: skip


def write_run(folder: Path, n: int, scores: bool) -> None:
    """regions.jsonl, candidates.jsonl (n: 3 prompts x 4 samples per region) and, with ``scores``, scores."""
    regions = [region(i) for i in range(-(-n // 12))]
    with (folder / "regions.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in regions)
    with (folder / "candidates.jsonl").open("w") as c, (folder / "scores.jsonl").open("w") as s:
        for k in range(n):
            r, prompt, sample = regions[k // 12]["id"], ("region_box", "crop", "hints")[k // 4 % 3], k % 4
            cand = candidate(r, prompt, sample)
            c.write(json.dumps(cand) + "\n")
            if scores:
                for refined in (False, True):
                    total = 0.2 + 0.6 * ((k * 7919) % 101) / 100 + 0.1 * refined
                    s.write(json.dumps({"id": cand["id"] + ("#refined" if refined else ""), "candidate_id": cand["id"],
                                        "region_id": r, "refined": refined, "text": cand["text"] + " x" * refined,
                                        "semantic": 0.5, "localization": total - 0.5, "total": total}) + "\n")  # fmt: skip


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (ru_maxrss where there is none), in MB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(what: str, folder: str) -> None:
    """In the child process: run ``what`` once on ``folder``'s files, print seconds and peak MB."""
    folder = Path(folder)
    from spr.data.coco import load_coco
    from spr.data.jsonl import JsonlWriter
    from spr.generate import read_regions
    from spr.pairs import PairConfig, run

    with contextlib.suppress(OSError):  # reset the peak to now (Linux), so that imports do not set it
        Path("/proc/self/clear_refs").write_text("5")
    base_mb = _status_mb("VmRSS")  # the interpreter and imports
    start = time.perf_counter()
    if what == "regions":
        with contextlib.suppress(Exception):
            load_coco(folder / "instances.json", folder / "images")  # every file missing: all skipped
        load_coco(folder / "instances.json", folder / "images", check_images=False)
    elif what == "resume":
        read_regions(folder / "regions.jsonl")
        with JsonlWriter(folder / "candidates.jsonl") as writer:
            assert writer.ids
    else:
        config = PairConfig(regions=str(folder / "regions.jsonl"), candidates=str(folder / "candidates.jsonl"),
                            scores=str(folder / "scores.jsonl"), out=str(folder / "pairs.jsonl"))  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            run(config)
    seconds = time.perf_counter() - start
    peak_mb = _status_mb("VmHWM") - base_mb
    print(json.dumps({"seconds": seconds, "peak_mb": max(peak_mb, 1.0)}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="sizes 5,000 and 10,000 (a quick check)")
    p.add_argument("--sizes", nargs=2, type=int, default=[50_000, 100_000])
    p.add_argument(
        "--what", nargs="+", choices=["regions", "resume", "pairs"], default=["regions", "resume", "pairs"]
    )
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        measure(*args.child)
        return 0
    from spr.table import markdown_table

    sizes = [5_000, 10_000] if args.small else args.sizes
    rows = []
    for what in args.what:
        results = []
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                if what == "regions":
                    write_coco(folder / "instances.json", n)
                else:
                    write_run(folder, n, scores=what == "pairs")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", what, tmp], capture_output=True, text=True
                )
                if out.returncode:
                    sys.exit(f"{what} at {n}: {out.stderr.strip()[-2000:]}")
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{what} N={n}: {results[-1]}", file=sys.stderr)
        growth = math.log(sizes[1] / sizes[0])
        for n, r in zip(sizes, results):
            rows.append([what, n, f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}", "", ""])
        t = math.log(results[1]["seconds"] / results[0]["seconds"]) / growth
        m = math.log(results[1]["peak_mb"] / results[0]["peak_mb"]) / growth
        rows[-1][4:] = [f"{t:.2f}", f"{m:.2f}"]
    print(
        f"sizes {sizes[0]} and {sizes[1]} (regions: images; resume and pairs: candidates), one process each"
    )
    print(markdown_table(["what", "N", "seconds", "peak MB", "time exponent", "memory exponent"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
