"""`spr generate`: sample grounded region descriptions (candidates) from the model itself.

The sampling loop is :mod:`spr.sampling`; this module is the stage around it: its config, loading the model,
the output guard (lock + settings header, :mod:`spr.data.guard`), and data parallelism.

Resumable: a re-run with the same settings skips every candidate id already written, so a killed run ends with
exactly one record per id; other settings (another model, temperature, prompts ...) are refused.

Data parallel: under ``accelerate launch`` or ``torchrun`` process r of w takes ``regions[r::w]`` and writes its
own shard (``candidates.shard0r-of-0w.jsonl``); after a barrier, process 0 merges every shard into the output.
Shards left by a killed run (of any process count) count as done and are merged by the next run.

    torchrun --standalone --nproc_per_node 2 -m spr.cli generate --model M --regions R --out C   # CPU or GPU
    accelerate launch --multi_gpu --num_processes 2 -m spr.cli generate ...    # GPUs (works on CPU too)

(``accelerate launch --cpu --num_processes 2`` starts a single process unless MPI is set up; use torchrun.)
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import distributed, formats
from .config import opt, output_settings, required
from .data.guard import OutputLock, StageOutput, fingerprint, lock_path
from .data.jsonl import (
    JsonlError,
    JsonlWriter,
    ends_a_line,
    ids_in,
    merge_shards,
    read_records,
    reorder,
    shard_path,
    shards_of,
)
from .data.records import Region
from .data.summary import Count, Counters
from .errors import UserError
from .options import (
    DescriptionPrompts,
    Device,
    Dtype,
    ImageLimit,
    ModelFamily,
    PixelBudget,
    Progress,
    resolve_device,
)
from .prompts import select_templates
from .sampling import GenerateStats, expected_ids, generate_into


@dataclass
class GenerateConfig(DescriptionPrompts, ModelFamily, PixelBudget, ImageLimit, Device, Dtype, Progress):
    """`spr generate`: N sampled grounded descriptions per region and prompt."""

    model: str = opt(required, "local model directory (config.json, model.safetensors, processor)")
    regions: str = opt(required, "regions.jsonl written by `spr regions`")
    out: str = opt(required, "candidates.jsonl to write (ids already there are skipped)")
    samples: int = opt(4, "candidates per region and prompt", min=1)
    temperature: float = opt(1.0, "sampling temperature; 0 decodes greedily (then use --samples 1)", min=0)
    top_p: float = opt(
        0.95,
        "nucleus sampling: keep the smallest set of tokens whose probability reaches this",
        above=0,
        max=1,
    )
    max_new_tokens: int = opt(256, "longest description, in tokens", min=1)
    min_new_tokens: int = opt(
        0, "shortest description, in tokens (benchmarks set it to fix the amount of work)", min=0
    )
    seed: int = opt(0, "sampling seed; each candidate draws from its own stream, seeded by this and its id")
    include_greedy: bool = opt(
        False,
        "also decode the greedy answer per region and prompt (id .../greedy), so the chosen answer of a "
        "pair is never below the model's own greedy quality",
    )
    limit: int | None = opt(
        None, "use only the first N regions of the file (smoke tests)", output=False, min=1
    )
    format: str | None = opt(None, "box format, overriding the family's", default_text="the family's")
    batch_size: int = opt(4, "prompts per generate call, each with --samples sequences", output=False)
    trust_remote_code: bool = opt(False, "allow the model directory's own code", output=False)
    overwrite: bool = opt(False, "discard an existing output instead of resuming it", output=False)

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.temperature <= 0 and self.samples > 1:
            raise ValueError("greedy decoding (temperature 0) gives identical samples: use samples 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


def read_regions(path: str | Path, limit: int | None = None) -> list[Region]:
    try:
        regions = read_records(path, Region)
    except FileNotFoundError:
        raise UserError(f"{path}: no such regions file (make one with `spr regions`)") from None
    except JsonlError as e:
        raise UserError(f"{e}; expected Region records written by `spr regions`") from None
    counts = Counter(r.id for r in regions)
    if len(counts) != len(regions):
        dup = sorted(i for i, n in counts.items() if n > 1)[:5]
        raise UserError(f"{path}: region ids must be unique; repeated: {', '.join(dup)}")
    if not regions:
        raise UserError(f"{path}: no regions (make them with `spr regions`)")
    return regions[:limit] if limit is not None else regions


# what the loaded model tells (and its files, family and options decide): left out where no model is loaded
FROM_THE_MODEL = ("format", "pixel_budget")


def settings(config: GenerateConfig, adapter=None) -> dict:
    """What decides the candidates: the config's output fields with the model's fingerprint instead of its
    path, the prompts' texts and the codec actually used (without ``adapter``: all but FROM_THE_MODEL)."""
    out = output_settings(config)
    for k in ("model", "out"):
        out.pop(k)
    out["regions"] = str(Path(config.regions).resolve())
    templates = select_templates(config.prompts)
    out.update(model=fingerprint(config.model), prompts=[[t.id, t.view, t.template] for t in templates])
    if adapter is not None:
        out.update(format=adapter.fmt, pixel_budget=adapter.pixel_budget())
    return out


def _guard(config: GenerateConfig, adapter=None) -> StageOutput:
    out = Path(config.out)
    return StageOutput(
        out, "generate", settings(config, adapter), config.overwrite, extra=tuple(shards_of(out)),
        inputs={"regions": config.regions},
    )  # fmt: skip


def finished(config: GenerateConfig, regions, templates) -> bool:
    """Whether the output already holds every candidate of this run, made under these settings: then there is
    nothing to do, and the model is not loaded. The settings the model tells are not compared: the model's
    fingerprint, family, format and pixel options, which decide them, are."""
    out = Path(config.out)
    if config.overwrite or not out.is_file() or not out.stat().st_size or shards_of(out):
        return False
    if not _guard(config).holds_these_settings(ignore=FROM_THE_MODEL) or not ends_a_line(out):
        return False  # (a torn last line is for the writer to repair)
    return ids_in([out]) >= set(expected_ids(regions, templates, config))


def run_generate(config: GenerateConfig, progress: bool = True) -> GenerateStats:
    """The whole stage, single- or multi-process. Returns the statistics (summed over processes on rank 0)."""
    from .models import load

    out = Path(config.out)
    templates = select_templates(config.prompts)
    regions = read_regions(config.regions, config.limit)
    if finished(config, regions, templates):
        return GenerateStats(
            regions=len(regions), already_present=len(expected_ids(regions, templates, config))
        )
    rank, world, state = distributed.join(config.device)
    try:
        device = (
            str(state.device)
            if state is not None and config.device == "auto"
            else resolve_device(config.device)
        )
        adapter = load(
            config.model, family=config.family, device=device, dtype=config.dtype,
            trust_remote_code=config.trust_remote_code, fmt=config.format, min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
        )  # fmt: skip
        if adapter.fmt not in formats.available():
            raise UserError(
                f"box format {adapter.fmt!r} of the {adapter.family} family is not available; "
                f"choose one with --format ({', '.join(formats.available())})"
            )
        guard = _guard(config, adapter)
        with contextlib.ExitStack() as held:
            if rank == 0:
                held.enter_context(guard)
            if state is not None:
                state.wait_for_everyone()  # rank 0 has checked the settings (or removed an old output)
            shard = shard_path(out, rank, world)
            if shard != out:
                held.enter_context(OutputLock(lock_path(shard), str(shard)))
            done = ids_in(p for p in (out, *shards_of(out)) if p != shard)  # the writer reads its own
            with JsonlWriter(shard) as writer:
                stats = generate_into(
                    adapter, regions[rank::world], templates, writer, config,
                    done=done, progress=progress and rank == 0 and not config.quiet,
                )  # fmt: skip
            if state is not None:
                from accelerate.utils import gather_object

                all_stats = gather_object([stats])
                state.wait_for_everyone()
                if rank == 0:
                    stats = GenerateStats()
                    for s in all_stats:
                        stats.merge(s)
            if rank == 0 and shards_of(out):  # this run's, or those a killed run of any process count left
                merge_shards(out)
                reorder(out, expected_ids(regions, templates, config))
            elif writer.repaired:  # records of torn lines in the middle were appended: back to their places
                reorder(out, expected_ids(regions, templates, config))
        return stats
    finally:
        distributed.teardown()


# What candidates.summary.json counts: the whole output's candidates and tokens, this run's work.
COUNTS = Counters({
    "regions": Count("regions in the regions file (this run's --limit)", "region"),
    "candidates": Count("candidates the output holds, whichever run wrote them", "candidate"),
    "with_problems": Count("candidates with at least one piece of text the codec could not read", "candidate"),
    "without_boxes": Count("candidates from which no box could be read", "candidate"),
    "new_tokens": Count("tokens the model generated for the candidates the output holds", "token"),
    "written": Count("candidates this run wrote", "candidate"),
    "already_present": Count("candidates an earlier run had written (a resume)", "candidate"),
    "seconds": Count("this run's sampling time", "second"),
})  # fmt: skip


def output_counts(out: Path) -> dict:
    """What the output holds, read one record at a time: a resumed run's summary counts the candidates and
    tokens of the runs before it too (``written``, ``already_present`` and ``seconds`` are this run's)."""
    from .data.jsonl import iter_jsonl

    counts = dict(candidates=0, with_problems=0, without_boxes=0, new_tokens=0)
    for rec in iter_jsonl(out, skip_bad=True) if out.exists() else ():
        counts["candidates"] += 1
        counts["with_problems"] += bool(rec.get("problems"))
        counts["without_boxes"] += not rec.get("groundings")
        counts["new_tokens"] += int(rec.get("new_tokens") or 0)
    return counts


def summary_table(stats: GenerateStats, out: Path) -> str:
    from .table import markdown_table

    n = max(stats.written, 1)
    rows = [
        ["regions", stats.regions],
        ["candidates written", stats.written],
        ["candidates already present", stats.already_present],
        ["candidates with parse problems (>= 1 piece of text the codec could not read)",
         f"{stats.with_problems} ({stats.with_problems / n:.1%})"],
        ["candidates without any box", f"{stats.without_boxes} ({stats.without_boxes / n:.1%})"],
        ["generated tokens (this run)", stats.new_tokens],
        ["tokens/s", round(stats.new_tokens / max(stats.seconds, 1e-9), 1)],
        ["seconds", round(stats.seconds, 1)],
    ]  # fmt: skip
    rows += [[f"regions skipped: {reason}", count] for reason, count in sorted(stats.regions_skipped.items())]
    rows += [[f"prompts skipped: {reason}", count] for reason, count in sorted(stats.prompts_skipped.items())]
    text = markdown_table(["generate", "value"], rows)
    if stats.skip_examples:
        text += "\n" + "\n".join(f"  {e}" for e in stats.skip_examples)
    return text + f"\ncandidates in {out}"


# ---------------------------------------------------------------------------------------------- CLI

HELP = "Sample grounded region descriptions (candidates) from a model, batched and resumable."
Config = GenerateConfig


def run(config: GenerateConfig) -> int:

    stats = run_generate(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary_table(stats, Path(config.out)))
        path = Path(config.out).with_suffix(".summary.json")
        if stats.written or not path.exists():  # a run that wrote nothing keeps the summary of its output
            summary = {k: v for k, v in stats.__dict__.items() if isinstance(v, int | float)}
            summary.update(output_counts(Path(config.out)))  # the whole output's, whichever run wrote it
            COUNTS.write(path, summary)
        if stats.regions and not stats.written and not stats.already_present:
            raise UserError(
                f"no candidate could be made from {config.regions}: every region was skipped (see above)"
            )
    return 0
