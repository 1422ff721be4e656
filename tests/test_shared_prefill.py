"""Shared prefill in generation: each prompt (with its image) is prefilled once and its KV cache repeated to the N
sampled rows. For every family the rows decode token for token as when each is prefilled on its own, and a
sampled candidates file is the same byte for byte."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from PIL import Image, ImageDraw

from spr.data.jsonl import JsonlWriter
from spr.data.records import Region
from spr.generate import GenerateConfig
from spr.models import ModelAdapter, available_families, load
from spr.prompts import select_templates
from spr.sampling import RowSampler, generate_into

# as generate_into sets it for RowSampler
SAMPLING = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)


def prompts_of_different_lengths(adapter):
    """Three prompts of different lengths (so the batch is left-padded) with images of different sizes."""
    images = [Image.new("RGB", (64 + 24 * i, 48 + 8 * i), (60 * i, 120, 200)) for i in range(3)]
    texts = ["Describe the region.", "Where is the red box in this picture, and what is next to it?", "hi"]
    return adapter.build_inputs(images, texts)


def prefill_rows(adapter) -> list[int]:
    """Rows of every language-model forward that takes more than one token (a prefill), recorded while held."""
    rows: list[int] = []

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            rows.append(embeds.shape[0])

    language = adapter.model.get_submodule(adapter.spec.language_module)
    return rows, language.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("family", available_families())
def test_shared_prefill_decodes_as_separate_prefills(tiny_model_dir, family):
    adapter = load(str(tiny_model_dir(family)))
    inputs = prompts_of_different_lengths(adapter)
    n, batch = 3, inputs["input_ids"].shape[0]

    def run(shared: bool, seeds):
        adapter.shared_prefill = shared
        rows, hook = prefill_rows(adapter)
        try:
            sampler = RowSampler(seeds, temperature=1.0, top_p=0.9)
            out = adapter.generate(
                inputs, max_new_tokens=16, num_return_sequences=n, logits_processor=[sampler], **SAMPLING
            )
        finally:
            hook.remove()
        return out, rows

    greedy_rows = [None] * (batch * n)  # RowSampler decodes rows without a seed greedily: n greedy copies
    shared, shared_prefill = run(True, greedy_rows)
    today, today_prefill = run(False, greedy_rows)
    assert torch.equal(shared, today)
    assert shared_prefill == [batch] and today_prefill == [
        batch * n
    ]  # one prefill row per prompt, not per answer
    for k in range(n):
        assert torch.equal(shared[k::n], shared[::n])
    assert torch.equal(shared[::n], adapter.generate(inputs, max_new_tokens=16, do_sample=False))

    seeded = list(range(batch * n))  # every row its own random stream
    sampled_shared, _ = run(True, seeded)
    sampled_today, _ = run(False, seeded)
    assert torch.equal(sampled_shared, sampled_today)
    assert not torch.equal(sampled_shared[0], sampled_shared[1])  # the streams differ


def make_regions(tmp_path, n: int = 2) -> list[Region]:
    rng = random.Random(0)
    regions = []
    for i in range(n):
        size = (rng.choice([160, 200]), rng.choice([120, 150]))
        im = Image.new("RGB", size, (230, 230, 230))
        draw = ImageDraw.Draw(im)
        objects = []
        for label in ("cup", "dog"):
            x, y = rng.randint(0, size[0] - 50), rng.randint(0, size[1] - 50)
            box = [float(x), float(y), float(x + 40), float(y + 40)]
            draw.rectangle(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
            objects.append({"label": label, "box": box})
        path = tmp_path / f"r{i}.png"
        im.save(path)
        union = [min(o["box"][0] for o in objects), min(o["box"][1] for o in objects),
                 max(o["box"][2] for o in objects), max(o["box"][3] for o in objects)]  # fmt: skip
        regions.append(
            Region(id=f"r{i}", image=str(path), image_size=list(size), region_box=union, objects=objects)
        )
    return regions


@pytest.mark.parametrize("family", available_families())
def test_sampled_candidates_are_the_same_with_either_path(tiny_model_dir, family, tmp_path):
    adapter = load(str(tiny_model_dir(family)))
    regions, templates = make_regions(tmp_path), select_templates(None)
    config = GenerateConfig(model="m", regions="r", out="o", samples=3, max_new_tokens=12, batch_size=2,
                            include_greedy=True, seed=7)  # fmt: skip
    files = {}
    for shared in (True, False):
        adapter.shared_prefill = shared
        files[shared] = tmp_path / f"shared-{shared}.jsonl"
        with JsonlWriter(files[shared]) as writer:
            stats = generate_into(adapter, regions, templates, writer, config, progress=False)
        assert stats.written == len(regions) * len(templates) * 4
    assert files[True].read_bytes() == files[False].read_bytes()


def test_a_family_can_keep_separate_prefills(tiny_model_dir):
    adapter = load(str(tiny_model_dir("llava")))
    assert adapter.shared_prefill  # the default of every built-in family
    spec = dataclasses.replace(adapter.spec, shared_prefill=False)
    separate = ModelAdapter(adapter.model, adapter.processor, spec)
    inputs = prompts_of_different_lengths(separate)
    rows, hook = prefill_rows(separate)
    try:
        separate.generate(inputs, max_new_tokens=2, num_return_sequences=2, **SAMPLING)
    finally:
        hook.remove()
    assert rows == [2 * inputs["input_ids"].shape[0]]


def test_shared_prefill_logits_are_separate_prefills_up_to_rounding(tiny_model_dir):
    """What the shared prefill guarantees at a real prompt length (256 image tokens per image): every row's
    next-token logits are those of a prefill of its own up to floating-point rounding (a batch of B prompts and
    one of B x N rows round differently), so each candidate is drawn from the same distribution, and its tokens
    are the same unless a draw lands within that rounding of a boundary between two tokens (benchmarks/generate.py
    counts how often). A cache repeated to the wrong rows, or positions off by one, moves logits by far more."""
    adapter = load(str(tiny_model_dir("qwen2_vl")))
    adapter.set_pixel_budget(min_pixels=256 * 28 * 28, max_pixels=256 * 28 * 28)
    inputs = prompts_of_different_lengths(adapter)
    assert inputs["input_ids"].shape[1] > 256
    n, rows = 4, inputs["input_ids"].shape[0] * 4
    kwargs = dict(pad_token_id=adapter.pad_token_id, eos_token_id=adapter.eos_token_ids, max_new_tokens=6,
                  num_return_sequences=n, output_logits=True, return_dict_in_generate=True, **SAMPLING)  # fmt: skip
    greedy = [None] * rows  # RowSampler with no seeds: greedy rows
    with torch.inference_mode():
        shared = adapter._generate_shared(
            inputs, n, dict(kwargs, logits_processor=[RowSampler(greedy, 1, 1)])
        )
        today = adapter.model.generate(**inputs, **kwargs, logits_processor=[RowSampler(greedy, 1, 1)])
    prompt = inputs["input_ids"].shape[1]
    same_so_far = torch.ones(rows, dtype=torch.bool)
    for step, (ours, theirs) in enumerate(zip(shared.logits, today.logits)):
        scale = theirs[same_so_far].abs().max()
        assert (ours[same_so_far] - theirs[same_so_far]).abs().max() <= 1e-4 * scale, f"step {step}"
        same_so_far &= shared.sequences[:, prompt + step] == today.sequences[:, prompt + step]
    assert same_so_far.any()
