"""One interface over every supported family: chat prompt with images, batched inputs, generation, decoding,
box format and its geometry."""

from __future__ import annotations

from collections.abc import Sequence

from .families import FamilySpec

# Inputs with one entry per prompt token (cut with the prompt when the last token is left to ``generate``).
PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def repeat_cache(cache, n: int) -> None:
    """Repeat every row of a KV cache ``n`` times (row i becomes rows i*n .. i*n+n-1), the states of
    linear-attention layers included (Qwen3.5's gated delta net: transformers 5.23 repeats only keys and values)."""
    for layer in cache.layers:
        if hasattr(layer, "batch_repeat_interleave"):
            layer.batch_repeat_interleave(n)
        for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            for k, v in (states or {}).items():
                if v is not None:
                    states[k] = v.repeat_interleave(n, dim=0)


class ModelAdapter:
    """A loaded model, its processor and what SPR needs to know about its family.

    >>> adapter = spr.models.load("path/to/model")                     # doctest: +SKIP
    >>> inputs = adapter.build_inputs([image], [adapter.rec_prompt("the red box")])
    >>> new_tokens = adapter.generate(inputs, max_new_tokens=32)
    >>> adapter.decode(new_tokens[0])
    """

    def __init__(self, model, processor, spec: FamilySpec, fmt: str | None = None, device: str = "cpu"):
        self.model = model
        self.processor = processor
        self.spec = spec
        self.family = spec.name
        self.fmt = fmt or spec.default_fmt
        self.device = device
        self.tokenizer.padding_side = "left"  # generation appends on the right
        gen = getattr(model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_token_ids: list[int] = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = int(pad if pad is not None else self.eos_token_ids[0])
        self._geometry_cache: dict[tuple[int, int], dict] = {}
        self.media_token_ids: set[int] = self._media_token_ids()
        self.shared_prefill: bool = spec.shared_prefill

    def _media_token_ids(self) -> set[int]:
        """Ids of the image / video placeholder tokens. A sampled answer can contain them; kept in the text they
        would make the processor expect images that are not there when the answer is trained on."""
        ids: set[int] = set()
        for name in ("image_token", "video_token"):
            token = getattr(self.processor, name, None)
            if isinstance(token, str):
                tid = self.tokenizer.convert_tokens_to_ids(token)
                if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                    ids.add(tid)
        config = getattr(self.model, "config", None)
        for name in ("image_token_id", "video_token_id", "image_token_index"):
            tid = getattr(config, name, None)
            if isinstance(tid, int):
                ids.add(tid)
        return ids

    def placeholder_tokens(self) -> list[str]:
        """The processor's image / video placeholder tokens (the collator expands them into image tokens)."""
        tokens = (getattr(self.processor, "image_token", None), getattr(self.processor, "video_token", None))
        return [t for t in tokens if isinstance(t, str) and t]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.eos_token_ids[0]

    # ------------------------------------------------------------------------------------------ prompts
    def messages(self, prompt: str, with_image: bool = True, answer: str | None = None) -> list[dict]:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        msgs = [{"role": "user", "content": content}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return msgs

    def chat_text(self, prompt: str, with_image: bool = True, add_generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(
            self.messages(prompt, with_image), add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def rec_prompt(self, expression: str) -> str:
        """The family's referring-expression (REC) prompt for ``expression``."""
        return self.spec.rec_template.format(expression=expression)

    def description_prompts(self, region, templates=None) -> list:
        """The grounded-description prompts of ``region`` (see :mod:`spr.prompts`), in this model's box format."""
        from .. import prompts as P

        templates = P.select_templates(None) if templates is None else templates
        return [P.render(t, region, self.fmt, self.geometry) for t in templates]

    # ----------------------------------------------------------------------------------------- geometry
    def pixel_budget(self) -> dict:
        """``{"min_pixels", "max_pixels"}`` of the image processor's resize (Qwen2-VL style processors), or {}
        for processors that resize to a fixed size. Boxes in resized-input pixels depend on it."""
        size = getattr(getattr(self.processor, "image_processor", None), "size", None)
        low, high = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
        if not (hasattr(self.processor.image_processor, "merge_size") and low and high):
            return {}
        return {"min_pixels": int(low), "max_pixels": int(high)}

    def set_pixel_budget(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Resize images to between ``min_pixels`` and ``max_pixels`` (either may stay as it is)."""
        budget = self.pixel_budget()
        if not budget:
            raise ValueError(
                f"the {self.family} processor resizes images to a fixed size: it has no pixel budget to set"
            )
        low, high = min_pixels or budget["min_pixels"], max_pixels or budget["max_pixels"]
        if not 0 < low <= high:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {low} and {high}")
        from transformers.image_utils import SizeDict

        self.processor.image_processor.size = SizeDict(shortest_edge=int(low), longest_edge=int(high))
        self._geometry_cache.clear()

    def geometry(self, image_size) -> dict:
        """Codec geometry for an image of ``image_size`` (W, H) as this model sees it.

        For codecs in pixels of the resized model input (Qwen2.5-VL) this is ``input_size``, taken from the
        processor's own resize (image_grid_thw x patch size), so it follows the processor's pixel budget."""
        from .. import formats

        if "input_size" not in getattr(formats.get(self.fmt), "geometry_keys", ()):
            return {}
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._geometry_cache:
            from PIL import Image

            ip = self.processor.image_processor
            out = ip(images=[Image.new("RGB", key)], return_tensors="np")
            _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
            self._geometry_cache[key] = {"input_size": [gw * ip.patch_size, gh * ip.patch_size]}
        return dict(self._geometry_cache[key])

    # ------------------------------------------------------------------------------------- generation
    def build_inputs(
        self, images: Sequence | None, prompts: Sequence[str], add_generation_prompt: bool = True
    ):
        """A left-padded batch: one user turn per prompt, each with its image (``images[i]``, PIL) when given."""
        with_image = images is not None
        texts = [self.chat_text(p, with_image, add_generation_prompt) for p in prompts]
        kwargs = dict(text=texts, padding=True, return_tensors="pt")
        if with_image:
            if len(images) != len(prompts):
                raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
            imgs = [im.convert("RGB") for im in images]
            kwargs["images"] = [[im] for im in imgs] if self.spec.images_per_prompt_nested else imgs
        inputs = self.processor(**kwargs)
        return inputs.to(self.model.device)

    def generate(self, inputs, **generation_kwargs):
        """Token ids generated after the prompt, shape (batch * num_return_sequences, new_tokens).

        With ``num_return_sequences`` N > 1 and ``shared_prefill`` (the family's, settable per adapter), each
        prompt is prefilled once, images included, and its KV cache repeated to its N rows
        (:meth:`_generate_shared`); otherwise every one of the N rows is prefilled."""
        import torch

        kwargs = dict(pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_ids)
        kwargs.update(generation_kwargs)
        n = int(kwargs.get("num_return_sequences") or 1)
        with torch.inference_mode():
            if n > 1 and self.shared_prefill and self._ends_in_text(inputs["input_ids"]):
                out = self._generate_shared(inputs, n, kwargs)
            else:
                out = self.model.generate(**inputs, **kwargs)
        return out[:, inputs["input_ids"].shape[1] :]

    def _ends_in_text(self, input_ids) -> bool:
        """The shared path runs the last prompt token without images: it must not be an image token."""
        return not any(int(t) in self.media_token_ids for t in input_ids[:, -1])

    def _generate_shared(self, inputs, n: int, kwargs: dict):
        """Prefill every prompt but its last token once (images included), repeat the KV cache to the ``n`` rows
        of each prompt, and let ``generate`` go on from the last prompt token with ids and mask alone: each row
        decodes as after a prefill of its own, so every sampling decision stays ``generate``'s (and
        RowSampler's, with the same rows in the same order)."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prefill = {k: v[:, :-1] if k in PER_TOKEN_INPUTS else v for k, v in inputs.items()}
        # the positions generate gives a left-padded prompt (M-RoPE ones for Qwen2-VL, which also sets rope_deltas)
        prefill["position_ids"] = self.model._prepare_position_ids_for_generation(
            prefill["input_ids"], dict(prefill)
        )
        cache = self.model(**prefill, use_cache=True, logits_to_keep=1).past_key_values
        repeat_cache(cache, n)
        self._repeat_rope_deltas(n)
        return self.model.generate(
            input_ids=ids.repeat_interleave(n, dim=0),
            attention_mask=mask.repeat_interleave(n, dim=0),
            past_key_values=cache,
            **{**kwargs, "num_return_sequences": 1},
        )

    def _repeat_rope_deltas(self, n: int) -> None:
        """M-RoPE models (Qwen2-VL, Qwen2.5-VL) keep the prefill's per-row position offsets (``rope_deltas``)
        to place the tokens that follow the image; the repeated rows need theirs."""
        import torch

        for module in self.model.modules():
            deltas = getattr(module, "rope_deltas", None)
            if isinstance(deltas, torch.Tensor):
                module.rope_deltas = deltas.repeat_interleave(n, dim=0)

    def decode(self, token_ids) -> str:
        """Text of generated ``token_ids``, cut at the first end-of-sequence token, padding and image / video
        placeholder tokens removed.

        Other special tokens inside the answer are kept: box markup such as ``<|box_start|>`` is made of them."""
        ids = [int(t) for t in token_ids]
        for i, t in enumerate(ids):
            if t in self.eos_token_ids:
                ids = ids[:i]
                break
        ids = [t for t in ids if t != self.pad_token_id and t not in self.media_token_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def count_new_tokens(self, token_ids) -> int:
        """Generated tokens up to and including the end-of-sequence token (padding after it not counted)."""
        n = 0
        for t in token_ids:
            n += 1
            if int(t) in self.eos_token_ids:
                break
        return n

    def __repr__(self) -> str:
        return f"ModelAdapter(family={self.family!r}, fmt={self.fmt!r}, model={type(self.model).__name__})"
