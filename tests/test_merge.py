"""`spr merge`: LoRA folded into the base; the result is a complete model directory (weights + processor) whose
logits equal the PEFT model's."""

from __future__ import annotations

import json

import pytest
import torch
from evaluate_fixtures import write_images

from spr import models
from spr.cli import main
from spr.errors import UserError
from spr.merge import merge
from spr.training.parts import lora_target_regex


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter as `spr train` leaves it (adapter + processor files), with non-zero weights."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model_dir("qwen2_vl")
    loaded = models.load(str(base))
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=lora_target_regex(loaded.model, loaded.spec, ["q_proj", "v_proj"], False),
    )
    peft_model = get_peft_model(loaded.model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(out))
    loaded.processor.save_pretrained(str(out))
    return out, peft_model.eval(), loaded


def _logits(model, adapter, image):
    inputs = adapter.build_inputs([image], [adapter.rec_prompt("the red box")])
    with torch.no_grad():
        return model(**inputs).logits


def test_merged_model_loads_with_its_processor_and_matches_the_peft_model(lora_dir, tmp_path):
    adapter_dir, peft_model, loaded = lora_dir
    out = merge(adapter_dir, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "chat_template.jinja"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only

    merged = models.load(str(out))
    assert merged.family == "qwen2_vl" and merged.processor.chat_template == loaded.processor.chat_template
    image = write_images(tmp_path / "images")["img1"]
    from PIL import Image

    image = Image.open(image).convert("RGB")
    expected = _logits(peft_model, loaded, image)
    got = _logits(merged.model, merged, image)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with peft_model.disable_adapter():
        base = _logits(peft_model, loaded, image)
    assert (got - base).abs().max() > 1e-2  # the adapter changed the model, and the merge kept the change


def test_merge_cli_and_bad_inputs(lora_dir, tiny_model_dir, tmp_path, capsys):
    adapter_dir, _, _ = lora_dir
    assert (
        main(["merge", "--adapter", str(adapter_dir), "--out", str(tmp_path / "m"), "--dtype", "bfloat16"])
        == 0
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"

    with pytest.raises(UserError, match="nothing to merge"):
        merge(tiny_model_dir("qwen2_vl"), tmp_path / "x")
    with pytest.raises(UserError, match="no adapter_config.json"):
        merge(tmp_path, tmp_path / "x")

    orphan = tmp_path / "orphan"
    orphan.mkdir()
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (orphan / "adapter_config.json").write_text(json.dumps(cfg))
    assert main(["merge", "--adapter", str(orphan), "--out", str(tmp_path / "y")]) == 2
    assert "give it with --base DIR" in capsys.readouterr().err


@pytest.mark.parametrize("family", models.available_families())
def test_merged_directory_loads_with_plain_transformers_and_keeps_every_file(
    family, tiny_model_dir, tmp_path
):
    """Merged checkpoints that lose generation_config.json, the chat template or preprocessor settings are a
    common complaint (LLaMA-Factory #5749, #10169): the merged directory is a complete model directory."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from spr.models.processors import torchvision_available

    base = tiny_model_dir(family)
    loaded = models.load(str(base))
    targets = lora_target_regex(loaded.model, loaded.spec, ["q_proj", "v_proj"], False)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    loaded.processor.save_pretrained(str(adapter))
    out = merge(adapter, tmp_path / "merged", base=base)

    assert {"generation_config.json", "chat_template.jinja", "tokenizer_config.json"} <= {
        p.name for p in base.iterdir()
    }

    def content(path):  # a processor saved after a local load also records how it was loaded: not a change
        if path.suffix != ".json":
            return path.read_bytes()
        return {
            k: v for k, v in json.loads(path.read_text()).items() if k not in ("is_local", "local_files_only")
        }

    for f in base.iterdir():  # every file of the base but its weights, unchanged
        if f.name not in ("model.safetensors", "config.json"):
            assert content(out / f.name) == content(f), f.name
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(out), local_files_only=True)
    assert type(model).__name__ == loaded.spec.model_class
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tokenizer.eos_token == loaded.spec.eos_token
    if not loaded.spec.has_video_processor or torchvision_available():
        processor = transformers.AutoProcessor.from_pretrained(str(out), local_files_only=True)
        assert processor.chat_template == loaded.processor.chat_template
    else:  # transformers builds these families' video processors on torchvision, absent here
        image_processor = transformers.AutoImageProcessor.from_pretrained(str(out), local_files_only=True)
        assert type(image_processor).__name__.startswith(
            type(loaded.processor.image_processor).__name__.removesuffix("Pil")
        )
