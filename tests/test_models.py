import json
import shutil

import pytest
import torch
from PIL import Image

from spr.errors import UserError
from spr.models import available_families, get_family, load, load_processor
from spr.models.processors import is_full_processor

FAMILIES = available_families()


def images():
    return [Image.new("RGB", (200, 150), (200, 30, 30)), Image.new("RGB", (90, 160), (30, 200, 30))]


def test_the_supported_families():
    assert {"qwen2_vl", "qwen2_5_vl", "llava", "llava_onevision", "idefics3", "internvl"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_forward_generate_and_round_trip(family, tiny_model_dir, tmp_path):
    adapter = load(tiny_model_dir(family))
    assert adapter.family == family
    assert is_full_processor(adapter.processor)
    inputs = adapter.build_inputs(images(), ["Describe this image in detail.", "Where is the red box?"])
    # Left padding: the shorter prompt is padded at the start, both end with the generation prompt.
    assert (inputs["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        logits = adapter.model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()

    torch.manual_seed(0)
    new = adapter.generate(inputs, do_sample=True, max_new_tokens=6, num_return_sequences=2, top_p=0.9)
    assert new.shape[0] == 4 and 1 <= new.shape[1] <= 6
    assert all(isinstance(adapter.decode(row), str) for row in new)

    # Save and reload: the same processor output and identical logits.
    adapter.model.save_pretrained(tmp_path / "copy")
    adapter.processor.save_pretrained(tmp_path / "copy")
    again = load(tmp_path / "copy")
    inputs2 = again.build_inputs(images(), ["Describe this image in detail.", "Where is the red box?"])
    assert all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(again.model(**inputs2).logits, logits)


@pytest.mark.parametrize("family", [f for f in FAMILIES if get_family(f).has_video_processor])
def test_saved_processor_names_the_standard_class(family, tiny_model_dir):
    """These families' processors take a video processor (torchvision); the image-only stand-in saves under
    the family's own class name, so the directory stays a normal one."""
    config = json.loads((tiny_model_dir(family) / "processor_config.json").read_text())
    assert config["processor_class"] == get_family(family).processor_class
    assert "video_processor" not in config


def test_tokenizer_keeps_special_tokens_whole_and_digits_apart(tiny_model_dir):
    tok = load(tiny_model_dir("qwen2_vl")).tokenizer
    ids = tok.encode("<|box_start|>(123,45)<|box_end|>", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|box_start|>" and pieces[-1] == "<|box_end|>"
    assert [p for p in pieces if p.isdigit()] == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_ends_assistant_turns_with_eos(family, tiny_model_dir):
    adapter = load(tiny_model_dir(family))
    text = adapter.processor.apply_chat_template(
        adapter.messages("hello", with_image=False, answer="a red box"), tokenize=False
    )
    eos = adapter.tokenizer.convert_ids_to_tokens(adapter.eos_token_id)
    assert text.rstrip("\n").endswith("a red box" + eos) or text.rstrip("\n").endswith("a red box " + eos)
    prompt = adapter.chat_text("hello", with_image=False)
    assert text.startswith(prompt.rstrip())


def test_decode_keeps_box_markup_and_stops_at_eos(tiny_model_dir):
    adapter = load(tiny_model_dir("qwen2_vl"))
    answer = "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|>"
    ids = adapter.tokenizer.encode(answer, add_special_tokens=False)
    ids += [adapter.eos_token_id, 5, 6, adapter.pad_token_id]
    assert adapter.decode(ids) == answer
    assert adapter.count_new_tokens(ids) == len(ids) - 3


def test_qwen2_5_vl_geometry_is_the_processors_resize(tiny_model_dir):
    adapter = load(tiny_model_dir("qwen2_5_vl"))
    assert adapter.fmt == "qwen2_5_vl"
    image = Image.new("RGB", (640, 480))
    thw = adapter.build_inputs([image], ["hi"])["image_grid_thw"][0].tolist()
    assert adapter.geometry((640, 480)) == {"input_size": [thw[2] * 14, thw[1] * 14]}
    assert load(tiny_model_dir("qwen2_vl")).geometry((640, 480)) == {}


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unsupported_family_names_what_was_found_and_what_is_supported(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir("qwen2_vl"), tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "blip_2"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"model_type 'blip_2' is not a supported family.*qwen2_vl.*internvl"):
        load(d)
    # The family can be given explicitly.
    assert load(d, family="qwen2_vl").family == "qwen2_vl"
    with pytest.raises(UserError, match="unknown model family 'gpt'"):
        load(d, family="gpt")


@pytest.mark.parametrize(
    "remove, message",
    [
        ("model.safetensors", r"no weights \(expected model.safetensors"),
        ("processor_config.json", r"no image processor configuration \(expected processor_config.json"),
        ("tokenizer.json", "no tokenizer files"),
        ("config.json", "no config.json"),
    ],
)
def test_missing_files_are_named(remove, message, tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir("qwen2_vl"), tmp_path / "m")
    (d / remove).unlink()
    if remove == "tokenizer.json":
        (d / "tokenizer_config.json").unlink()
    with pytest.raises(UserError, match=message):
        load(d)


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir("qwen2_vl"), tmp_path / "m")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin.*safetensors only"):
        load(d)


def test_tiny_model_cli(tmp_path):
    from spr.cli import main

    assert main(["tiny-model", "--family", "llava", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert load(tmp_path / "m").family == "llava"


@pytest.mark.parametrize("family", FAMILIES)
def test_load_processor_gives_the_full_processor_and_it_pickles(family, tiny_model_dir):
    import pickle

    processor = load_processor(tiny_model_dir(family))
    assert is_full_processor(processor) and processor.chat_template
    again = pickle.loads(pickle.dumps(processor))
    assert type(again) is type(processor) and is_full_processor(again)


def test_legacy_processor_layout_loads(tiny_model_dir, tmp_path):
    """Released Qwen2-VL directories keep the image processor in preprocessor_config.json and the chat template
    in chat_template.json, with no processor_config.json."""
    d = copy_model(tiny_model_dir("qwen2_vl"), tmp_path / "m")
    image_processor = json.loads((d / "processor_config.json").read_text())["image_processor"]
    (d / "preprocessor_config.json").write_text(
        json.dumps({**image_processor, "processor_class": "Qwen2VLProcessor"})
    )
    (d / "processor_config.json").unlink()
    (d / "chat_template.json").write_text(
        json.dumps({"chat_template": (d / "chat_template.jinja").read_text()})
    )
    (d / "chat_template.jinja").unlink()
    adapter = load(d)
    assert is_full_processor(adapter.processor)
    assert adapter.build_inputs(images()[:1], ["hi"])["image_grid_thw"].shape == (1, 3)


def test_decode_drops_image_and_video_placeholders_a_sampled_answer_may_contain(tiny_model_dir):
    from spr.models import load

    adapter = load(tiny_model_dir("qwen2_vl"))
    tok = adapter.tokenizer
    ids = tok.convert_tokens_to_ids(["<|box_start|>", "<|video_pad|>", "<|image_pad|>", "<|box_end|>"])
    text = adapter.decode(ids)
    assert text == "<|box_start|><|box_end|>"
