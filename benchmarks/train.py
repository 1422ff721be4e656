"""DPO step time, one epoch's time and peak memory of `spr train` (without its savings, with some, with all)
against a plain TRL DPOTrainer script, same tiny model and pairs.

    .venv/bin/python benchmarks/train.py [--family qwen2_vl] [--steps N] [--pairs 8] [--batch-size 2]
                                         [--image-tokens 256] [--rounds 3] [--threads 1]

Eight runs per round, each in its own fresh process (so that peak memory is that run's alone): {spr, spr prompt
per answer, spr shared, plain} x {lora, full}. ``--steps`` defaults to one epoch (pairs / batch size), which is
what the shipped 7B config runs.

- ``spr``: ``spr.train.train`` without the savings (``cache_reference=False, share_vision=False,
  share_prompt=False``): pairs read from dpo.jsonl, images loaded per batch, LoRA on the language model via spr's
  target regex, the reference as the adapter switched off / an explicit frozen copy, run in every step; saving
  included.
- ``spr prompt per answer``: the reference's log-probs cached beside dpo.jsonl (the cache is removed before every
  run, so each run computes them: in the step that first trains on a pair, beside the policy's forward) and each
  pair's image features computed once per step; the prompt still runs once per answer.
- ``spr shared``: the defaults: the above, and each pair's prompt runs through the language model once for both
  answers (``share_prompt``, :mod:`spr.training.prefix`), for the policy and the reference.
- ``plain``: what a user writes from TRL's documentation: the images decoded into a ``datasets.Dataset`` up
  front, ``DPOTrainer`` with its default collator, ``LoraConfig(target_modules=[...names...])``; for full
  fine-tuning an explicit deep copy as reference (the model is built in memory, so TRL cannot reload it).

Prompts are as long as real ones: the tiny Qwen2-VL's pixel budget gives every image ``--image-tokens`` image
tokens (256: a 448x448 Qwen2-VL input), in every run. Runs use ``--threads`` torch threads (default 1): on a
machine shared with other work, multi-threaded runs stall unpredictably and the comparison drowns in noise. All
use the same model (loaded with ``spr.models.load``: the plain transformers loader cannot load a Qwen2-VL
processor without torchvision), DPOConfig values, CPU settings and seed. Step time is the median wall time of the
optimizer steps after the first (warm-up) one; ``all steps s`` is every step's time (at one epoch every step also
computes its pairs' reference log-probs; later epochs and later runs on the same pairs read them). Peak memory is the process's maximum resident set size (``resource.getrusage``),
which includes the interpreter, torch and the model (on a GPU the peak of ``torch.cuda.max_memory_allocated`` is
shown too). Ratios over ``plain`` come from the same invocation, rounds
interleaved. Goal (issue 28, not a test): ``spr shared`` one epoch, its reference log-probs included (``all steps``),
<= 0.6x plain, peak memory no higher.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def make_pairs(root: Path, n: int) -> Path:
    """``n`` pairs in the dpo.jsonl layout over a few images of coloured rectangles (qwen2_vl box text)."""
    import random

    from PIL import Image, ImageDraw

    from spr import formats

    rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    colours = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
    for i in range(n):
        size = (112, 84)
        im = Image.new("RGB", size, (235, 235, 235))
        draw = ImageDraw.Draw(im)
        boxes = []
        for name, colour in colours.items():
            x, y = rng.randint(0, 80), rng.randint(0, 55)
            box = (x, y, x + rng.randint(12, 30), y + rng.randint(12, 28))
            draw.rectangle(box, fill=colour)
            boxes.append((name, box))
        path = root / "images" / f"{i}.png"
        im.save(path)
        (label, good), (_, bad) = boxes[0], boxes[1]
        rows.append(
            {
                "id": str(i),
                "images": [str(path)],
                "crop_box": None,
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {"type": "text", "text": f"Where is the {label} box?"},
                        ],
                    }
                ],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": formats.format_box(good, "qwen2_vl", size)}],
                    }
                ],
                "rejected": [
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": formats.format_box(bad, "qwen2_vl", size)}],
                    }
                ],
            }
        )
    path = root / "dpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


COMMON = dict(learning_rate=1e-5, lr_scheduler_type="cosine", beta=0.1, logging_steps=1000, seed=0)


def pixel_budget(image_tokens: int) -> dict:
    """Qwen2-VL style budget for ``image_tokens`` image tokens (28 x 28 px each) per image."""
    return (
        {"min_pixels": image_tokens * 28 * 28, "max_pixels": image_tokens * 28 * 28} if image_tokens else {}
    )


def run_spr(method: str, model_dir: str, data: Path, out: Path, steps: int, batch: int, budget: dict,
            impl: str) -> list[float]:  # fmt: skip
    from spr.train import TrainConfig, train

    timer = _step_timer()
    config = TrainConfig(
        model=model_dir,
        data=str(data),
        out=str(out),
        method=method,
        max_steps=steps,
        per_device_train_batch_size=batch,
        save_steps=10_000,
        warmup_ratio=0.1,
        report_to="none",
        cache_reference=impl != "spr",
        share_vision=impl != "spr",
        share_prompt=impl == "spr shared",
        **budget,
        **{k: v for k, v in COMMON.items()},
    )
    train(config, callbacks=[timer])
    return timer.times


def run_plain(method: str, model_dir: str, data: Path, out: Path, steps: int, batch: int,
              budget: dict) -> list[float]:  # fmt: skip
    import copy

    from datasets import Dataset
    from PIL import Image
    from trl import DPOConfig, DPOTrainer

    from spr import models

    loaded = models.load(model_dir, **budget)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list(
        [
            {
                "images": [Image.open(r["images"][0]).convert("RGB")],
                **{k: r[k] for k in ("prompt", "chosen", "rejected")},
            }
            for r in rows
        ]
    )
    args = DPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        warmup_steps=0.1,
        save_steps=10_000,
        report_to="none",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_length=None,
        **COMMON,
    )
    peft_config, ref_model = None, None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
    else:
        ref_model = copy.deepcopy(loaded.model).eval()
    timer = _step_timer()
    trainer = DPOTrainer(
        model=loaded.model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=loaded.processor,
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(str(out))
    return timer.times


IMPLS = ("spr", "spr prompt per answer", "spr shared", "plain")


def child(args) -> None:
    import resource

    import torch

    run = (Path(args.model), Path(args.data), Path(args.out), args.steps, args.batch_size)
    budget = pixel_budget(args.image_tokens)
    if args.impl == "plain":
        times = run_plain(args.method, str(run[0]), *run[1:], budget)
    else:
        times = run_spr(args.method, str(run[0]), *run[1:], budget, args.impl)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(
        "RESULT " + json.dumps({"times": times, "peak_mb": peak_mb, "gpu_mb": gpu_mb}),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="qwen2_vl")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: one epoch, pairs / batch size)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved repeats; the best round is reported"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (1: stable timings on a shared machine)"
    )
    parser.add_argument(
        "--image-tokens",
        type=int,
        default=256,
        help="image tokens per image (0: the tiny model's own budget)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = -(-args.pairs // args.batch_size)
    if args.child:
        child(args)
        return

    from spr import models
    from spr.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = str(build_tiny_model(args.family, tmp / "model", seed=0))
        if not models.load(model_dir).pixel_budget():
            args.image_tokens = 0  # a processor that resizes to a fixed size: its own image tokens
        data = make_pairs(tmp / "pairs", args.pairs)
        threads = str(args.threads)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):  # interleaved, so that load from other processes hits every run alike
            for method in ("lora", "full"):
                for impl in IMPLS:
                    for cache in data.parent.glob(f"{data.stem}.ref.*"):
                        cache.unlink()  # every run computes its reference log-probs
                    out = tmp / f"{impl.replace(' ', '-')}-{method}"
                    cmd = [sys.executable, str(HERE), "--child", "--impl", impl, "--method", method]
                    cmd += ["--model", model_dir, "--data", str(data), "--out", str(out)]
                    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                    cmd += ["--image-tokens", str(args.image_tokens)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if proc.returncode != 0 or line is None:
                        sys.exit(f"{impl} {method} failed:\n{proc.stderr[-3000:]}")
                    r = json.loads(line[len("RESULT ") :])
                    r["step"] = statistics.median(r["times"][1:])
                    r["total"] = sum(r["times"])  # every step, the first epoch's reference included
                    results.setdefault((impl, method), []).append(r)
                    shutil.rmtree(out, ignore_errors=True)  # a fresh output dir: no resume between rounds
        best = {
            k: {
                "step": min(r["step"] for r in v),
                "peak_mb": max(r["peak_mb"] for r in v),
                "gpu_mb": max((r["gpu_mb"] or 0) for r in v) or None,
                "total": min(r["total"] for r in v),
            }
            for k, v in results.items()
        }

    tokens = args.image_tokens or "the tiny model's"
    print(
        f"family {args.family}, {args.pairs} pairs, batch {args.batch_size}, {args.steps} steps, "
        f"{tokens} image tokens per image: median step after the first, best of "
        f"{args.rounds} interleaved rounds, {args.threads} thread(s); peak RSS, highest round"
    )
    rows = []
    for method in ("lora", "full"):
        plain = best[("plain", method)]
        for impl in IMPLS:
            b = best[(impl, method)]
            gpu = f"{b['gpu_mb']:.0f}" if b["gpu_mb"] else "n/a"
            rows.append([method, impl, f"{b['step']:.4f}", f"{b['step'] / plain['step']:.2f}", f"{b['peak_mb']:.0f}",
                         f"{b['peak_mb'] / plain['peak_mb']:.2f}", gpu, f"{b['total']:.2f}",
                         f"{b['total'] / plain['total']:.2f}"])  # fmt: skip
    from spr.table import markdown_table

    headers = ["method", "run", "s/step", "x plain", "peak RSS MB", "x plain", "peak GPU MB", "all steps s",
               "x plain"]  # fmt: skip
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
