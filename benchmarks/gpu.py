"""The whole method on one CUDA GPU in bf16, and the cost of a real 7-8B configuration: one prepared command.

    bash benchmarks/gpu.sh [--out DIR] [--budget-s 420]              # a GPU machine: installs .whl/, runs this
    python benchmarks/gpu.py --mode gpu --out DIR [--budget-s 420] [--parts demo generate dpo grpo]
    python benchmarks/gpu.py --mode cpu --out DIR                    # the same script on tiny models (tested)

Parts, each measurement in its own try/except (a failure is recorded and the rest still runs), under one time
budget (``--budget-s``: a measurement that would start too late is recorded as skipped, and one that runs past
its share is stopped by an alarm):

- ``demo``: ``spr demo`` reduced (fewer scenes, samples and evaluation samples) with every stage on the device
  (``--mode gpu``: generate, score (CLIP), train in bf16 on cuda, merge to bf16, eval on cuda); checks that the
  run finished, its candidates' boxes parse and its numbers are finite; in gpu mode the same reduced config runs
  at the same time on the CPU in fp32, and the two are compared (the base's metrics, the direction of the SPR
  model's change, the pairs' scores). Then the shipped base, loaded in the device's precision, samples the same
  candidates with the shared prefill on and off (``spr.sampling.generate_into``, as benchmarks/generate.py).
- ``generate``: random-weight models of the released configurations (``REAL``: Qwen2.5-VL-7B-Instruct, and
  Qwen3-VL-8B-Instruct when the ``qwen3_vl`` family exists), built directly on the device in bf16, with about
  1,000 image tokens per prompt: new tokens per second at N = 1 and 8 samples per prompt (answers of fixed
  length), shared prefill on and off, and the peak memory.
- ``dpo``: `spr train` (``spr.train.train`` on the model in memory, LoRA, gradient checkpointing on the GPU) on
  pairs whose images have as many image tokens: s/step (median after the first), the reference pass, peak GiB,
  with the cached reference and the shared vision on, off, and each alone.
- ``grpo``: `spr grpo` (``spr.grpo.train``, ``iou`` reward on REC prompts): s/step and peak GiB.

``--mode cpu`` runs every part on tiny models of the same families with small sizes (tests/test_gpu_script.py).
Writes ``OUT/gpu.json`` (every number, after every measurement), ``OUT/gpu.log``, ``OUT/demo.log`` and the
demo's ``OUT/demo_results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The released checkpoints' config.json values (text and vision parts); the weights are random.
REAL = {
    "qwen2_5_vl": {
        "name": "Qwen2.5-VL-7B-Instruct",
        "text": dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
            max_window_layers=28, sliding_window=32768, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        ),
        "vision": dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2, hidden_act="silu",
        ),
    },
    "qwen3_vl": {
        "name": "Qwen3-VL-8B-Instruct",
        "text": dict(
            vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                             "mrope_interleaved": True},
        ),
        "vision": dict(
            depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh",
        ),
    },
}  # fmt: skip

# The demo, reduced; the device settings are added per mode.
DEMO_SET = {
    "gpu": ["world.train=24", "world.val=2", "world.test=24", "generate.samples=4", "eval.rec.limit=60",
            "eval.description.limit=24"],
    "cpu": ["world.train=4", "world.val=1", "world.test=4", "generate.samples=2", "generate.max_new_tokens=40",
            "eval.rec.limit=8", "eval.description.limit=4", "eval.description.max_new_tokens=40"],
}  # fmt: skip
ON_DEVICE = ["generate.device={d}", "generate.dtype={t}", "score.device={d}", "train.device={d}", "train.dtype={t}",
             "merge.dtype={t}", "eval.rec.device={d}", "eval.rec.dtype={t}", "eval.description.device={d}",
             "eval.description.dtype={t}"]  # fmt: skip

MODES = {
    "gpu": dict(device="cuda", dtype="bfloat16", real=True, image_tokens=1024, new_tokens=64, prompts=4, rounds=2,
                samples=[1, 8], pairs=8, dpo_batch=2, dpo_steps=4, rec_prompts=4, grpo_generations=8, grpo_steps=2,
                grpo_tokens=64, demo_timeout=200, prefill_dtypes=["bfloat16", "float32"]),
    "cpu": dict(device="cpu", dtype="float32", real=False, image_tokens=16, new_tokens=6, prompts=2, rounds=1, samples=[1, 4],
                pairs=4, dpo_batch=2, dpo_steps=2, rec_prompts=2, grpo_generations=4, grpo_steps=1, grpo_tokens=6,
                demo_timeout=240, prefill_dtypes=["float32"]),
}  # fmt: skip

PARTS = ("demo", "prefill", "generate", "dpo", "grpo")
DEMO_METRICS = ("acc@0.5", "acc@0.75", "mean_iou", "description_f1@0.5")


# -------------------------------------------------------------------------------------------- the run's record


class Run:
    """The log, the JSON record (written after every measurement) and the time budget."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "gpu.log").open("a", encoding="utf-8")
        self.start = time.monotonic()
        self.budget = budget_s
        self.results: dict = {"meta": {}, "demo": {}, "models": {}, "errors": []}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def log(self, *parts) -> None:
        line = f"[{self.elapsed():6.1f}s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "gpu.json").write_text(
            json.dumps(self.results, indent=1, default=str) + "\n", encoding="utf-8"
        )

    def measure(self, where: dict, key: str, fn, need_s: float, limit_s: float):
        """``where[key] = fn()``, or the error, or "skipped" when less than ``need_s`` of the budget is left;
        ``fn`` is stopped after ``limit_s`` (or the budget's end)."""
        if self.left() < need_s:
            where[key] = {"skipped": f"{self.left():.0f} s of the budget left, {need_s:.0f} s needed"}
            self.log(f"SKIP {key}: {where[key]['skipped']}")
            self.save()
            return None
        self.log(f"START {key}")
        t0 = time.monotonic()
        try:
            from spr.clock import time_limit

            seconds = max(1.0, min(limit_s, self.left()))
            with time_limit(seconds, f"stopped after {seconds:.0f} s (its share of the time budget)"):
                value = fn()
            where[key] = value
            self.log(f"DONE {key} in {time.monotonic() - t0:.1f}s: {short(value)}")
        except BaseException as e:  # noqa: B036 - the alarm's TimeoutError and CUDA errors alike: keep going
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.format_exc()
            where[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            self.results["errors"].append(
                {"what": key, "error": where[key]["error"], "traceback": tb[-6000:]}
            )
            self.log(f"FAIL {key} after {time.monotonic() - t0:.1f}s: {type(e).__name__}: {str(e)[:500]}")
            self.log_file.write(tb + "\n")
            value = None
        finally:
            free_memory()
        self.save()
        return value


def short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) < 400 else text[:400] + " ..."


def free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def bench_module(name: str):
    """A sibling benchmark (benchmarks/<name>.py), for its data makers and step timer."""
    spec = importlib.util.spec_from_file_location(f"spr_bench_{name}", HERE.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def meta(mode: str) -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "tokenizers",
        "huggingface_hub",
    ):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    info = {"mode": mode, "python": platform.python_version(), "versions": versions}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    return info


# ------------------------------------------------------------------------------------------------------- demo


def demo_command(out: Path, mode: str, device: str, dtype: str) -> list[str]:
    sets = list(DEMO_SET[mode])
    if device != "cpu":
        sets += [s.format(d=device, t=dtype) for s in ON_DEVICE]
    return [sys.executable, "-m", "spr.cli", "demo", "--out", str(out), "--overwrite", "--set", *sets]


def check_demo(run_dir: Path) -> dict:
    """What a user would look at first: the run finished, boxes parse, the numbers are finite."""
    results = json.loads((run_dir / "results.json").read_text())
    candidates = [
        json.loads(line) for line in (run_dir / "round-1" / "candidates.jsonl").read_text().splitlines()
    ]
    boxes = [g["box"] for c in candidates for g in c["groundings"]]
    bad_boxes = [
        b for b in boxes if not (len(b) == 4 and all(map(math.isfinite, b)) and b[0] < b[2] and b[1] < b[3])
    ]
    metrics = {
        name: {k: v for k, v in m.items() if k in DEMO_METRICS} for name, m in results["models"].items()
    }
    numbers = [v for m in results["models"].values() for v in m.values() if isinstance(v, int | float)]
    pairs = results.get("pairs") or [{}]
    summary = json.loads((run_dir / "round-1" / "candidates.summary.json").read_text())
    return {
        "candidates": len(candidates),
        "with_boxes": sum(bool(c["groundings"]) for c in candidates),
        "boxes": len(boxes),
        "bad_boxes": len(bad_boxes),
        "with_problems": sum(bool(c["problems"]) for c in candidates),
        "generate_s": round(summary.get("seconds", 0.0), 1),
        "pairs": pairs[0].get("pairs"),
        "mean_chosen_total": pairs[0].get("mean chosen total"),
        "mean_rejected_total": pairs[0].get("mean rejected total"),
        "metrics": metrics,
        "all_finite": all(map(math.isfinite, numbers)),
        "ok": bool(candidates) and not bad_boxes and all(map(math.isfinite, numbers)) and len(metrics) >= 2,
    }


def compare_demo(device_run: dict, cpu_run: dict) -> dict:
    """The device run against the CPU fp32 run of the same config: the base's metrics (same model, other
    precision) and the direction of the SPR model's change per metric."""
    out = {}
    base_d, base_c = device_run["metrics"]["base"], cpu_run["metrics"]["base"]
    spr_d, spr_c = device_run["metrics"]["round 1"], cpu_run["metrics"]["round 1"]
    for k in DEMO_METRICS:
        if k in base_d and k in base_c:
            delta_d, delta_c = spr_d[k] - base_d[k], spr_c[k] - base_c[k]
            same = (delta_d > 0) == (delta_c > 0) or max(abs(delta_d), abs(delta_c)) < 0.02
            out[k] = {"base_device": base_d[k], "base_cpu": base_c[k], "change_device": round(delta_d, 4),
                      "change_cpu": round(delta_c, 4), "same_direction": same}  # fmt: skip
    for k in ("mean_chosen_total", "mean_rejected_total"):
        out[k] = {"device": device_run[k], "cpu": cpu_run[k]}
    return out


def part_demo(run: Run, mode: str, work: Path, cfg: dict) -> None:
    where = run.results["demo"]
    device, dtype = cfg["device"], cfg["dtype"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    reference = None
    # the CPU fp32 run of the same config, beside the device run (one thread: tiny models)
    if device != "cpu":
        cpu_log = (work / "demo_cpu.log").open("w")
        cmd = demo_command(work / "demo_cpu", mode, "cpu", "float32")
        reference = subprocess.Popen(cmd, stdout=cpu_log, stderr=subprocess.STDOUT, env={**env, "OMP_NUM_THREADS": "1"}, cwd=work)  # fmt: skip
        where["cpu_command"] = " ".join(cmd[2:])

    def device_demo():
        cmd = demo_command(work / "demo", mode, device, dtype)
        where["command"] = " ".join(cmd[2:])
        t0 = time.monotonic()
        with (run.out / "demo.log").open("w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
                                  timeout=max(10, min(cfg["demo_timeout"], run.left() - 5)))  # fmt: skip
        seconds = round(time.monotonic() - t0, 1)
        if proc.returncode != 0:
            tail = (run.out / "demo.log").read_text()[-3000:]
            raise RuntimeError(f"spr demo exited with {proc.returncode} after {seconds} s:\n{tail}")
        shutil.copy(work / "demo" / "results.json", run.out / "demo_results.json")
        return {"seconds": seconds, **check_demo(work / "demo")}

    run.measure(where, "device_run", device_demo, need_s=30, limit_s=cfg["demo_timeout"] + 10)

    def cpu_demo():
        t0 = time.monotonic()
        try:
            code = reference.wait(timeout=max(5, min(cfg["demo_timeout"], run.left() - 5)))
        except subprocess.TimeoutExpired:
            reference.kill()
            raise
        if code != 0:
            raise RuntimeError(f"CPU demo exited with {code}:\n{(work / 'demo_cpu.log').read_text()[-3000:]}")
        return {"waited_s": round(time.monotonic() - t0, 1), **check_demo(work / "demo_cpu")}

    if reference is not None:
        run.measure(where, "cpu_run", cpu_demo, need_s=10, limit_s=cfg["demo_timeout"])
        if isinstance(where.get("device_run"), dict) and "metrics" in where["device_run"] and "metrics" in where.get("cpu_run", {}):  # fmt: skip
            where["compare"] = compare_demo(where["device_run"], where["cpu_run"])
            run.save()


def part_prefill(run: Run, work: Path, cfg: dict) -> None:
    where = run.results.setdefault("prefill", {})
    for dtype in cfg["prefill_dtypes"]:
        run.measure(
            where, dtype, lambda t=dtype: shared_prefill_check(work, cfg["device"], t), need_s=20, limit_s=90
        )


def shared_prefill_check(work: Path, device: str, dtype: str) -> dict:
    """The shipped base on the device, in ``dtype``, samples the demo's candidates with the shared prefill (the KV
    cache of one prefill repeated to the N rows) and with every row prefilled: how many candidates are equal
    (all of them in exact arithmetic; the two batch shapes round differently, which a sampled token can feel)."""
    from spr import models
    from spr.data.jsonl import JsonlWriter, read_records
    from spr.data.records import Region
    from spr.generate import GenerateConfig
    from spr.prompts import select_templates
    from spr.sampling import generate_into

    adapter = models.load(ROOT / "src/spr/toy/assets/base", device=device, dtype=dtype)
    regions_file = work / "demo" / "round-1" / "regions.jsonl"
    if regions_file.exists():  # the demo's shapes-world regions, which the base was trained on
        regions = read_records(regions_file, Region)[:8]
    else:
        (work / "prefill-images").mkdir(parents=True, exist_ok=True)
        regions = bench_module("generate").make_regions(8, work / "prefill-images")
    templates = select_templates(None)
    files = {}
    for shared in (True, False):
        out = work / f"prefill-{dtype}-{shared}.jsonl"
        config = GenerateConfig(
            model="m", regions="r", out=str(out), samples=4, batch_size=8, max_new_tokens=120
        )
        adapter.shared_prefill = shared
        with JsonlWriter(out) as writer:
            generate_into(adapter, regions, templates, writer, config, progress=False)
        files[shared] = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    same = sum(a == b for a, b in zip(files[True], files[False]))
    return {"candidates": len(files[True]), "identical": same, "all_identical": files[True] == files[False]}


# -------------------------------------------------------------------------------------------------- the models


def build(family: str, real: bool, device: str, dtype: str, work: Path, image_tokens: int):
    """A random-weight model of ``family`` on ``device`` (built there, no copy through host memory): the
    released configuration (``REAL``) or the family's tiny one, with the project's tiny tokenizer (its ids are
    the special tokens'; the vocabulary keeps the real size). Returns (adapter, model_dir): the directory holds
    the config and processor only (what fingerprints and `spr_train.json` read)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    from spr.models.adapter import ModelAdapter
    from spr.models.families import get_family
    from spr.models.tiny import BUILDERS, make_tokenizer, token_ids

    spec = get_family(family)
    tokenizer = make_tokenizer(spec)
    config, processor = (spec.tiny or BUILDERS[spec.name])(spec, tokenizer)  # as spr.models.tiny.make_tiny
    if real:
        d = config.to_dict()
        for part in ("text", "vision"):
            base = {k: v for k, v in d[f"{part}_config"].items() if k not in ("layer_types", "head_dim")}
            d[f"{part}_config"] = {**base, **REAL[family][part]}
        d["tie_word_embeddings"] = False
        config = type(config).from_dict(d)
        vision = config.vision_config
        processor.image_processor.patch_size = vision.patch_size
        processor.image_processor.merge_size = vision.spatial_merge_size
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, spec.model_class)._from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    model.generation_config = GenerationConfig(**token_ids(tokenizer, spec))
    model_dir = work / f"{family}-{'real' if real else 'tiny'}"
    model.config.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    adapter = ModelAdapter(model, processor, spec, device=device)
    px = processor.image_processor.patch_size * processor.image_processor.merge_size
    adapter.set_pixel_budget(min_pixels=image_tokens * px * px, max_pixels=image_tokens * px * px)
    return adapter, model_dir


def describe(adapter) -> dict:
    params = sum(p.numel() for p in adapter.model.parameters())
    language = adapter.model.get_submodule(adapter.spec.language_module)
    return {
        "parameters_b": round(params / 1e9, 3),
        "language_parameters_b": round(sum(p.numel() for p in language.parameters()) / 1e9, 3),
        "dtype": str(next(adapter.model.parameters()).dtype),
        "device": str(next(adapter.model.parameters()).device),
        "pixel_budget": adapter.pixel_budget(),
    }


def prompts_of(adapter, regions, n: int):
    from spr.data.images import load_image
    from spr.prompts import select_templates

    template = select_templates(None)[:1]
    images, texts = [], []
    for region in regions[:n]:
        prompt = adapter.description_prompts(region, template)[0]
        images.append(prompt.view_image(load_image(region.image, 0)))
        texts.append(prompt.text)
    return images, texts


def measure_generate(adapter, inputs, n: int, shared: bool, new_tokens: int, device: str) -> dict:
    adapter.shared_prefill = shared
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    out = adapter.generate(inputs, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, num_return_sequences=n)  # fmt: skip
    sync(device)
    seconds = time.perf_counter() - t0
    return {"rows": out.shape[0], "new_tokens": out.numel(), "seconds": round(seconds, 3),
            "tokens_per_s": round(out.numel() / seconds, 1), "peak_gib": peak_gib(device)}  # fmt: skip


def part_generate(run: Run, where: dict, adapter, regions, cfg: dict) -> None:
    device = cfg["device"]
    images, texts = prompts_of(adapter, regions, cfg["prompts"])
    inputs = adapter.build_inputs(images, texts)
    image_ids = list(adapter.media_token_ids)
    image_tokens = int(sum((inputs["input_ids"][0] == i).sum() for i in image_ids))
    where["generate_prompt"] = {"prompts": len(texts), "prompt_tokens": int(inputs["input_ids"].shape[1]),
                                "image_tokens": image_tokens, "new_tokens": cfg["new_tokens"]}  # fmt: skip

    ways = [(n, shared) for n in cfg["samples"] for shared in ((True, False) if n > 1 else (True,))]
    key = {
        w: f"generate N={w[0]}" + (f" shared prefill {'on' if w[1] else 'off'}" if w[0] > 1 else "")
        for w in ways
    }

    def warm_up():  # every way once at the full shapes: kernel choice and allocator growth stay out of the timings
        for n, shared in ways:
            measure_generate(adapter, inputs, n, shared, 4, device)
        return "done"

    run.measure(where, "generate_warmup", warm_up, need_s=30, limit_s=120)
    rounds: dict = {w: [] for w in ways}
    for r in range(cfg["rounds"]):  # interleaved: drift hits every way alike; the best round is reported
        for w in ways:
            got = run.measure(where, f"{key[w]} round {r + 1}", lambda w=w: measure_generate(adapter, inputs, *w, cfg["new_tokens"], device),
                              need_s=15, limit_s=120)  # fmt: skip
            where.pop(f"{key[w]} round {r + 1}", None)
            if got:
                rounds[w].append(got)
    for w in ways:
        if rounds[w]:
            best = min(rounds[w], key=lambda x: x["seconds"])
            where[key[w]] = {**best, "seconds_each_round": [x["seconds"] for x in rounds[w]]}
    n = cfg["samples"][-1]
    on, off = where.get(f"generate N={n} shared prefill on"), where.get(f"generate N={n} shared prefill off")
    if isinstance(on, dict) and isinstance(off, dict) and "tokens_per_s" in on and "tokens_per_s" in off:
        where["shared_prefill_speedup"] = round(on["tokens_per_s"] / off["tokens_per_s"], 3)
    run.save()


class LoraGrab:
    """A callback that keeps the trained (PEFT) model, so that its LoRA layers can be taken out afterwards and
    the next run starts from the same base."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Grab(TrainerCallback):
            model = None

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.model = model

        return Grab()


def unload_lora(adapter, grab) -> None:
    """The base again: the trained model's LoRA layers taken out (not merged), and any a run left in the base
    when it failed before its trainer held them."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if grab.model is not None and hasattr(grab.model, "unload"):
        adapter.model = grab.model.unload()
    model = adapter.model
    for name, module in list(model.named_modules()):
        if name and isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    model.eval()


def measure_dpo(
    adapter, model_dir: Path, data: Path, out: Path, savings: tuple[bool, bool, bool], cfg: dict
) -> dict:
    from spr.train import TrainConfig, train

    device = cfg["device"]
    cache, share, prompt = savings
    for f in data.parent.glob(f"{data.stem}.ref.*"):
        f.unlink()  # every run computes its reference log-probs
    train_bench = bench_module("train")
    timer, grab = train_bench._step_timer(), LoraGrab()
    config = TrainConfig(
        model=str(model_dir), data=str(data), out=str(out), max_steps=cfg["dpo_steps"],
        per_device_train_batch_size=cfg["dpo_batch"], save_steps=10_000, logging_steps=1, learning_rate=1e-5,
        cache_reference=cache, share_vision=share, share_prompt=prompt, device="cpu" if device == "cpu" else "cuda", dtype="auto",
        gradient_checkpointing=device != "cpu", overwrite=True, quiet=True,
    )  # fmt: skip
    reset_peak(device)
    try:
        summary = train(config, adapter=adapter, callbacks=[timer, grab])
    finally:
        unload_lora(adapter, grab)
    times = timer.times
    return {
        "steps": len(times),
        "step_s": round(statistics.median(times[1:] or times), 3),
        "first_step_s": round(times[0], 3),
        "all_steps_s": round(sum(times), 2),
        "peak_gib": peak_gib(device),
        "loss": summary.get("train_loss"),
        "precision": summary.get("precision"),
        "margins": summary.get("rewards/margins"),
    }


DPO_RUNS = [  # (name, (cache_reference, share_vision, share_prompt)): all on and off first, the others after GRPO
    ("savings on", (True, True, True)),
    ("savings off", (False, False, False)),
    ("prompt per answer", (True, True, False)),
    ("cached reference only", (True, False, False)),
    ("shared vision only", (False, True, False)),
    ("shared prompt only", (False, False, True)),
]


def part_dpo(run: Run, where: dict, adapter, model_dir: Path, work: Path, cfg: dict, runs) -> None:
    data = work / "pairs" / "dpo.jsonl"
    if not data.exists():
        bench_module("train").make_pairs(data.parent, cfg["pairs"])
    for name, savings in runs:
        out = work / f"dpo-{name.replace(' ', '-')}"
        run.measure(where, f"dpo {name}", lambda s=savings, o=out: measure_dpo(adapter, model_dir, data, o, s, cfg),
                    need_s=40, limit_s=150)  # fmt: skip
    on, off = where.get("dpo savings on"), where.get("dpo savings off")
    if isinstance(on, dict) and isinstance(off, dict) and "step_s" in on and "step_s" in off:
        where["dpo_savings_step_ratio"] = round(on["step_s"] / off["step_s"], 3)
        if on["peak_gib"] and off["peak_gib"]:
            where["dpo_savings_peak_ratio"] = round(on["peak_gib"] / off["peak_gib"], 3)
    run.save()


def write_rec(regions, path: Path) -> Path:
    """REC prompts over the benchmark images: each region's first object, by its label."""
    rows = [{"id": r.id, "image": r.image, "expression": r.objects[0]["label"], "box": r.objects[0]["box"],
             "split": "train"} for r in regions]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def measure_grpo(adapter, model_dir: Path, rec: Path, out: Path, cfg: dict) -> dict:
    import spr.train as train_module
    from spr.grpo import GrpoConfig, train

    device = cfg["device"]
    timer, grab = bench_module("train")._step_timer(), LoraGrab()
    g = cfg["grpo_generations"]
    config = GrpoConfig(
        model=str(model_dir), out=str(out), rec=str(rec), rewards=["iou"], num_generations=g,
        per_device_train_batch_size=g, max_steps=cfg["grpo_steps"], max_completion_length=cfg["grpo_tokens"],
        learning_rate=1e-5, save_steps=10_000, device="cpu" if device == "cpu" else "cuda", dtype="auto",
        gradient_checkpointing=device != "cpu", overwrite=True, quiet=True,
    )  # fmt: skip
    load = train_module.load_for_training
    train_module.load_for_training = lambda *a, **k: (
        adapter
    )  # spr grpo loads from disk; this model lives here
    reset_peak(device)
    try:
        summary = train(config, callbacks=[timer, grab])
    finally:
        train_module.load_for_training = load
        unload_lora(adapter, grab)
    times = timer.times
    return {
        "steps": len(times),
        "step_s": [round(t, 3) for t in times],
        "completions_per_step": summary.get("completions per step"),
        "generated_tokens": summary.get("generated tokens"),
        "peak_gib": peak_gib(device),
        "precision": summary.get("precision"),
        "loss": summary.get("train_loss"),
    }


def part_model(run: Run, family: str, parts: list[str], work: Path, cfg: dict) -> None:
    real = cfg["real"]
    name = REAL[family]["name"] if real else f"tiny {family}"
    where = run.results["models"].setdefault(name, {"family": family})
    (work / "images").mkdir(parents=True, exist_ok=True)
    regions = bench_module("generate").make_regions(max(cfg["prompts"], cfg["rec_prompts"]), work / "images")
    built = run.measure(where, "build", lambda: build(family, real, cfg["device"], cfg["dtype"], work, cfg["image_tokens"]),
                        need_s=40, limit_s=180)  # fmt: skip
    if built is None:
        return
    adapter, model_dir = built
    where["build"] = describe(adapter)
    run.save()
    try:
        if "generate" in parts:
            part_generate(run, where, adapter, regions, cfg)
        if "dpo" in parts:
            part_dpo(run, where, adapter, model_dir, work, cfg, DPO_RUNS[:2])
        if "grpo" in parts:
            rec = write_rec(regions[: cfg["rec_prompts"]], work / "rec.jsonl")
            run.measure(where, "grpo", lambda: measure_grpo(adapter, model_dir, rec, work / "grpo", cfg), need_s=40, limit_s=150)  # fmt: skip
        if "dpo" in parts:  # each saving alone, when the budget allows
            part_dpo(run, where, adapter, model_dir, work, cfg, DPO_RUNS[2:])
    finally:
        adapter.model = None  # the measurements' closures hold the adapter: free the weights here
        free_memory()


# ---------------------------------------------------------------------------------------------------- the table


def table(results: dict) -> str:
    """The measured table: one row per model and measurement."""
    from spr.table import markdown_table

    rows = []
    checks = [("demo", k, results["demo"].get(k)) for k in ("device_run", "cpu_run")]
    checks += [("shared prefill = every row prefilled", k, v) for k, v in results.get("prefill", {}).items()]
    for part, key, v in checks:
        if isinstance(v, dict):
            brief = {
                k: v[k]
                for k in ("seconds", "candidates", "bad_boxes", "identical", "ok", "error", "skipped")
                if k in v
            }
            rows.append([part, key, json.dumps(brief)[:120], "", "", ""])
    for metric, v in results["demo"].get("compare", {}).items():
        rows.append(["demo", f"device vs cpu: {metric}", json.dumps(v)[:160], "", "", ""])
    for name, m in results["models"].items():
        for key, v in m.items():
            if not isinstance(v, dict) or key in ("build", "generate_prompt"):
                continue
            if "error" in v or "skipped" in v:
                rows.append([name, key, v.get("error", v.get("skipped"))[:80], "", "", ""])
            elif key.startswith("generate"):
                rows.append([name, key, f"{v['tokens_per_s']} tok/s", f"{v['seconds']} s", v["peak_gib"], ""])
            elif key.startswith("dpo"):
                rows.append([name, key, f"{v['step_s']} s/step", f"all steps {v['all_steps_s']} s",
                             v["peak_gib"], v["loss"]])  # fmt: skip
            elif key == "grpo":
                rows.append([name, key, f"{v['step_s']} s/step", f"{v['completions_per_step']} answers/step",
                             v["peak_gib"], v["loss"]])  # fmt: skip
    return markdown_table(["model", "measurement", "value", "", "peak GiB", "loss"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=list(MODES), default="gpu", help="gpu: cuda, bf16, 7-8B; cpu: tiny models"
    )
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or "gpu-out", help="where gpu.json and the logs go"
    )
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget for everything")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--families", nargs="+", default=None, help="default: qwen2_5_vl, and qwen3_vl if it exists"
    )
    args = parser.parse_args(argv)

    run = Run(Path(args.out), args.budget_s)
    cfg = MODES[args.mode]
    import torch

    from spr.models.families import available_families

    if args.mode == "gpu" and not torch.cuda.is_available():
        run.log("no CUDA device: use --mode cpu")
        return 2
    run.results["meta"] = meta(args.mode)
    run.log("meta", json.dumps(run.results["meta"]))
    families = args.families or [f for f in ("qwen2_5_vl", "qwen3_vl") if f in available_families()]
    run.results["meta"]["families"] = families
    run.save()
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        model_parts = [p for p in args.parts if p not in ("demo", "prefill")]
        steps = [("demo", lambda: part_demo(run, args.mode, work, cfg))] if "demo" in args.parts else []
        if "prefill" in args.parts:
            steps.append(("prefill", lambda: part_prefill(run, work, cfg)))
        for family in families if model_parts else []:
            steps.append((family, lambda f=family: part_model(run, f, model_parts, work / f, cfg)))
        for name, step in steps:
            try:  # each measurement records its own errors; this catches the glue around them
                step()
            except Exception as e:
                run.results["errors"].append(
                    {"what": name, "error": repr(e), "traceback": traceback.format_exc()[-6000:]}
                )
                run.log(f"FAIL {name}: {e!r}")
                run.save()
    run.log("results\n" + table(run.results))
    run.log(f"{len(run.results['errors'])} error(s); JSON: {run.out / 'gpu.json'}")
    run.save()
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
