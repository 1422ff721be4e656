"""DPO step time and peak memory of `spr train` against a plain TRL DPOTrainer script, same tiny model and pairs.

    .venv/bin/python benchmarks/train.py [--family qwen2_vl] [--steps 12] [--pairs 8] [--batch-size 2]

Four runs, each in its own fresh process (so that peak memory is that run's alone): {spr, plain} x {lora, full}.

- ``spr``: ``spr.train.train`` (pairs read from dpo.jsonl, images loaded per batch, LoRA on the language model
  via spr's target regex, the reference as the adapter switched off / an explicit frozen copy), saving included.
- ``plain``: what a user writes from TRL's documentation: the images decoded into a ``datasets.Dataset`` up
  front, ``DPOTrainer`` with its default collator, ``LoraConfig(target_modules=[...names...])``; for full
  fine-tuning an explicit deep copy as reference (the model is built in memory, so TRL cannot reload it).

Runs use ``--threads`` torch threads (default 1): on a machine shared with other work, multi-threaded runs
stall unpredictably and the comparison drowns in noise. Both use the same model (loaded with ``spr.models.load``: the plain transformers loader cannot load a Qwen2-VL
processor without torchvision), DPOConfig values, CPU settings and seed. Step time is the median wall time of the
optimizer steps after the first (warm-up) one; peak memory is the process's maximum resident set size
(``resource.getrusage``), which includes the interpreter, torch and the model. Ratios spr / plain come from the
same invocation.
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


def run_spr(method: str, model_dir: str, data: Path, out: Path, steps: int, batch: int) -> list[float]:
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
        **{k: v for k, v in COMMON.items()},
    )
    train(config, callbacks=[timer])
    return timer.times


def run_plain(method: str, model_dir: str, data: Path, out: Path, steps: int, batch: int) -> list[float]:
    import copy

    from datasets import Dataset
    from PIL import Image
    from trl import DPOConfig, DPOTrainer

    from spr import models

    loaded = models.load(model_dir)
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


def child(args) -> None:
    import resource

    fn = run_spr if args.impl == "spr" else run_plain
    times = fn(args.method, args.model, Path(args.data), Path(args.out), args.steps, args.batch_size)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("RESULT " + json.dumps({"times": times, "peak_mb": peak_mb}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="qwen2_vl")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved repeats; the best round is reported"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (1: stable timings on a shared machine)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from spr.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = str(build_tiny_model(args.family, tmp / "model", seed=0))
        data = make_pairs(tmp / "pairs", args.pairs)
        threads = str(args.threads)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):  # interleaved, so that load from other processes hits both sides alike
            for method in ("lora", "full"):
                for impl in ("spr", "plain"):
                    out = tmp / f"{impl}-{method}"
                    cmd = [sys.executable, str(HERE), "--child", "--impl", impl, "--method", method]
                    cmd += ["--model", model_dir, "--data", str(data), "--out", str(out)]
                    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if proc.returncode != 0 or line is None:
                        sys.exit(f"{impl} {method} failed:\n{proc.stderr[-3000:]}")
                    r = json.loads(line[len("RESULT ") :])
                    results.setdefault((impl, method), []).append(
                        (statistics.median(r["times"][1:]), r["peak_mb"])
                    )
                    shutil.rmtree(out, ignore_errors=True)  # a fresh output dir: no resume between rounds
        best = {k: (min(t for t, _ in v), max(m for _, m in v)) for k, v in results.items()}

    print(
        f"family {args.family}, {args.pairs} pairs, batch {args.batch_size}, {args.steps} steps: median step after "
        f"the first, best of {args.rounds} interleaved rounds, {args.threads} thread(s); peak RSS, highest round"
    )
    print(
        f"{'method':<6} {'spr s/step':>11} {'plain s/step':>13} {'ratio':>6} {'spr peak MB':>12} {'plain peak MB':>14} {'ratio':>6}"
    )
    for method in ("lora", "full"):
        (ts, ms), (tp, mp) = best[("spr", method)], best[("plain", method)]
        print(f"{method:<6} {ts:>11.3f} {tp:>13.3f} {ts / tp:>6.2f} {ms:>12.0f} {mp:>14.0f} {ms / mp:>6.2f}")


if __name__ == "__main__":
    main()
