"""Sample grounded region descriptions: for each region and prompt, N candidates from the model itself.

Prompts of several regions go through one ``generate`` call (left padding), each with ``num_return_sequences``
samples. Every output is parsed with the family's box codec in coordinates of the image the model saw (the crop
for crop prompts) and stored in original-image pixels.

Resumable: candidate ids are ``{region_id}/{prompt_id}/{sample}``; a re-run with the same arguments skips every
id already written, so a killed run ends with exactly one record per id.

Data parallel: under ``accelerate launch`` or ``torchrun`` process r of w takes ``regions[r::w]`` and writes its
own shard (``candidates.shard0r-of-0w.jsonl``); after a barrier, process 0 merges every shard into the output.
Shards left by a killed run (of any process count) count as done and are merged by the next run.

    torchrun --standalone --nproc_per_node 2 -m spr.cli generate --model M --regions R --out C   # CPU or GPU
    accelerate launch --multi_gpu --num_processes 2 -m spr.cli generate ...    # GPUs (works on CPU too)

(``accelerate launch --cpu --num_processes 2`` starts a single process unless MPI is set up; use torchrun.)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from . import formats
from .data.jsonl import JsonlError, JsonlWriter, iter_jsonl, read_records, shard_path
from .data.records import Candidate, Region
from .errors import UserError
from .prompts import PromptTemplate, RenderedPrompt, select_templates

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    samples: int = 4
    """Candidates per (region, prompt)."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy decoding (then only one sample makes sense)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 256
    """Longest description, in tokens."""
    min_new_tokens: int = 0
    """Shortest description, in tokens (benchmarks set it to max_new_tokens to fix the amount of work)."""
    batch_size: int = 4
    """Prompts per generate call (each with ``samples`` sequences, so batch_size * samples rows)."""
    seed: int = 0
    """Seed of the sampler (process r uses seed + r)."""
    limit: int | None = None
    """Use only the first ``limit`` regions of the file (smoke tests)."""


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


class ImageProblem(Exception):
    """The region's image is missing, unreadable or not the size the region record says."""


def candidate_id(region_id: str, prompt_id: str, sample: int) -> str:
    return f"{region_id}/{prompt_id}/{sample}"


def open_image(region: Region):
    from PIL import Image, UnidentifiedImageError

    path = Path(region.image)
    if not path.exists():
        raise ImageProblem("image missing", str(path))
    try:
        with Image.open(path) as im:
            im.load()
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise ImageProblem("image unreadable", f"{path}: {e}") from None
    if list(image.size) != [int(v) for v in region.image_size]:
        raise ImageProblem(
            "image size differs from the region record",
            f"{path} is {image.size[0]}x{image.size[1]}, the record says {region.image_size[0]}x{region.image_size[1]}",
        )
    return image


def to_original(groundings, crop_box) -> list[dict]:
    """Groundings parsed in view coordinates -> dicts in original-image pixels (crop offsets added back)."""
    dx, dy = (crop_box[0], crop_box[1]) if crop_box else (0, 0)
    out = []
    for g in groundings:
        d = g.to_dict()
        x1, y1, x2, y2 = d["box"]
        d["box"] = [x1 + dx, y1 + dy, x2 + dx, y2 + dy]
        out.append(d)
    return out


def make_candidate(region: Region, prompt: RenderedPrompt, sample: int, text: str, fmt: str) -> Candidate:
    parsed = formats.parse(text, fmt, image_size=prompt.view_size, **prompt.geometry)
    return Candidate(
        id=candidate_id(region.id, prompt.prompt_id, sample),
        region_id=region.id,
        prompt_id=prompt.prompt_id,
        prompt=prompt.text,
        sample=sample,
        text=text,
        groundings=to_original(parsed, prompt.crop_box),
        problems=list(parsed.problems),
        fmt=fmt,
        geometry=dict(prompt.geometry),
        image=region.image,
        crop_box=list(prompt.crop_box) if prompt.crop_box else None,
    )


@dataclass
class _Item:
    region: Region
    prompt: RenderedPrompt
    image: object  # PIL image of the view


def _items(adapter, regions, templates, done: set[str], samples: int, stats: GenerateStats):
    """For each region, its (region, prompt) work items still missing at least one sample, with their view
    images (an empty list when there is nothing to do). Regions with a bad image are reported and skipped."""
    for region in regions:
        rendered = []
        for t in templates:
            try:
                rendered += adapter.description_prompts(region, [t])
            except ValueError as e:  # e.g. a crop the processor refuses (Qwen2-VL: aspect ratio over 200)
                stats.skip(region.id, "view refused by the processor", str(e), prompt_id=t.id)
        todo = [
            p
            for p in rendered
            if any(candidate_id(region.id, p.prompt_id, s) not in done for s in range(samples))
        ]
        stats.already_present += sum(
            candidate_id(region.id, p.prompt_id, s) in done for p in rendered for s in range(samples)
        )
        if not todo:
            yield []
            continue
        try:
            image = open_image(region)
        except ImageProblem as e:
            stats.skip(region.id, *e.args)
            yield []
            continue
        yield [_Item(region, p, image.crop(tuple(p.crop_box)) if p.crop_box else image) for p in todo]


def generate_into(
    adapter, regions, templates, writer: JsonlWriter, config: GenerateConfig, done=None, progress: bool = True
) -> GenerateStats:
    """Sample candidates for ``regions`` x ``templates`` into ``writer``, skipping ids in ``done`` (and in the
    writer). Returns the run's statistics."""
    import torch
    from tqdm import tqdm

    stats = GenerateStats(regions=len(regions))
    done = set(done or ()) | writer.ids
    greedy = config.temperature <= 0
    gen_kwargs = dict(max_new_tokens=config.max_new_tokens, num_return_sequences=config.samples)
    if config.min_new_tokens:
        gen_kwargs["min_new_tokens"] = config.min_new_tokens
    gen_kwargs.update(
        dict(do_sample=False)
        if greedy
        else dict(do_sample=True, temperature=config.temperature, top_p=config.top_p)
    )
    start = time.perf_counter()
    bar = tqdm(total=len(regions), desc="generate", unit="region", disable=not progress, dynamic_ncols=True)
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
        new = adapter.generate(inputs, **gen_kwargs)
        for row, tokens in enumerate(new):
            item, sample = items[row // config.samples], row % config.samples
            stats.new_tokens += adapter.count_new_tokens(tokens)
            cand = make_candidate(item.region, item.prompt, sample, adapter.decode(tokens), adapter.fmt)
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

    torch.manual_seed(config.seed)
    for region_items in _items(adapter, regions, templates, done, config.samples, stats):
        for item in region_items:
            pending.append(item)
            if len(pending) >= config.batch_size:
                flush()
        bar.update(1)
    flush()
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


# ----------------------------------------------------------------------------------- whole stage


def _shards_of(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.stem}.shard*-of-*{out.suffix}"))


def _ids_in(paths) -> set[str]:
    ids: set[str] = set()
    for p in paths:
        if p.exists():
            ids.update(str(o["id"]) for o in iter_jsonl(p, skip_bad=True) if "id" in o)
    return ids


def merge_all_shards(out: Path) -> int:
    """Merge every shard file of ``out`` (whatever process count wrote it) into ``out``; returns its size."""
    with JsonlWriter(out) as w:
        for shard in _shards_of(out):
            for obj in iter_jsonl(shard, skip_bad=True):
                w.write(obj)
        total = len(w.ids)
    for shard in _shards_of(out):
        shard.unlink()
    return total


def read_regions(path: str | Path, limit: int | None = None) -> list[Region]:
    try:
        regions = read_records(path, Region)
    except FileNotFoundError:
        raise UserError(f"{path}: no such regions file (make one with `spr regions`)") from None
    except JsonlError as e:
        raise UserError(str(e)) from None
    ids = [r.id for r in regions]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise UserError(f"{path}: region ids must be unique; repeated: {', '.join(dup)}")
    return regions[:limit] if limit is not None else regions


def _distributed(device: str | None):
    """(rank, world size, state) under accelerate launch / torchrun; (0, 1, None) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    # Ranks wait for each other at the end; shares can take hours when the data is uneven.
    state = PartialState(cpu=cpu, timeout=timedelta(hours=24))
    if state.num_processes != world:
        raise UserError(f"WORLD_SIZE is {world} but the process group has {state.num_processes} processes")
    return state.process_index, state.num_processes, state


def run_generate(
    model: str | Path,
    regions_path: str | Path,
    out: str | Path,
    config: GenerateConfig,
    templates: list[PromptTemplate] | None = None,
    family: str | None = None,
    fmt: str | None = None,
    device: str | None = None,
    dtype=None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> GenerateStats:
    """The whole stage, single- or multi-process. Returns the statistics (summed over processes on rank 0)."""
    from .models import load

    if config.samples < 1:
        raise UserError("--samples must be at least 1")
    if config.temperature <= 0 and config.samples > 1:
        raise UserError("greedy decoding (--temperature 0) gives identical samples: use --samples 1")
    if config.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    out = Path(out)
    templates = templates if templates is not None else select_templates(None)
    regions = read_regions(regions_path, config.limit)
    rank, world, state = _distributed(device)
    if device is None:
        device = str(state.device) if state is not None else "cpu"
    adapter = load(
        model, family=family, device=device, dtype=dtype, trust_remote_code=trust_remote_code, fmt=fmt
    )
    if adapter.fmt not in formats.available():
        raise UserError(
            f"box format {adapter.fmt!r} of the {adapter.family} family is not available; "
            f"choose one with --format ({', '.join(formats.available())})"
        )
    shard = shard_path(out, rank, world)
    done = _ids_in([out, *_shards_of(out)])
    my_config = GenerateConfig(**{**config.__dict__, "seed": config.seed + rank})
    with JsonlWriter(shard) as writer:
        stats = generate_into(
            adapter,
            regions[rank::world],
            templates,
            writer,
            my_config,
            done=done,
            progress=progress and rank == 0,
        )
    if state is not None:
        from accelerate.utils import gather_object

        all_stats = gather_object([stats])
        state.wait_for_everyone()
        if rank == 0:
            stats = GenerateStats()
            for s in all_stats:
                stats.merge(s)
    if rank == 0:
        merge_all_shards(out)
    if state is not None:
        state.wait_for_everyone()
    return stats


def summary_table(stats: GenerateStats, out: Path) -> str:
    from .table import markdown_table

    n = max(stats.written, 1)
    rows = [
        ["regions", stats.regions],
        ["candidates written", stats.written],
        ["candidates already present", stats.already_present],
        ["candidates with parse problems", f"{stats.with_problems} ({stats.with_problems / n:.1%})"],
        ["candidates without any box", f"{stats.without_boxes} ({stats.without_boxes / n:.1%})"],
        ["generated tokens", stats.new_tokens],
        ["tokens/s", round(stats.new_tokens / max(stats.seconds, 1e-9), 1)],
        ["seconds", round(stats.seconds, 1)],
    ]
    rows += [[f"regions skipped: {reason}", count] for reason, count in sorted(stats.regions_skipped.items())]
    rows += [[f"prompts skipped: {reason}", count] for reason, count in sorted(stats.prompts_skipped.items())]
    text = markdown_table(["generate", "value"], rows)
    if stats.skip_examples:
        text += "\n" + "\n".join(f"  {e}" for e in stats.skip_examples)
    return text + f"\ncandidates in {out}"


# ---------------------------------------------------------------------------------------------- CLI

HELP = "Sample grounded region descriptions (candidates) from a model, batched and resumable."


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = GenerateConfig()
    p.add_argument(
        "--model", required=True, help="local model directory (config.json, model.safetensors, processor)"
    )
    p.add_argument("--regions", required=True, help="regions.jsonl written by `spr regions`")
    p.add_argument("--out", required=True, help="candidates.jsonl to write (ids already there are skipped)")
    p.add_argument(
        "--samples",
        type=int,
        default=d.samples,
        help="candidates per region and prompt (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help="sampling temperature, 0 for greedy (default: %(default)s)",
    )
    p.add_argument(
        "--top-p", type=float, default=d.top_p, help="nucleus sampling threshold (default: %(default)s)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.max_new_tokens,
        help="longest description in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="prompts per generate call, each with --samples sequences (default: %(default)s)",
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="comma-separated built-in prompt ids (region_box, crop, hints) and/or JSON/YAML template files; "
        "default: all built-in prompts",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N regions")
    p.add_argument("--family", default=None, help="model family, overriding config.model_type")
    p.add_argument("--format", dest="fmt", default=None, help="box format, overriding the family's")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu, or each process's GPU)"
    )
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16, float16, auto")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model directory's own code")


def run(args) -> int:
    config = GenerateConfig(
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
    )
    stats = run_generate(
        args.model,
        args.regions,
        args.out,
        config,
        templates=select_templates(args.prompts),
        family=args.family,
        fmt=args.fmt,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary_table(stats, Path(args.out)))
    return 0
