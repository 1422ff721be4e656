"""Candidates per second of `spr generate`: shared prefill against today's batched path and one call per prompt.

    .venv/bin/python benchmarks/generate.py [--families qwen2_vl] [--samples 4 8 16] [--batch-size 4]
        [--regions 4] [--max-new-tokens 32] [--lengths free fixed] [--image-tokens 256] [--threads 1] [--repeat 3]

Runs the stage's own loop (``spr.sampling.generate_into``: prompt rendering, image crops, left-padded batches,
decoding, parsing, JSONL writing) on tiny random models built for the run, with prompts as long as real ones:
the tiny Qwen2-VL's pixel budget is set so that every image has ``--image-tokens`` image tokens (256: a 448x448
Qwen2-VL input); families whose processor resizes to a fixed size keep their tiny image. Three ways, at each N:

- ``shared prefill``: ``--batch-size`` prompts per generate call, each prompt (with its image) prefilled once and
  its KV cache repeated to its N rows (``ModelAdapter.generate``, the default);
- ``batched (today)``: the same calls with every one of the B x N rows prefilled (``adapter.shared_prefill = False``);
- ``one call per prompt``: batch size 1, every row prefilled (the simple way).

``free`` lengths stop at the model's end-of-sequence token (or ``--max-new-tokens``), as `spr generate` does;
``fixed`` makes every answer exactly ``--max-new-tokens`` long (min_new_tokens), so all ways do the same amount
of decoding. ``texts as today`` counts the candidates whose text is the one ``batched (today)`` wrote for the
same id (the shared prefill's rows differ from separate prefills by floating-point rounding: see
tests/test_shared_prefill.py). ``prefill rows/cand`` counts
the rows of the language model's multi-token forwards per candidate (goal: 1/N of today's). ``decode past EOS``
is the share of decoded row-steps spent on rows that had already ended (what dropping finished rows from the
cache could save at most). ``x today`` is candidates/s over ``batched (today)``'s in the same round set; rounds
are interleaved (each round runs every way once, so that a busy machine slows them alike) and the best of
``--repeat`` is reported. One warm-up call per model is not timed. Goal (not a test): at N=8 ``shared prefill``
>= 1.5x ``batched (today)``, the ratio rising with N.
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


WAYS = {  # name: (prompts per call, shared prefill)
    "shared prefill": (None, True),
    "batched (today)": (None, False),
    "one call per prompt": (1, False),
}


class Counter:
    """Prefill rows (language-model forwards of more than one token) and generated row-steps while attached."""

    def __init__(self, adapter):
        self.adapter, self.prefill_rows, self.row_steps = adapter, 0, 0
        language = adapter.model.get_submodule(adapter.spec.language_module)
        self.hook = language.register_forward_pre_hook(self._forward, with_kwargs=True)
        self._generate = adapter.generate
        adapter.generate = self._counted_generate

    def _forward(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            self.prefill_rows += embeds.shape[0]

    def _counted_generate(self, inputs, **kwargs):
        out = self._generate(inputs, **kwargs)
        self.row_steps += out.numel()  # every row runs until the last row of its call ends
        return out

    def detach(self):
        self.hook.remove()
        self.adapter.generate = self._generate


def measure(
    adapter, regions, templates, batch_size, shared, samples, max_new_tokens, fixed, out: Path
) -> dict:
    config = GenerateConfig(
        model="m",
        regions="r",
        out=str(out),
        samples=samples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if fixed else 0,
        temperature=1.0,
        top_p=0.95,
    )
    out.unlink(missing_ok=True)
    adapter.shared_prefill = shared
    counter = Counter(adapter)
    try:
        with JsonlWriter(out) as writer:
            start = time.perf_counter()
            stats = generate_into(adapter, regions, templates, writer, config, progress=False)
            seconds = time.perf_counter() - start
    finally:
        counter.detach()
    return {
        "candidates": stats.written,
        "tokens": stats.new_tokens,
        "seconds": seconds,
        "prefill_rows": counter.prefill_rows,
        "past_eos": 1 - stats.new_tokens / max(counter.row_steps, 1),
        "file": out.read_bytes(),
    }


def same_texts(file: bytes, today: bytes) -> str:
    """How many candidates say word for word what today's path wrote for the same id (the shared prefill's
    rows differ from separate prefills by floating-point rounding only: a draw that lands within that rounding
    of a boundary between two tokens takes the other one, and the answer goes on from there)."""
    import json

    def texts(data: bytes) -> dict:
        return {(o := json.loads(line))["id"]: o["text"] for line in data.splitlines() if line.strip()}

    ours, theirs = texts(file), texts(today)
    return f"{sum(ours.get(i) == t for i, t in theirs.items())}/{len(theirs)}"


def image_tokens_budget(adapter, tokens: int) -> str:
    """Set a Qwen2-VL style processor to ``tokens`` image tokens per image (28 x 28 px each); say what was set."""
    if not adapter.pixel_budget():
        return "fixed-size processor: its tiny image"
    pixels = tokens * 28 * 28
    adapter.set_pixel_budget(min_pixels=pixels, max_pixels=pixels)
    return f"{tokens} image tokens per image"


def prompt_tokens(adapter, regions, templates) -> float:
    items = [(r, p) for r in regions[:2] for p in adapter.description_prompts(r, templates)]
    from spr.data.images import load_image

    lengths = []
    for region, prompt in items:
        view = prompt.view_image(load_image(region.image, 0))
        lengths.append(adapter.build_inputs([view], [prompt.text])["input_ids"].shape[1])
    return sum(lengths) / len(lengths)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["qwen2_vl"])
    p.add_argument("--samples", nargs="+", type=int, default=[4, 8, 16], help="N, candidates per prompt")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per generate call (batched ways)")
    p.add_argument("--regions", type=int, default=4, help="regions (x 3 prompts each)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--lengths", nargs="+", choices=["free", "fixed"], default=["free", "fixed"])
    p.add_argument(
        "--image-tokens", type=int, default=256, help="image tokens per image (Qwen2-VL style processors)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine's cores are shared)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    templates = select_templates(None)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        regions = make_regions(args.regions, tmp)
        for family in args.families:
            adapter = load(build_tiny_model(family, tmp / family))
            budget = image_tokens_budget(adapter, args.image_tokens)
            notes.append(
                f"{family}: {budget}, {prompt_tokens(adapter, regions, templates):.0f} prompt tokens on average"
            )
            measure(adapter, regions[:1], templates[:1], 1, True, 2, 4, False, tmp / "warmup.jsonl")
            for length in args.lengths:
                for n in args.samples:
                    best: dict[str, dict] = {}
                    for _ in range(args.repeat):  # interleaved rounds: load drift hits every way alike
                        for way, (batch, shared) in WAYS.items():
                            r = measure(adapter, regions, templates, batch or args.batch_size, shared, n,
                                        args.max_new_tokens, length == "fixed", tmp / f"{way}.jsonl")  # fmt: skip
                            if way not in best or r["seconds"] < best[way]["seconds"]:
                                best[way] = r
                    today = best["batched (today)"]["candidates"] / best["batched (today)"]["seconds"]
                    for way, r in best.items():
                        cps = r["candidates"] / r["seconds"]
                        rows.append([family, length, n, way, r["candidates"], round(cps, 1),
                                     round(r["prefill_rows"] / r["candidates"], 3), f"{100 * r['past_eos']:.0f}%",
                                     f"{cps / today:.2f}x", same_texts(r["file"], best["batched (today)"]["file"])])  # fmt: skip
                        print(f"{family} {length} N={n} {way}: {cps:.1f} candidates/s", file=sys.stderr)
    headers = ["family", "lengths", "N", "way", "candidates", "candidates/s", "prefill rows/cand", "decode past EOS",
               "x today", "texts as today"]  # fmt: skip
    print(
        f"regions={args.regions} prompts={len(templates)} batch={args.batch_size} max_new_tokens={args.max_new_tokens} "
        f"threads={args.threads} best of {args.repeat} interleaved rounds, torch={torch.__version__}"
    )
    print("\n".join(notes))
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
