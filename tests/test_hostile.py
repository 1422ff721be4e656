"""What a hostile user found (issue 23), kept found: a finished run stays finished, a resume over changed inputs
is refused, a diverged run stops, outputs are locked, and every bad input ends in one line naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from evaluate_fixtures import make_dpo_jsonl
from safetensors.torch import load_file

from spr.cli import main
from spr.errors import UserError
from spr.train import TrainConfig, train


def _train_config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data), out=str(out), per_device_train_batch_size=2,
                logging_steps=1, lora_dropout=0.0, learning_rate=1e-3, lr_scheduler_type="constant", quiet=True)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _logged_steps(out: Path) -> list[int]:
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [e["step"] for e in map(json.loads, lines) if "loss" in e]


def _tensors(path: Path) -> dict:
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_a_finished_training_run_stays_finished(tiny_model_dir, tmp_path):
    data = make_dpo_jsonl(
        tmp_path, n=3
    )  # 3 steps an epoch: step 8 is inside the third (transformers runs on)
    out = tmp_path / "out"
    config = _train_config(tiny_model_dir("qwen2_vl"), data, out, max_steps=8, save_steps=4,
                           per_device_train_batch_size=1)  # fmt: skip
    assert train(config)["global_step"] == 8
    adapter = out / "adapter_model.safetensors"
    final, record = _tensors(adapter), (out / "spr_train.json").read_bytes()

    # the same command again: nothing trains, nothing changes
    assert train(config)["global_step"] == 8
    assert _logged_steps(out) == list(range(1, 9))
    assert _same(_tensors(adapter), final) and (out / "spr_train.json").read_bytes() == record

    # killed after checkpoint-8 was saved, before the final weights and the record: the resume adds no step
    adapter.unlink()
    (out / "spr_train.json").unlink()
    summary = train(config)
    assert summary["global_step"] == 8 and _logged_steps(out) == list(range(1, 9))
    assert _same(_tensors(adapter), final)
    assert json.loads((out / "spr_train.json").read_text())["global_step"] == 8


# inf is refused before training as every non-finite number is (config.check_numbers); 1e30 trains and diverges
@pytest.mark.parametrize(
    "rate, message",
    [("inf", "learning_rate: must be a finite number"), ("1e30", "training diverged at step")],
)
def test_a_diverged_training_run_stops_with_one_line_and_saves_nothing(
    tiny_model_dir, tmp_path, capsys, rate, message
):
    data = make_dpo_jsonl(tmp_path, n=4)
    out = tmp_path / "out"
    rc = main(["train", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(data), "--out", str(out),
               "--max-steps", "3", "--per-device-train-batch-size", "2", "--learning-rate", rate, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (out / "adapter_model.safetensors").exists() and not (out / "spr_train.json").exists()


def test_a_non_finite_loss_is_named(tiny_model_dir, tmp_path):
    import torch

    from spr.training.finite import TrainingDiverged, check_loss

    class Args:
        learning_rate = 1e-5

    check_loss(torch.tensor(0.5), 1, Args())
    with pytest.raises(TrainingDiverged, match="step 3: the loss is nan"):
        check_loss(torch.tensor(float("nan")), 3, Args())
    with pytest.raises(UserError):
        check_loss(torch.tensor(float("inf")), 3, Args())


# ------------------------------------------------------------------------------ resume over changed inputs


@pytest.fixture
def regions(coco, tmp_path) -> Path:
    annotations, images = coco
    out = tmp_path / "regions.jsonl"
    assert main(["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(out),
                 "--per-image", "2"]) == 0  # fmt: skip
    return out


def test_a_resume_over_a_regenerated_input_is_refused_with_the_file_named(
    tiny_model_dir, regions, tmp_path, capsys
):
    candidates, scores = tmp_path / "c.jsonl", tmp_path / "s.jsonl"
    generate = ["generate", "--model", str(tiny_model_dir("qwen2_vl")), "--regions", str(regions), "--out",
                str(candidates), "--samples", "2", "--max-new-tokens", "4", "--limit", "1"]  # fmt: skip
    score = ["score", "--regions", str(regions), "--candidates", str(candidates), "--out", str(scores),
             "--semantic", "none"]  # fmt: skip
    assert main(generate) == 0 and main(score) == 0
    before = scores.read_bytes()
    assert main(score) == 0 and scores.read_bytes() == before  # the same inputs: resumed (nothing to do)
    # the candidates regenerated at the same path, with the same ids and other texts
    assert main([*generate, "--seed", "1", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(score) == 2
    err = capsys.readouterr().err
    assert (
        "input candidates:" in err and "an input changed since (candidates)" in err and "Traceback" not in err
    )
    assert scores.read_bytes() == before
    assert main([*score, "--overwrite"]) == 0


def test_regions_regenerated_under_a_generate_run_are_refused(
    tiny_model_dir, coco, regions, tmp_path, capsys
):
    annotations, images = coco
    candidates = tmp_path / "c.jsonl"
    generate = ["generate", "--model", str(tiny_model_dir("qwen2_vl")), "--regions", str(regions), "--out",
                str(candidates), "--samples", "1", "--max-new-tokens", "4", "--limit", "1"]  # fmt: skip
    assert main(generate) == 0
    assert main(["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(regions),
                 "--per-image", "2", "--objects-per-region", "3", "--overwrite"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(generate) == 2
    assert "input regions:" in capsys.readouterr().err


# ------------------------------------------------------------------------------ spr merge is a guarded output


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from spr import models
    from spr.training.parts import lora_target_regex

    loaded = models.load(str(tiny_model_dir("qwen2_vl")))
    targets = lora_target_regex(loaded.model, loaded.spec, ["q_proj"], False)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(out))
    loaded.processor.save_pretrained(str(out))
    (out / "spr_train.json").write_text(json.dumps({"base_model": str(tiny_model_dir("qwen2_vl"))}))
    return out


def test_merge_takes_the_lock_and_keeps_another_model(adapter_dir, tiny_model_dir, tmp_path, capsys):
    import shutil

    from spr.data.guard import OutputLock, lock_path

    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llava"), out)  # a directory that holds another model
    before = (out / "config.json").read_bytes()
    merge = ["merge", "--adapter", str(adapter_dir), "--out", str(out)]
    assert main(merge) == 2
    assert "no settings header" in capsys.readouterr().err and (out / "config.json").read_bytes() == before
    assert main([*merge, "--overwrite"]) == 0 and (out / "config.json").read_bytes() != before
    assert main(merge) == 0  # the same merge again: allowed
    with OutputLock(lock_path(out), str(out)):  # another merge is writing there
        assert main(merge) == 2
    assert "being written by another process" in capsys.readouterr().err


# ------------------------------------------------------------------------------ spr report


@pytest.fixture
def scored_run(tmp_path) -> Path:
    from scoring_fixtures import candidate, draw_image, fixture_region, hand_made_texts

    from spr.data.jsonl import write_jsonl

    region = fixture_region(draw_image(tmp_path / "images" / "scene.png"))
    texts = hand_made_texts()
    write_jsonl(tmp_path / "regions.jsonl", [region])
    write_jsonl(
        tmp_path / "candidates.jsonl",
        [candidate(region, n, texts[n], i) for i, n in enumerate(["precise", "vague"])],
    )
    files = ["--regions", str(tmp_path / "regions.jsonl"), "--candidates", str(tmp_path / "candidates.jsonl")]
    assert main(["score", *files, "--out", str(tmp_path / "scores.jsonl"), "--semantic", "keywords"]) == 0
    return tmp_path


def test_a_second_report_in_the_run_keeps_the_first_reports_images(scored_run):
    assert main(["report", "--run", str(scored_run)]) == 0
    first = sorted(p.name for p in (scored_run / "report_files").iterdir())
    assert first and main(["report", "--run", str(scored_run), "--out", str(scored_run / "other.html"),
                           "--max-regions", "0"]) == 0  # fmt: skip
    assert sorted(p.name for p in (scored_run / "report_files").iterdir()) == first
    assert 'src="report_files/' in (scored_run / "report.html").read_text()


def test_a_decompression_bomb_in_a_report_is_one_line_and_the_report_is_written(scored_run, capsys, caplog):
    from PIL import Image

    Image.new("1", (10_000, 9_000)).save(scored_run / "images" / "scene.png")  # 90 M pixels, a few KB
    assert main(["report", "--run", str(scored_run)]) == 0
    html = (scored_run / "report.html").read_text()
    assert "image too large" in html and "Traceback" not in capsys.readouterr().err
    assert any("image too large" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ disk full


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_header_the_full_disk_cut_short_blocks_no_later_run(tmp_path, monkeypatch):
    from spr.data.guard import StageOutput

    out = tmp_path / "eval"
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):  # a full disk: some bytes land, then the write fails
        real(self, text[:10], *args, **kwargs)
        _disk_full()

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError), StageOutput(out, "eval rec", {"a": 1}, directory=True):
        pass
    monkeypatch.undo()
    assert not (out / "spr_settings.json.tmp").exists()
    (out / "spr_settings.json.tmp").write_text("{")  # as a SIGKILL between write and rename leaves it
    with StageOutput(out, "eval rec", {"a": 2}, directory=True):  # no record there: not held to anything
        pass


def test_a_full_disk_is_one_line_and_the_records_written_stay(coco, tmp_path, monkeypatch, capsys):
    from spr.data.jsonl import JsonlWriter

    annotations, images = coco
    out = tmp_path / "regions.jsonl"
    args = ["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(out)]
    real, calls = JsonlWriter.write, []

    def full_after_one(self, record):
        calls.append(record)
        return real(self, record) if len(calls) == 1 else _disk_full()

    monkeypatch.setattr(JsonlWriter, "write", full_after_one)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "No space left on device" in err
        and "re-run the same command to resume" in err
        and "Traceback" not in err
    )
    assert len(out.read_text().splitlines()) == 1
    monkeypatch.undo()
    assert main(args) == 0 and len(out.read_text().splitlines()) > 1  # space again: resumed


def test_a_full_disk_while_appending_names_the_file(tmp_path, capsys, monkeypatch):
    import spr.regions
    from spr.data.jsonl import JsonlWriter

    out = tmp_path / "records.jsonl"

    class FullDisk:  # the writer's file object on a full disk: the error names no file
        def write(self, text):
            _disk_full()

        flush = close = write

    writer = JsonlWriter(out)
    writer._f = FullDisk()
    with pytest.raises(OSError) as caught:
        writer.write({"id": "a"})
    assert caught.value.filename == str(out)

    monkeypatch.setattr(spr.regions, "run", lambda config: writer.write({"id": "c"}))  # a stage, mid-write
    assert main(["regions", "--annotations", "a.json", "--images", ".", "--out", str(out)]) == 2
    assert f"No space left on device ({out})" in capsys.readouterr().err


# ------------------------------------------------------------------------------ model directories


def _corrupt(name: str):
    import struct

    weights = "model.safetensors"

    def rewrite(d: Path):
        config = json.loads((d / "config.json").read_text())
        if name == "truncated":
            (d / weights).write_bytes((d / weights).read_bytes()[:1000])
        elif name == "zeros":
            (d / weights).write_bytes(b"\0" * 5000)
        elif name == "header too large":
            (d / weights).write_bytes(struct.pack("<Q", 2**60) + b"{}")
        elif name == "header not json":
            (d / weights).write_bytes(struct.pack("<Q", 5) + b"{abc}")
        elif name == "another architecture":
            config.update(model_type="llava", architectures=["LlavaForConditionalGeneration"])
            (d / "config.json").write_text(json.dumps(config))
        elif name in ("index naming a .bin", "index naming a file outside"):
            shard = "pytorch_model.bin" if "bin" in name else "../outside.safetensors"
            (d / weights).rename(d / shard)
            (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
        elif name == "template tripping the sandbox":
            (d / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
        elif name == "template looping":
            (d / "chat_template.jinja").write_text("{% for i in range(10**12) %}x{% endfor %}")
        elif name == "template slow":  # within jinja's range limit, but 10^10 steps
            (d / "chat_template.jinja").write_text(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            )
        elif name == "patch size 0":
            processor = json.loads((d / "processor_config.json").read_text())
            processor["image_processor"]["patch_size"] = 0
            (d / "processor_config.json").write_text(json.dumps(processor))

    return rewrite


BAD_MODELS = {
    "truncated": "model.safetensors: not a readable safetensors file",
    "zeros": "model.safetensors: not a readable safetensors file",
    "header too large": "model.safetensors: not a readable safetensors file",
    "header not json": "model.safetensors: not a readable safetensors file",
    "another architecture": "cannot load the LlavaProcessor",
    "index naming a .bin": "names the shard 'pytorch_model.bin'",
    "index naming a file outside": "names the shard '../outside.safetensors'",
    "template tripping the sandbox": "the chat template does not render (SecurityError",
    "template looping": "the chat template does not render",
    "template slow": "the chat template does not render (TimeoutError: took more than 0.5 s",
    "patch size 0": "the image processor's patch_size is 0",
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_bad_model_directory_is_one_line_naming_the_file(tiny_model_dir, tmp_path, case, monkeypatch):
    import shutil

    from spr import models

    monkeypatch.setattr("spr.models.loading.TEMPLATE_SECONDS", 0.5)  # the slow template fails fast here

    d = tmp_path / "sub" / "model"
    shutil.copytree(tiny_model_dir("qwen2_vl"), d)
    _corrupt(case)(d)
    with pytest.raises(UserError, match=re.escape(BAD_MODELS[case])) as e:
        models.load(d)
    assert str(d) in str(e.value) and "\n" not in str(e.value)


def test_the_label_model_is_safetensors_only(tmp_path):
    from spr.scoring.semantic import SentenceEmbedder, sentence_embedder_path

    d = tmp_path / "label"
    (d).mkdir()
    for f in Path(sentence_embedder_path()).glob("*.json"):
        (d / f.name).write_bytes(f.read_bytes())
    (d / "vocab.txt").write_bytes((Path(sentence_embedder_path()) / "vocab.txt").read_bytes())
    (d / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        SentenceEmbedder(str(d))


def test_weights_that_leave_tensors_of_the_model_unset_are_refused(tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from spr import models

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir("qwen2_vl"), d)
    tensors = load_file(str(d / "model.safetensors"))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=f"1 tensors missing \\({re.escape(dropped)}\\)"):
        models.load(d)


# ------------------------------------------------------------------------------ data files


COCO_SPOILS = {
    "image id a list": (lambda c: c["images"][0].__setitem__("id", [1]), "id must be a number or a string"),
    "category id an object": (lambda c: c["categories"][0].__setitem__("id", {"a": 1}), "id must be a number or a string"),
    "annotation image_id a list": (lambda c: c["annotations"][0].__setitem__("image_id", [1]), "must be numbers or strings"),
    "file_name out of --images": (lambda c: c["images"][0].__setitem__("file_name", "../outside/x.png"), "not a relative path inside"),
    "file_name absolute": (lambda c: c["images"][0].__setitem__("file_name", "/etc/passwd"), "not a relative path inside"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(COCO_SPOILS))
def test_a_bad_coco_record_is_skipped_and_named_or_stops_the_stage(coco, tmp_path, capsys, case):
    annotations, images = coco
    data = json.loads(annotations.read_text())
    spoil, message = COCO_SPOILS[case]
    spoil(data)
    annotations.write_text(json.dumps(data))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(
        (images / "img001.png").read_bytes()
    )  # what "../" would reach
    args = ["regions", "--annotations", str(annotations), "--images", str(images)]
    assert main([*args, "--out", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr()
    assert message in out.out and "Traceback" not in out.err
    assert "outside" not in (tmp_path / "r.jsonl").read_text()
    assert main([*args, "--out", str(tmp_path / "s.jsonl"), "--on-error", "stop"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(annotations) in err and len(err.strip().splitlines()) == 1


def test_images_outside_images_are_read_only_when_asked(coco, tmp_path, capsys):
    annotations, images = coco
    data = json.loads(annotations.read_text())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes((images / "img001.png").read_bytes())
    data["images"][0]["file_name"] = "../outside/x.png"
    annotations.write_text(json.dumps(data))
    args = ["regions", "--annotations", str(annotations), "--images", str(images)]
    assert main([*args, "--out", str(tmp_path / "r.jsonl")]) == 0
    assert str(tmp_path / "outside" / "x.png") not in (tmp_path / "r.jsonl").read_text()
    assert main([*args, "--out", str(tmp_path / "s.jsonl"), "--images-anywhere"]) == 0
    assert str(tmp_path / "outside" / "x.png") in (tmp_path / "s.jsonl").read_text()


@pytest.mark.parametrize("reader", ["coco", "jsonl", "metrics"])
def test_deeply_nested_json_is_one_line_naming_the_file(tmp_path, capsys, reader):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / ("deep.jsonl" if reader == "jsonl" else "deep.json")
    path.write_text('{"id": "a", "x": ' + deep + "}\n" if reader == "jsonl" else deep)
    args = {
        "coco": ["regions", "--annotations", str(path), "--images", str(tmp_path), "--out", str(tmp_path / "r.jsonl")],
        "jsonl": ["generate", "--model", str(tmp_path), "--regions", str(path), "--out", str(tmp_path / "c.jsonl")],
        "metrics": ["eval", "compare", str(path), str(path)],
    }[reader]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_ref_l4_extraction_never_writes_through_a_symlink_in_the_cache(tmp_path):
    import io
    import tarfile

    from spr.evaluate.refl4 import _extract

    tar_path, cache, victim = tmp_path / "images.tar.gz", tmp_path / "cache", tmp_path / "victim.txt"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name in ("a.png", "sub/b.png"):
            info = tarfile.TarInfo(name)
            info.size = 5
            tar.addfile(info, io.BytesIO(b"image"))
    victim.write_text("keep me")
    cache.mkdir()
    (cache / ".a.png.tmp").symlink_to(victim)  # planted where the extraction writes before its rename
    (cache / "sub").symlink_to(tmp_path)  # a folder of the cache that leads out of it
    problems: list[str] = []
    done = _extract(tar_path, {"a.png", "sub/b.png"}, cache, problems)
    assert victim.read_text() == "keep me" and not (tmp_path / "b.png").exists()
    assert (cache / "a.png").read_bytes() == b"image" and list(done) == ["a.png"]
    assert any("leads out" in p for p in problems)


def test_a_checkpoint_holding_a_pickle_torch_refuses_is_one_line(tiny_model_dir, tmp_path, capsys):
    import pickle
    import shutil

    data = make_dpo_jsonl(tmp_path, n=2)
    out = tmp_path / "out"
    args = ["train", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(data), "--out", str(out),
            "--max-steps", "2", "--save-steps", "1", "--per-device-train-batch-size", "2", "--quiet"]  # fmt: skip
    assert main(args) == 0
    shutil.rmtree(out / "checkpoint-2")
    (out / "spr_train.json").unlink()
    (out / "checkpoint-1" / "rng_state.pth").write_bytes(pickle.dumps(Path("not/a/tensor")))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "checkpoint-1: a file holds a pickle" in err and "Traceback" not in err


def test_an_adapter_to_continue_must_be_safetensors(tiny_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"a pickle")
    data = make_dpo_jsonl(tmp_path, n=2)
    assert main(["train", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(data), "--out",
                 str(tmp_path / "out"), "--adapter", str(adapter)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "adapter_model.bin (pickle)" in err and "Traceback" not in err


def test_a_report_on_swapped_input_files_is_refused(scored_run, capsys):
    run = scored_run
    assert main(["report", "--regions", str(run / "scores.jsonl"), "--scores", str(run / "regions.jsonl"),
                 "--out", str(run / "swapped.html")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "not one region record in it" in err and "Traceback" not in err
    assert not (run / "swapped.html").exists()


def test_pairs_from_scores_that_are_all_equal_says_why_there_are_none(scored_run, capsys):
    run = scored_run
    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    for r in rows:
        r.update(total=0.5, semantic=0.5, localization=0.5)
    (run / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = ["--regions", str(run / "regions.jsonl"), "--candidates", str(run / "candidates.jsonl")]
    assert (
        main(["pairs", *files, "--scores", str(run / "scores.jsonl"), "--out", str(run / "pairs.jsonl")]) == 0
    )
    err = capsys.readouterr().err
    assert "warning: no pair from 1 prompt(s)" in err and "--min-margin" in err
    assert (run / "pairs.jsonl").read_text() == ""  # a valid, empty result


def test_a_checkpoint_save_on_a_full_disk_is_taken_for_one(tmp_path, monkeypatch):
    import errno
    import shutil
    from types import SimpleNamespace

    from spr.training import lifecycle

    class Trainer:  # torch.save's zip writer on a full disk: a RuntimeError, not ENOSPC
        args = SimpleNamespace(output_dir=str(tmp_path))

        def train(self, resume_from_checkpoint=None):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 195264 vs 195156")

    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=1, used=1, free=0))
    with pytest.raises(OSError) as e:
        lifecycle.resumed(Trainer(), None)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=1 << 40, used=0, free=1 << 40))
    with pytest.raises(RuntimeError):  # space left: the error is what it says
        lifecycle.resumed(Trainer(), None)


@pytest.mark.parametrize("field,value", [("id", [1]), ("id", {"a": 1}), ("image_id", [1])])
def test_a_record_whose_id_is_a_list_or_an_object_is_one_line(regions, tmp_path, capsys, field, value):
    lines = regions.read_text().splitlines()
    first = json.loads(lines[0])
    first[field] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert (
        main(
            ["generate", "--model", str(tmp_path), "--regions", str(bad), "--out", str(tmp_path / "c.jsonl")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        f"{bad}: record 1: region record: {field} must be a string or a number" in err
        and "Traceback" not in err
    )


def test_a_dry_run_is_held_to_the_runs_lock_and_settings(tmp_path, capsys):
    import yaml

    from spr.data.guard import OutputLock, lock_path

    config, run = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump({"model": "m", "regions": {"annotations": "a.json", "images": "img"}}))
    dry = ["run", "--config", str(config), "--out", str(run), "--dry-run"]
    assert main([*dry, "--set", "max_pixels=5000"]) == 0
    step = run / "round-1" / "generate.yaml"
    before = step.read_bytes()
    assert main([*dry, "--set", "max_pixels=6000"]) == 2  # a finished run's step files are not rewritten
    assert "max_pixels: 5000 -> 6000" in capsys.readouterr().err and step.read_bytes() == before
    with OutputLock(lock_path(run), str(run)):  # the run is running
        assert main([*dry, "--set", "max_pixels=5000"]) == 2
    assert "being written by another process" in capsys.readouterr().err


def test_a_torn_line_in_the_middle_is_written_again_in_its_place(tiny_model_dir, regions, tmp_path):
    out = tmp_path / "c.jsonl"
    args = ["generate", "--model", str(tiny_model_dir("qwen2_vl")), "--regions", str(regions), "--out", str(out),
            "--samples", "2", "--max-new-tokens", "4", "--limit", "1"]  # fmt: skip
    assert main(args) == 0
    whole = out.read_bytes()
    lines = whole.splitlines()
    assert len(lines) >= 3
    out.write_bytes(b"\n".join([lines[0], lines[1][: len(lines[1]) // 2], *lines[2:]]) + b"\n")
    assert main(args) == 0
    assert out.read_bytes() == whole  # the file of an uninterrupted run, byte for byte


def _tear_the_second_line(path: Path) -> bytes:
    whole = path.read_bytes()
    lines = whole.splitlines()
    assert len(lines) >= 3
    path.write_bytes(b"\n".join([lines[0], lines[1][: len(lines[1]) // 2], *lines[2:]]) + b"\n")
    return whole


def test_score_and_regions_write_a_torn_line_again_in_its_place(scored_run, coco, tmp_path):
    scores = scored_run / "scores.jsonl"
    files = [
        "--regions",
        str(scored_run / "regions.jsonl"),
        "--candidates",
        str(scored_run / "candidates.jsonl"),
    ]
    whole = _tear_the_second_line(scores)
    assert main(["score", *files, "--out", str(scores), "--semantic", "keywords"]) == 0
    assert scores.read_bytes() == whole  # the file of an uninterrupted run, byte for byte

    annotations, images = coco
    regions = tmp_path / "r.jsonl"
    args = ["regions", "--annotations", str(annotations), "--images", str(images), "--out", str(regions),
            "--per-image", "3"]  # fmt: skip
    assert main(args) == 0
    whole = _tear_the_second_line(regions)
    assert main(args) == 0
    assert regions.read_bytes() == whole
