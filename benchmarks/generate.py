"""Candidates and generated tokens per second of `spr generate`, against one generate call per prompt.

    .venv/bin/python benchmarks/generate.py [--families qwen2_vl llava] [--batch-sizes 1 4 8] [--samples 2 4]
                                            [--regions 8] [--max-new-tokens 32] [--threads 1] [--repeat 3]

Runs the stage's own loop (``spr.sampling.generate_into``: prompt rendering, image crops, left-padded batches,
decoding, parsing, JSONL writing) on tiny random models built for the run. The baseline is the simple way: one
``generate`` call per (region, prompt) with ``num_return_sequences=N`` (the same loop with batch size 1), measured
in the same run; ``speed-up`` is candidates/s over the baseline's at the same N. Every sequence is made exactly
``--max-new-tokens`` long (min_new_tokens), so all settings do the same amount of generation. The best of
``--repeat`` rounds (each over all batch sizes, so that a busy machine slows them alike) is reported; one
warm-up call per model is not timed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spr.data.jsonl import JsonlWriter  # noqa: E402
from spr.data.records import Region  # noqa: E402
from spr.generate import GenerateConfig  # noqa: E402
from spr.models import load  # noqa: E402
from spr.models.tiny import build_tiny_model  # noqa: E402
from spr.prompts import select_templates  # noqa: E402
from spr.sampling import generate_into  # noqa: E402
from spr.table import markdown_table  # noqa: E402

LABELS = ["person", "dog", "car", "cup", "bench", "tree"]


def make_regions(n: int, image_dir: Path, seed: int = 0) -> list[Region]:
    rng = random.Random(seed)
    regions = []
    for i in range(n):
        size = (rng.choice([480, 640, 800]), rng.choice([360, 480]))
        im = Image.new("RGB", size, (225, 225, 225))
        draw = ImageDraw.Draw(im)
        objects = []
        for _ in range(5):
            x, y = rng.randint(0, size[0] - 80), rng.randint(0, size[1] - 80)
            box = [float(x), float(y), float(x + rng.randint(20, 80)), float(y + rng.randint(20, 80))]
            draw.rectangle(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
            objects.append({"label": rng.choice(LABELS), "box": box})
        path = image_dir / f"bench{i}.png"
        im.save(path)
        union = [
            min(o["box"][k] for o in objects) if k < 2 else max(o["box"][k] for o in objects)
            for k in range(4)
        ]
        regions.append(
            Region(id=f"r{i}", image=str(path), image_size=list(size), region_box=union, objects=objects)
        )
    return regions


def measure(adapter, regions, templates, batch_size, samples, max_new_tokens, out: Path) -> dict:
    config = GenerateConfig(
        samples=samples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=0.95,
    )
    out.unlink(missing_ok=True)
    with JsonlWriter(out) as writer:
        start = time.perf_counter()
        stats = generate_into(adapter, regions, templates, writer, config, progress=False)
        seconds = time.perf_counter() - start
    return {"candidates": stats.written, "tokens": stats.new_tokens, "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["qwen2_vl", "llava"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8], help="prompts per generate call")
    p.add_argument("--samples", nargs="+", type=int, default=[2, 4], help="N, candidates per prompt")
    p.add_argument("--regions", type=int, default=8, help="regions (x 3 prompts each)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine's cores are shared)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    templates = select_templates(None)
    batch_sizes = sorted(set(args.batch_sizes) | {1})  # 1 is the baseline
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        regions = make_regions(args.regions, tmp)
        for family in args.families:
            adapter = load(build_tiny_model(family, tmp / family))
            measure(adapter, regions[:1], templates[:1], 1, 1, 4, tmp / "warmup.jsonl")
            for n in args.samples:
                results = {}
                for _ in range(args.repeat):  # rounds over all batch sizes, so load drift hits them alike
                    for b in batch_sizes:
                        r = measure(adapter, regions, templates, b, n, args.max_new_tokens, tmp / "c.jsonl")
                        if b not in results or r["seconds"] < results[b]["seconds"]:
                            results[b] = r
                base = results[1]["candidates"] / results[1]["seconds"]
                for b, r in results.items():
                    cps = r["candidates"] / r["seconds"]
                    rows.append(
                        [
                            family,
                            n,
                            "baseline (1 call per prompt)" if b == 1 else b,
                            r["candidates"],
                            round(cps, 1),
                            round(r["tokens"] / r["seconds"], 0),
                            f"{cps / base:.2f}x",
                        ]
                    )
                    print(f"{family} N={n} B={b}: {cps:.1f} candidates/s", file=sys.stderr)
    headers = ["family", "N", "batch (prompts/call)", "candidates", "candidates/s", "tokens/s", "speed-up"]
    print(
        f"regions={args.regions} prompts={len(templates)} max_new_tokens={args.max_new_tokens} "
        f"threads={args.threads} torch={torch.__version__}"
    )
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
