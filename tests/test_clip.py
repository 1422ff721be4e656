"""The CLIP wrapper used by the semantic score, on tiny random CLIP and SigLIP models built from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scoring_fixtures import tiny_clip_dir

from spr.models.clip import load_clip


@pytest.fixture(scope="module", params=["clip", "siglip"])
def encoder(request, tmp_path_factory):
    return load_clip(tiny_clip_dir(tmp_path_factory, request.param))


def noise_image(w, h, seed=0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def test_tiny_clip_is_a_normal_model_directory(tmp_path_factory):
    from transformers import AutoModel, AutoProcessor

    path = tiny_clip_dir(tmp_path_factory, "clip")
    model = AutoModel.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    inputs = processor(
        text=["a red car", "two dogs on a sofa"],
        images=[noise_image(64, 64)],
        return_tensors="pt",
        padding=True,
    )
    with torch.inference_mode():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 2)
    # every byte is in the vocabulary: no text maps to the unknown token (which is also CLIP's pooling token)
    ids = processor.tokenizer("zebra! ünïcode, 42 €")["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids[1:-1]


def test_embeddings_have_the_right_shapes_and_unit_norm(encoder):
    imgs = encoder.encode_images([noise_image(80, 60), noise_image(30, 90, seed=1)])
    texts = encoder.encode_texts(["a red car", "a dog", "three people under a tree"])
    ctx = encoder.encode_regions_in_context(noise_image(80, 60), [(0, 0, 40, 30), (10, 10, 70, 50)])
    d = encoder.embed_dim
    assert imgs.shape == (2, d) and texts.shape == (3, d) and ctx.shape == (2, d)
    for e in (imgs, texts, ctx):
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)


def test_text_batches_give_the_same_embeddings_as_one_batch(encoder):
    texts = ["a car", "two dogs sitting on a green sofa in the room", "a bicycle", "people"]
    one = encoder.encode_texts(texts, batch_size=64)
    small = encoder.encode_texts(texts, batch_size=1)
    assert torch.allclose(one, small, atol=1e-5)


def test_region_in_context_over_the_whole_square_image_is_the_image_embedding(encoder):
    image = noise_image(64, 64)
    whole = encoder.encode_images([image])[0]
    ctx = encoder.encode_regions_in_context(image, [(0, 0, 64, 64)])[0]
    assert torch.allclose(whole, ctx, atol=1e-5)


def test_region_in_context_sees_the_context_but_pools_the_region(encoder):
    image = noise_image(128, 128)
    box = (0, 0, 64, 64)
    crop = encoder.encode_images([image.crop(box)])[0]
    ctx = encoder.encode_regions_in_context(image, [box])[0]
    other_box = encoder.encode_regions_in_context(image, [(64, 64, 128, 128)])[0]
    assert not torch.allclose(crop, ctx, atol=1e-3)  # the two views of the paper's S_sem differ
    assert not torch.allclose(ctx, other_box, atol=1e-3)  # the box matters
    # Repaint outside the box: the crop is unchanged, the region-in-context embedding changes (it sees context).
    arr = np.asarray(image).copy()
    arr[64:, 64:] = 255 - arr[64:, 64:]
    repainted = Image.fromarray(arr)
    assert torch.allclose(crop, encoder.encode_images([repainted.crop(box)])[0], atol=1e-6)
    assert not torch.allclose(ctx, encoder.encode_regions_in_context(repainted, [box])[0], atol=1e-4)


def test_patch_mask_maps_boxes_through_padding(encoder):
    g, p = encoder.grid, encoder.patch_size
    # A 128x64 image is centred on a 128x128 square (32 px bars above and below), then scaled to the input
    pixels, offset, scale = encoder.preprocess(noise_image(128, 64))
    assert offset == (0, 32) and scale == encoder.image_size / 128
    mask = encoder.patch_mask([(0, 0, 64, 64)], offset, scale)[0].reshape(g, g)
    rows, cols = np.nonzero(mask)
    # the box covers the left half of the image, which sits in the middle rows of the padded square
    assert cols.max() < g / 2 and rows.min() >= 1 and rows.max() <= g - 2
    tiny = encoder.patch_mask([(1, 1, 2, 2)], offset, scale)[0]
    assert tiny.sum() == 1  # too small to hold a patch centre: the patch under its centre
    assert pixels.shape == (1, 3, encoder.image_size, encoder.image_size) and p * g == encoder.image_size


def test_token_limit_is_the_text_encoder_limit(encoder):
    long = "a red car next to a blue bus and " * 20
    assert encoder.count_tokens(long) > encoder.max_text_tokens
    assert encoder.encode_texts([long]).shape == (1, encoder.embed_dim)  # truncated, not crashing
