"""Greedy, batched generation with a model adapter (``spr.models``), and parsing the answers into boxes."""

from __future__ import annotations

from spr import formats


def load_adapter(model_dir, family: str | None = None, device: str = "cpu", trust_remote_code: bool = False):
    """The model adapter for ``model_dir`` (imported here so that metric-only code does not pay for torch)."""
    from spr import models

    return models.load(str(model_dir), family=family, device=device, trust_remote_code=trust_remote_code)


def greedy_generate(adapter, images: list, prompts: list[str], max_new_tokens: int) -> list[str]:
    """One greedy answer per (image, prompt), in one left-padded batch."""
    inputs = adapter.build_inputs(images, prompts, add_generation_prompt=True)
    new_tokens = adapter.generate(inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return [adapter.decode(row) for row in new_tokens]


def parse_boxes(adapter, text: str, image_size: tuple[int, int]):
    """Groundings in ``text`` (original-image pixels) read with the family's codec; never raises."""
    return formats.parse(text, adapter.fmt, image_size=image_size, **adapter.geometry(image_size))


def run_predictions(
    adapter,
    samples: list,
    writer,
    prompt_of,
    record_of,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    desc: str = "eval",
    view_of=None,
) -> int:
    """Generate for every sample whose id is not yet in ``writer`` and append ``record_of(...)`` for each.

    ``prompt_of(sample, view_size) -> str`` builds the user text; ``view_of(sample, image) -> image`` may crop
    (default: the full image); ``record_of(sample, text, view_size, error) -> dict`` turns an answer into a
    record; ``error`` is set (and ``text`` empty) when the image could not be loaded. Returns records written.
    """
    from tqdm import tqdm

    from .common import ImageCache, batched

    todo = [s for s in samples if not writer.has(s.id)]
    images = ImageCache()
    written = 0
    bar = tqdm(total=len(todo), desc=desc, unit="sample", disable=not todo)
    for batch in batched(todo, batch_size):
        ready, views = [], []
        for s in batch:
            image, error = images.get(s.image)
            if image is None:
                written += writer.write(record_of(s, "", None, error))
                continue
            ready.append(s)
            views.append(view_of(s, image) if view_of else image)
        if ready:
            prompts = [prompt_of(s, v.size) for s, v in zip(ready, views)]
            texts = greedy_generate(adapter, views, prompts, max_new_tokens)
            for s, view, text in zip(ready, views, texts):
                written += writer.write(record_of(s, text, view.size, None))
        bar.update(len(batch))
    bar.close()
    return written
