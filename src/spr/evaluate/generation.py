"""Greedy, batched generation with a model adapter (``spr.models``), and parsing the answers into boxes."""

from __future__ import annotations

from spr import formats


def greedy_generate(adapter, images: list, prompts: list[str], max_new_tokens: int) -> list[str]:
    """One greedy answer per (image, prompt), in one left-padded batch."""
    inputs = adapter.build_inputs(images, prompts, add_generation_prompt=True)
    new_tokens = adapter.generate(inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return [adapter.decode(row) for row in new_tokens]


def parse_boxes(adapter, text: str, image_size: tuple[int, int]):
    """Groundings in ``text`` (original-image pixels) read with the family's codec; never raises."""
    return formats.parse(text, adapter.fmt, image_size=image_size, **adapter.geometry(image_size))


def batched(items, size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


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
    progress: bool = True,
    max_pixels: int | None = None,
) -> int:
    """Generate for every sample whose id is not yet in ``writer`` and append ``record_of(...)`` for each.

    ``prompt_of(sample, view_size) -> str`` builds the user text; ``view_of(sample, image) -> image`` may crop
    (default: the full image); ``record_of(sample, text, view_size, error) -> dict`` turns an answer into a
    record; ``error`` is set (and ``text`` empty) when the image could not be loaded. Returns records written.
    """
    from tqdm import tqdm

    from spr.data.images import DEFAULT_MAX_PIXELS, ImageCache

    todo = [s for s in samples if not writer.has(s.id)]
    images = ImageCache(max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    written = 0
    bar = tqdm(total=len(todo), desc=desc, unit="sample", disable=not (todo and progress) or None)
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
