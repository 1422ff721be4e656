"""benchmarks/gpu.py, the one command of the GPU check, runs here in its CPU mode (tiny models, small sizes), and
its real 7-8B configurations build with the released models' sizes (on the meta device: no memory)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def gpu_script():
    spec = importlib.util.spec_from_file_location("spr_bench_gpu", GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "family, billions, layers, pixels_per_token",
    [("qwen2_5_vl", 8.29, 28, 28), ("qwen3_vl", 8.77, 36, 32)],  # with their vision towers
)
def test_real_configuration_builds_at_its_size(tmp_path, family, billions, layers, pixels_per_token):
    from spr.models import available_families

    if family not in available_families():
        pytest.skip(f"no {family} family here")
    gpu = gpu_script()
    adapter, model_dir = gpu.build(family, True, "meta", "bfloat16", tmp_path, image_tokens=1024)
    info = gpu.describe(adapter)
    assert info["parameters_b"] == pytest.approx(billions, abs=0.01)
    assert info["dtype"] == "torch.bfloat16"
    assert adapter.model.config.text_config.num_hidden_layers == layers
    pixels = 1024 * pixels_per_token**2
    assert info["pixel_budget"] == {"min_pixels": pixels, "max_pixels": pixels}
    assert (model_dir / "config.json").exists() and (model_dir / "processor_config.json").exists()


@pytest.mark.slow
def test_cpu_mode_runs_every_part(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    gpu = gpu_script()
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    code = gpu.main(["--mode", "cpu", "--out", out, "--work", work, "--families", "qwen2_5_vl"])
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert results["errors"] == [], results["errors"]
    assert code == 0
    demo = results["demo"]
    assert demo["device_run"]["ok"] and demo["device_run"]["bad_boxes"] == 0
    assert results["prefill"]["float32"]["all_identical"]  # the shared prefill samples what every row would
    model = results["models"]["tiny qwen2_5_vl"]
    for key in ("generate N=1", "generate N=4 shared prefill on", "generate N=4 shared prefill off"):
        assert model[key]["tokens_per_s"] > 0 and model[key]["new_tokens"] == model[key]["rows"] * 6
    assert model["generate N=4 shared prefill on"]["rows"] == 2 * 4
    for name, _savings in gpu.DPO_RUNS:
        run = model[f"dpo {name}"]
        assert run["steps"] == 2 and run["step_s"] > 0 and run["all_steps_s"] >= run["step_s"]
    assert model["grpo"]["steps"] == 1 and model["grpo"]["completions_per_step"] == 4
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "0 error(s)" in log
    assert any(
        line.startswith("| tiny qwen2_5_vl ") and "| dpo savings on " in line for line in log.splitlines()
    )
    assert (tmp_path / "out" / "demo_results.json").exists()


def test_a_failed_training_run_leaves_no_lora_layer_in_the_base(tmp_path):
    """A run that fails after PEFT wrapped the model but before the trainer held it: the next run must find the
    base's own linear layers (it found only LoRA layers and refused every later run)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    gpu = gpu_script()
    adapter, _ = gpu.build("qwen2_5_vl", False, "cpu", "float32", tmp_path, image_tokens=16)
    get_peft_model(adapter.model, LoraConfig(r=2, target_modules=["q_proj"]))  # wraps the base in place
    assert any(isinstance(m, BaseTunerLayer) for m in adapter.model.modules())
    gpu.unload_lora(adapter, gpu.LoraGrab())
    assert not any(isinstance(m, BaseTunerLayer) for m in adapter.model.modules())
    assert type(adapter.model.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear"


def test_a_failing_measurement_is_recorded_and_the_rest_runs(tmp_path):
    gpu = gpu_script()
    run = gpu.Run(tmp_path, budget_s=60)
    where: dict = {}
    run.measure(where, "broken", lambda: 1 / 0, need_s=0, limit_s=5)
    run.measure(where, "fine", lambda: {"x": 1}, need_s=0, limit_s=5)
    run.measure(where, "too late", lambda: {"x": 2}, need_s=1000, limit_s=5)
    assert where["broken"]["error"].startswith("ZeroDivisionError")
    assert where["fine"] == {"x": 1}
    assert "skipped" in where["too late"]
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["errors"][0]["what"] == "broken"


def test_a_measurement_past_its_share_is_stopped(tmp_path):
    import time

    gpu = gpu_script()
    run = gpu.Run(tmp_path, budget_s=60)
    where: dict = {}
    run.measure(where, "slow", lambda: time.sleep(10), need_s=0, limit_s=0.5)
    assert where["slow"]["error"].startswith("TimeoutError")
