"""The sampling loop of `spr generate`: for each region and prompt, N grounded descriptions from the model.

Prompts of several regions go through one ``generate`` call (left padding), each with ``num_return_sequences``
samples; each prompt, image included, is prefilled once and its KV cache repeated to its samples
(:meth:`spr.models.ModelAdapter.generate`, the family's ``shared_prefill``). Every output is parsed with the
family's box codec in coordinates of the image the model saw (the crop for crop prompts) and stored in
original-image pixels. Candidate ids are ``{region_id}/{prompt_id}/{sample}`` (``.../greedy`` for the greedy
answer that ``include_greedy`` adds); ids already written are skipped.

Randomness is per candidate: every output row samples from its own random stream, seeded by the run seed and
its candidate id (:class:`RowSampler`). What a candidate says therefore does not depend on which other prompts
share its batch, where a killed run resumed, or how many processes share the work: a resumed or sharded run
writes the same candidates as one uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from . import formats
from .data.images import ImageProblem, load_image
from .data.records import Candidate, Region
from .prompts import RenderedPrompt

log = logging.getLogger(__name__)


@dataclass
class GenerateStats:
    regions: int = 0
    regions_skipped: Counter = field(default_factory=Counter)
    skip_examples: list[str] = field(default_factory=list)
    written: int = 0
    already_present: int = 0
    with_problems: int = 0
    without_boxes: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    prompts_skipped: Counter = field(default_factory=Counter)

    def skip(self, region_id: str, reason: str, detail: str, prompt_id: str | None = None) -> None:
        """Report a region (or one prompt of it, when ``prompt_id`` is given) that is skipped, and why."""
        (self.prompts_skipped if prompt_id else self.regions_skipped)[reason] += 1
        where = f"region {region_id}" + (f" prompt {prompt_id}" if prompt_id else "")
        message = f"{where}: {reason}: {detail}"
        if len(self.skip_examples) < 20:
            self.skip_examples.append(message)
        log.warning(message)

    def merge(self, other: GenerateStats) -> None:
        self.regions += other.regions
        self.regions_skipped.update(other.regions_skipped)
        self.prompts_skipped.update(other.prompts_skipped)
        self.skip_examples += other.skip_examples[: max(0, 20 - len(self.skip_examples))]
        for name in ("written", "already_present", "with_problems", "without_boxes", "new_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds = max(self.seconds, other.seconds)


GREEDY = -1  # the sample number of the greedy answer


def candidate_id(region_id: str, prompt_id: str, sample: int) -> str:
    return f"{region_id}/{prompt_id}/{'greedy' if sample == GREEDY else sample}"


def row_seed(seed: int, cid: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{cid}".encode()).digest()[:8], "little")


class RowSampler:
    """A logits processor that samples the next token of every row from that row's own random stream
    (temperature, then nucleus top-p) and leaves only that token possible, so that greedy decoding takes it.
    A row without a seed decodes greedily.

    The vocabulary-wide work runs on the scores' device, vectorised over rows; the host sees one draw per row
    (from the row's own CPU generator) and the running sums of the few tokens that can be in the nucleus. A row's tokens are ordered by probability, ties by lower token id; its nucleus is the
    shortest prefix whose running sum reaches ``top_p``, and the draw ``u`` takes the first token whose running
    sum reaches ``u`` times the nucleus's. Tokens no likelier than ``(1 - top_p) / vocabulary`` hold at most
    ``1 - top_p`` together, so the nucleus is among the others: only those are sorted (a handful for a confident
    model), and the whole vocabulary only for a row where they are a quarter of it or do not reach ``top_p``
    (rounding). Either way the token drawn depends on the row's own probabilities and draw alone, never on the
    other rows."""

    def __init__(self, seeds: list[int | None], temperature: float, top_p: float):
        import torch

        self.generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
        self.sampled = [row for row, g in enumerate(self.generators) if g is not None]
        self.greedy = [row for row, g in enumerate(self.generators) if g is None]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        device = scores.device
        chosen = torch.zeros(len(scores), dtype=torch.long, device=device)
        if self.greedy:
            greedy = torch.tensor(self.greedy, device=device)
            chosen[greedy] = scores[greedy].argmax(-1)
        if self.sampled:
            # one draw per sampled row from its own stream, every step
            gens = [self.generators[r] for r in self.sampled]
            draws = torch.tensor([torch.rand((), generator=g, dtype=torch.float64).item() for g in gens])
            rows = torch.tensor(self.sampled, device=device) if self.greedy else None
            logits = scores.float() if rows is None else scores[rows].float()
            if self.temperature != 1:
                logits = logits / self.temperature
            probs = torch.softmax(logits, dim=-1)  # row by row: no row sees another
            tokens = self._draw(probs, draws)
            if rows is None:
                chosen = tokens
            else:
                chosen[rows] = tokens
        # a new tensor: generate keeps the scores it passed in (output_logits)
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen.unsqueeze(-1), 0.0)

    def _draw(self, probs, draws):
        """The token each row of ``probs`` draws with its ``draws`` (uniform in [0, 1), on the host)."""
        import torch

        rows, vocab = probs.shape
        device = probs.device
        tokens = torch.empty(rows, dtype=torch.long, device=device)
        row, col = _true_at(probs > (1 - self.top_p) / vocab)  # the likely tokens, row by row in token order
        counts = torch.bincount(row, minlength=rows)
        packed = counts <= vocab // 4  # beyond that, packing costs about what a sort of the vocabulary does
        members = packed.nonzero().squeeze(-1)
        full = torch.ones(rows, dtype=torch.bool, device=device)
        if len(members):  # each member row's likely tokens side by side, padded with zeros to the longest
            if len(members) < rows:
                row, col = row[packed[row]], col[packed[row]]
            n = counts[members]
            at = torch.arange(len(members), device=device).repeat_interleave(n)
            slot = torch.arange(len(row), device=device) - (n.cumsum(0) - n).repeat_interleave(n)
            p = torch.zeros(len(members), max(int(n.max()), 1), dtype=probs.dtype, device=device)
            ids = torch.zeros(p.shape, dtype=torch.long, device=device)
            p[at, slot], ids[at, slot] = probs[row, col], col
            drawn, reached = self._nucleus(p, ids, draws[members.cpu()])
            exact = (reached >= self.top_p).to(
                device
            )  # else rounding kept the nucleus from closing among them
            tokens[members[exact]] = drawn[exact]
            full[members[exact]] = False
        rest = full.nonzero().squeeze(-1)
        if len(rest):
            ids = torch.arange(vocab, device=device).expand(len(rest), vocab)
            tokens[rest] = self._nucleus(probs[rest], ids, draws[rest.cpu()])[0]
        return tokens

    def _nucleus(self, p, ids, draws):
        """Draw from the nucleus of each row of ``p`` (probabilities of tokens ``ids``, in token order); also
        the sum of each row's ``p``."""
        import torch

        p, order = p.sort(dim=-1, descending=True, stable=True)  # ties: lower token id first
        # the running sums on the host, where they do not depend on the width (a GPU's scan rounds by it):
        # a handful of tokens per row, the whole vocabulary only for a row on the sort path
        cumulative = p.cpu().cumsum(-1)
        before = torch.nn.functional.pad(cumulative[:, :-1], (1, 0))
        keep = before < self.top_p  # up to the token whose running sum reaches top_p
        total = cumulative.gather(-1, keep.sum(-1, keepdim=True) - 1)
        running = torch.where(keep, cumulative, total)  # sorted: the draw lands in the nucleus
        u = (draws.unsqueeze(-1) * total.to(draws.dtype)).to(running.dtype)
        pick = torch.searchsorted(running, u).clamp(max=p.shape[-1] - 1).to(p.device)
        return ids.gather(-1, order.gather(-1, pick)).squeeze(-1), cumulative[:, -1]


def _true_at(mask):
    """``mask.nonzero(as_tuple=True)`` of a 2-d bool tensor, row-major; quicker when few entries are true (it
    looks for them among words of 8 flags first)."""
    import torch

    rows, width = mask.shape
    if width % 8 or not mask.is_contiguous():
        return mask.nonzero(as_tuple=True)
    word_row, word = (mask.view(torch.int64) != 0).nonzero(as_tuple=True)
    hit, bit = mask.view(rows, -1, 8)[word_row, word].nonzero(as_tuple=True)
    return word_row[hit], word[hit] * 8 + bit


def make_candidate(
    region: Region,
    prompt: RenderedPrompt,
    sample: int,
    text: str,
    fmt: str,
    pixel_budget: dict | None = None,
    new_tokens: int = 0,
) -> Candidate:
    parsed = formats.parse(text, fmt, image_size=prompt.view_size, **prompt.geometry)
    return Candidate(
        id=candidate_id(region.id, prompt.prompt_id, sample),
        region_id=region.id,
        prompt_id=prompt.prompt_id,
        prompt=prompt.text,
        sample=sample,
        text=text,
        groundings=prompt.groundings_to_original(parsed),
        problems=list(parsed.problems),
        fmt=fmt,
        geometry=dict(prompt.geometry),
        pixel_budget=dict(pixel_budget or {}),
        image=region.image,
        crop_box=list(prompt.crop_box) if prompt.crop_box else None,
        new_tokens=new_tokens,
    )


@dataclass
class _Item:
    region: Region
    prompt: RenderedPrompt
    image: object  # PIL image of the view


def _items(
    adapter, regions, templates, done: set[str], samples: list[int], stats: GenerateStats, max_pixels: int
):
    """For each region, its (region, prompt) work items still missing at least one sample, with their view
    images (an empty list when there is nothing to do). Regions with a bad image are reported and skipped."""
    for region in regions:
        if all(candidate_id(region.id, t.id, s) in done for t in templates for s in samples):
            stats.already_present += len(templates) * len(samples)  # done: not even its prompts are rendered
            yield []
            continue
        rendered = []
        for t in templates:
            try:
                rendered += adapter.description_prompts(region, [t])
            except ValueError as e:  # e.g. a crop the processor refuses (Qwen2-VL: aspect ratio over 200)
                stats.skip(region.id, "view refused by the processor", str(e), prompt_id=t.id)
        todo = [
            p for p in rendered if any(candidate_id(region.id, p.prompt_id, s) not in done for s in samples)
        ]
        stats.already_present += sum(
            candidate_id(region.id, p.prompt_id, s) in done for p in rendered for s in samples
        )
        if not todo:
            yield []
            continue
        try:
            image = load_image(region.image, max_pixels, expected_size=region.image_size)
        except ImageProblem as e:
            stats.skip(region.id, e.kind, e.detail)
            yield []
            continue
        yield [_Item(region, p, p.view_image(image)) for p in todo]


def expected_ids(regions, templates, config) -> list[str]:
    """Every candidate id of a run, in the order one process writes them."""
    samples = list(range(config.samples)) + (
        [GREEDY] if config.include_greedy and config.temperature > 0 else []
    )
    return [candidate_id(r.id, t.id, s) for r in regions for t in templates for s in samples]


def generate_into(
    adapter, regions, templates, writer, config, done=None, progress: bool = True
) -> GenerateStats:
    """Sample candidates for ``regions`` x ``templates`` into ``writer`` (a JsonlWriter) with the sampling
    settings of ``config`` (a :class:`spr.generate.GenerateConfig`), skipping ids in ``done`` and in the
    writer. Returns the run's statistics."""
    from tqdm import tqdm

    stats = GenerateStats(regions=len(regions))
    done = set(done or ()) | writer.ids
    greedy = config.temperature <= 0
    samples = list(range(config.samples)) + ([GREEDY] if config.include_greedy and not greedy else [])
    gen_kwargs = dict(
        max_new_tokens=config.max_new_tokens, num_return_sequences=len(samples), do_sample=False
    )
    if not greedy:  # the sampling is RowSampler's; transformers' sampler only takes the one token it leaves
        gen_kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    if config.min_new_tokens:
        gen_kwargs["min_new_tokens"] = config.min_new_tokens
    start = time.perf_counter()
    bar = tqdm(
        total=len(regions), desc="generate", unit="region", disable=not progress or None, dynamic_ncols=True
    )
    pending: list[_Item] = []

    def run_batch(items: list[_Item]) -> None:
        try:
            inputs = adapter.build_inputs([it.image for it in items], [it.prompt.text for it in items])
        except ValueError as e:  # the processor refuses one of the images: find it, run the others
            if len(items) > 1:
                for item in items:
                    run_batch([item])
            else:
                stats.skip(
                    items[0].region.id, "view refused by the processor", str(e), items[0].prompt.prompt_id
                )
            return
        ids = [candidate_id(it.region.id, it.prompt.prompt_id, s) for it in items for s in samples]
        kwargs = dict(gen_kwargs)
        if not greedy:
            seeds = [None if cid.endswith("/greedy") else row_seed(config.seed, cid) for cid in ids]
            kwargs["logits_processor"] = [RowSampler(seeds, config.temperature, config.top_p)]
        new = adapter.generate(inputs, **kwargs)
        for row, tokens in enumerate(new):
            item, sample = items[row // len(samples)], samples[row % len(samples)]
            n = adapter.count_new_tokens(tokens)
            stats.new_tokens += n
            cand = make_candidate(
                item.region,
                item.prompt,
                sample,
                adapter.decode(tokens),
                adapter.fmt,
                adapter.pixel_budget(),
                n,
            )
            if writer.write(cand):
                stats.written += 1
                stats.with_problems += bool(cand.problems)
                stats.without_boxes += not cand.groundings

    def flush():
        nonlocal pending
        if not pending:
            return
        run_batch(pending)
        pending = []
        elapsed = time.perf_counter() - start
        bar.set_postfix(candidates=stats.written, tok_s=f"{stats.new_tokens / max(elapsed, 1e-9):.1f}")

    for region_items in _items(adapter, regions, templates, done, samples, stats, config.max_image_pixels):
        for item in region_items:
            pending.append(item)
            if len(pending) >= config.batch_size:
                flush()
        bar.update(1)
    flush()
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
