"""GRPO step time of `spr grpo` against a plain TRL GRPOTrainer script with a hand-written IoU reward, on the same
tiny model and REC prompts, and the rewards of both on the same completions.

    .venv/bin/python benchmarks/grpo.py [--model DIR] [--steps 8] [--prompts 16] [--generations 8] [--rounds 3]

Model: the shipped shapes-world base (a tiny Qwen2-VL that grounds, so its sampled boxes differ in IoU) unless
``--model``. Prompts: REC expressions of a few freshly generated shapes-world scenes (``spr toy world``).

- ``spr``: ``spr.grpo.train`` (prompts read from rec.jsonl, images loaded per batch, LoRA on the language model via
  spr's target regex, the ``iou`` reward of :mod:`spr.rewards`, train_log.jsonl and completions.jsonl written:
  here every completion, so that they can be compared), saving included.
- ``plain``: what a user writes from TRL's documentation: the images decoded into a ``datasets.Dataset`` up front,
  ``LoraConfig(target_modules=[...names...])``, and an IoU reward written by hand (the first
  ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` of the answer's token ids, on Qwen2-VL's 0-1000 grid; 0 for a box
  with swapped corners or outside the grid, as spr's default). The model loads with ``spr.models.load`` (the plain transformers loader cannot load a Qwen2-VL processor
  without torchvision).

Both use the same GRPO settings, seed, CPU settings and prompt order, so they sample the same completions (the
script says whether they did). Each run is its own fresh process, with ``--threads`` torch threads (default 1:
on a machine shared with other work multi-threaded runs stall unpredictably). Step time is the median wall time of
the optimizer steps after the first (warm-up) one, best of ``--rounds`` interleaved rounds; the ratio spr / plain
comes from the same invocation. Rewards: spr's ``iou`` reward is evaluated on the plain run's completions (token
ids and prompts as the plain run had them) and compared with the hand-written reward's values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
BASE = HERE.parents[1] / "src" / "spr" / "toy" / "assets" / "base"
LR = 1e-4


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


def run_spr(a) -> dict:
    from spr.grpo import COMPLETIONS_FILE, GrpoConfig, train

    per_step = a.generations * a.prompts_per_step
    config = GrpoConfig(
        model=a.model, rec=a.rec, out=a.out, rewards=["iou"], limit=a.prompts, num_generations=a.generations,
        per_device_train_batch_size=per_step, max_steps=a.steps, max_completion_length=a.max_completion_length,
        learning_rate=LR, save_steps=10_000, sample_completions=per_step, quiet=True,
    )  # fmt: skip
    timer = _step_timer()
    train(config, callbacks=[timer])
    lines = (Path(a.out) / COMPLETIONS_FILE).read_text().splitlines()
    completions = [
        {"step": r["step"], "text": r["completion"], "iou": r["rewards"]["iou"]}
        for r in map(json.loads, lines)
    ]
    return {"times": timer.times, "completions": completions}


BOX = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>")


def run_plain(a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from spr import models

    loaded = models.load(a.model)
    tokenizer = loaded.processor.tokenizer
    rows = [json.loads(line) for line in Path(a.rec).read_text().splitlines()][: a.prompts]
    base = Path(a.rec).parent
    records = []

    def iou_reward(completions, completion_ids, box, width, height, id, trainer_state, **kwargs):
        out = []
        for ids, (gx1, gy1, gx2, gy2), w, h in zip(completion_ids, box, width, height):
            m = BOX.search(tokenizer.decode(ids, skip_special_tokens=False))
            if m is None:
                out.append(0.0)
                continue
            x1, y1, x2, y2 = (int(v) / 1000 * s for v, s in zip(m.groups(), (w, h, w, h)))
            if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
                out.append(0.0)
                continue
            inter = max(0.0, min(x2, gx2) - max(x1, gx1)) * max(0.0, min(y2, gy2) - max(y1, gy1))
            union = max(0.0, x2 - x1) * max(0.0, y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
            out.append(inter / union if union > 0 else 0.0)
        for i, ids in enumerate(completion_ids):
            records.append(
                {"step": trainer_state.global_step + 1, "id": id[i], "ids": list(ids), "iou": out[i]}
            )
        return out

    images = [Image.open(base / r["image"]).convert("RGB") for r in rows]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {
                                "type": "text",
                                "text": f"<|object_ref_start|>{r['expression']}<|object_ref_end|>",
                            },
                        ],
                    }
                ],
                "image": im,
                "box": r["box"],
                "width": im.width,
                "height": im.height,
                "id": r["id"],
            }
            for r, im in zip(rows, images)
        ]
    )
    args = GRPOConfig(
        output_dir=a.out,
        num_generations=a.generations,
        per_device_train_batch_size=a.generations * a.prompts_per_step,
        max_steps=a.steps,
        max_completion_length=a.max_completion_length,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_steps=10_000,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    peft_config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    timer = _step_timer()
    trainer = GRPOTrainer(
        model=loaded.model,
        reward_funcs=iou_reward,
        args=args,
        train_dataset=dataset,
        processing_class=loaded.processor,
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(a.out)
    return {"times": timer.times, "records": records}


def compare_rewards(model: str, rec: str, prompts: int, records: list[dict]) -> tuple[int, float, list[str]]:
    """spr's iou reward on the plain run's completions: (completions compared, largest difference, texts)."""
    from spr import models
    from spr.data.images import image_size
    from spr.evaluate.readers import read_rec
    from spr.rewards import make_rewards, rec_columns

    adapter = models.load(model)
    samples = {s.id: s for s in read_rec(rec)[:prompts]}
    columns = []
    for r in records:
        s = samples[r["id"]]
        size = image_size(s.image)
        prompt = adapter.rec_prompt(s.expression)
        columns.append(
            rec_columns(s.id, s.image, size, s.expression, s.box, prompt, adapter.fmt, adapter.geometry(size))
        )
    (iou,) = make_rewards(["iou"], decode=adapter.decode)
    ids = [r["ids"] for r in records]
    values = iou(
        completions=[None] * len(ids), completion_ids=ids, **{k: [c[k] for c in columns] for k in columns[0]}
    )
    diff = max(abs(v - r["iou"]) for v, r in zip(values, records))
    return len(records), diff, [adapter.decode(i) for i in ids]


def child(a) -> None:
    result = run_spr(a) if a.impl == "spr" else run_plain(a)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(BASE))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=16, help="REC prompts in the dataset")
    parser.add_argument("--prompts-per-step", type=int, default=1)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved repeats; the best round is reported"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--rec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child(a)
        return

    threads = str(a.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = [
            sys.executable,
            "-m",
            "spr.cli",
            "toy",
            "world",
            "--out",
            str(tmp / "world"),
            "--preset",
            "easy",
        ]
        world += [
            "--rec-kinds",
            "label",
            "--train",
            str(max(4, a.prompts)),
            "--val",
            "1",
            "--test",
            "1",
            "--quiet",
        ]
        subprocess.run(world, check=True, env=env, capture_output=True)
        rec = str(tmp / "world" / "train" / "rec.jsonl")
        times: dict[str, list[float]] = {"spr": [], "plain": []}
        runs: dict[str, dict] = {}
        for _ in range(a.rounds):  # interleaved, so that load from other processes hits both sides alike
            for impl in ("spr", "plain"):
                out = tmp / impl
                cmd = [sys.executable, str(HERE), "--child", "--impl", impl, "--model", a.model, "--rec", rec]
                cmd += ["--out", str(out), "--steps", str(a.steps), "--prompts", str(a.prompts)]
                cmd += ["--prompts-per-step", str(a.prompts_per_step), "--generations", str(a.generations)]
                cmd += ["--max-completion-length", str(a.max_completion_length)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"{impl} failed:\n{proc.stderr[-3000:]}")
                runs[impl] = json.loads(line[len("RESULT ") :])
                times[impl].append(statistics.median(runs[impl]["times"][1:]))
                shutil.rmtree(out, ignore_errors=True)  # a fresh output dir: no resume between rounds
        n, diff, plain_texts = compare_rewards(a.model, rec, a.prompts, runs["plain"]["records"])
        spr_texts = [c["text"] for c in runs["spr"]["completions"]]
        same = spr_texts == plain_texts
        same_rewards = same and all(c["iou"] == r["iou"] for c, r in zip(runs["spr"]["completions"], runs["plain"]["records"]))  # fmt: skip

    ts, tp = min(times["spr"]), min(times["plain"])
    print(
        f"model {Path(a.model).name}, {a.prompts} REC prompts, {a.prompts_per_step} prompt(s) x {a.generations} "
        f"generations per step, {a.steps} steps: median step after the first, best of {a.rounds} interleaved "
        f"rounds, {a.threads} thread(s)"
    )
    print(f"{'spr s/step':>11} {'plain s/step':>13} {'ratio':>6}")
    print(f"{ts:>11.3f} {tp:>13.3f} {ts / tp:>6.2f}")
    print(f"both runs sampled the same {len(spr_texts)} completions: {'yes' if same else 'NO'}")
    print(
        f"spr's iou reward vs the hand-written one on the plain run's {n} completions: largest difference {diff:.2e}"
    )
    if same:
        print(f"rewards logged by the two runs identical: {'yes' if same_rewards else 'NO'}")


if __name__ == "__main__":
    main()
