"""train -> merge -> eval, end to end through the CLI, on fixtures of every data layout, with a tiny Qwen2-VL."""

from __future__ import annotations

import json

import pytest
from evaluate_fixtures import (
    make_captions,
    make_dpo_jsonl,
    make_flickr,
    make_rec_jsonl,
    make_refer,
    make_regions,
)

from spr.cli import main


@pytest.mark.slow
def test_train_merge_eval_on_every_layout(tiny_model_dir, tmp_path, capsys):
    base = str(tiny_model_dir("qwen2_vl"))
    pairs = make_dpo_jsonl(tmp_path / "pairs", n=2)
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert (
        main(
            [
                "train",
                "--model",
                base,
                "--data",
                str(pairs),
                "--out",
                str(adapter),
                "--max-steps",
                "1",
                "--per-device-train-batch-size",
                "2",
                "--logging-steps",
                "1",
            ]
        )
        == 0
    )
    assert main(["merge", "--adapter", str(adapter), "--out", str(merged)]) == 0

    common = ["--model", str(merged), "--max-new-tokens", "6", "--batch-size", "4"]
    runs = {
        "rec_jsonl": [
            "rec",
            "--data",
            str(make_rec_jsonl(tmp_path / "rec", broken_image=True)),
            "--splits",
            "val",
            "test",
            "testC",
        ],
        "rec_refer": ["rec", "--data", str(make_refer(tmp_path / "refcoco")), "--splits", "testA", "testB"],
        "grounding": ["grounding", "--data", str(make_flickr(tmp_path / "flickr"))],
        "caption": ["caption", "--data", str(make_captions(tmp_path / "cap"))],
        "description": [
            "description",
            "--data",
            str(make_regions(tmp_path / "regions")),
            "--max-new-tokens",
            "12",
        ],
    }
    metrics = {}
    for name, args in runs.items():
        out = tmp_path / "eval" / name
        assert main(["eval", *args, *common, "--out", str(out)]) == 0, name
        metrics[name] = json.loads((out / "metrics.json").read_text())
        assert (out / "predictions.jsonl").exists()

    rec_m = metrics["rec_jsonl"]
    assert rec_m["n"] == 5 and rec_m["image_fail"] == pytest.approx(1 / 5)
    assert rec_m["splits"]["testC"]["missing"] is True
    assert metrics["rec_refer"]["n"] == 8 and set(metrics["rec_refer"]["splits"]) == {"testA", "testB"}
    assert metrics["grounding"]["n"] == 5 and "recall@1_merged" in metrics["grounding"]
    assert metrics["caption"]["n"] == 4 and "CIDEr" in metrics["caption"]
    assert metrics["description"]["n"] == 2 and "f1@0.75" in metrics["description"]

    capsys.readouterr()
    assert (
        main(["eval", "compare", str(tmp_path / "eval" / "rec_jsonl"), str(tmp_path / "eval" / "rec_jsonl")])
        == 0
    )
    table = capsys.readouterr().out
    assert "| acc@0.5 |" in table and "+0.0000" in table
