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


def test_real_configuration_builds_at_its_size(tmp_path):
    gpu = gpu_script()
    adapter, model_dir = gpu.build("qwen2_5_vl", True, "meta", "bfloat16", tmp_path, image_tokens=1024)
    info = gpu.describe(adapter)
    assert 8.2 < info["parameters_b"] < 8.4  # Qwen2.5-VL-7B-Instruct: 8.29 B with its vision tower
    assert info["dtype"] == "torch.bfloat16"
    text = adapter.model.config.text_config
    assert len(text.layer_types) == text.num_hidden_layers == 28
    assert info["pixel_budget"] == {"min_pixels": 1024 * 28 * 28, "max_pixels": 1024 * 28 * 28}
    assert (model_dir / "config.json").exists() and (model_dir / "processor_config.json").exists()


@pytest.mark.slow
def test_cpu_mode_runs_every_part(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    gpu = gpu_script()
    code = gpu.main(["--mode", "cpu", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
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
    for name, cache, _share in gpu.DPO_RUNS:
        run = model[f"dpo {name}"]
        assert run["steps"] == 2 and run["step_s"] > 0
        assert (run["reference_pass_s"] is not None) == cache
    assert model["grpo"]["steps"] == 1 and model["grpo"]["completions_per_step"] == 4
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "0 error(s)" in log and "| tiny qwen2_5_vl | dpo savings on" in log
    assert (tmp_path / "out" / "demo_results.json").exists()


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
