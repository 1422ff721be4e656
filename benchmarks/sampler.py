"""Per decoding step cost of `spr generate`'s sampler (``spr.sampling.RowSampler``) at a real vocabulary, against
the host sampler it replaced, measured in the same run.

    .venv/bin/python benchmarks/sampler.py [--vocab 151936] [--rows 32] [--repeat 5] [--threads 1] [--device cpu]

``host sort (before)`` is the sampler as it was: the tempered probabilities of every row copied to the host and
sorted over the whole vocabulary at every step. ``RowSampler`` keeps everything but one float per row on the
scores' device and looks for the nucleus among each row's 64 / 1,024 / 16,384 most likely tokens before it sorts
the vocabulary. Its cost therefore depends on how spread the model's next-token distribution is, so three kinds of
logits are timed (``nucleus`` gives the median and largest number of tokens in a row's top-p=0.95 nucleus):

- ``peaked``: a few tokens hold most of the mass above a Gaussian floor (logit std 2), as in most steps of a
  grounded description;
- ``spread``: Gaussian logits of std 4 (hundreds to thousands of tokens in the nucleus);
- ``flat``: Gaussian logits of std 1 (most of the vocabulary in the nucleus: the full sort, the worst case).

Both samplers get a fresh copy of the same scores each step, made before the clock starts. Rounds are
interleaved and the best of ``--repeat`` is reported; ``x before`` is the old per-step time over the new. Goal
(issue 28): ``peaked`` at 151,936 tokens and 32 rows at least 20x on CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from spr.sampling import RowSampler
from spr.table import markdown_table

TOP_P, TEMPERATURE = 0.95, 1.0


class HostSampler:
    """The sampler `spr generate` used before issue 28, verbatim: probabilities to the host, one full sort."""

    def __init__(self, seeds, temperature, top_p):
        self.generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        logits = scores.float()
        chosen = logits.argmax(-1).cpu()
        probs = torch.softmax(logits / self.temperature, dim=-1).cpu()
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < self.top_p
        sorted_p = sorted_p * keep
        cumulative = sorted_p.cumsum(-1)
        rows = [row for row, g in enumerate(self.generators) if g is not None]
        if rows:
            draws = [torch.rand((), generator=self.generators[r], dtype=torch.float64).item() for r in rows]
            totals = cumulative[rows, -1].tolist()
            u = torch.tensor([d * t for d, t in zip(draws, totals)], dtype=cumulative.dtype).unsqueeze(-1)
            k = torch.searchsorted(cumulative[rows], u).squeeze(-1).clamp(max=cumulative.shape[-1] - 1)
            chosen[rows] = order[rows, k]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen.to(scores.device).unsqueeze(-1), 0.0)
        return out


def logits_of(kind: str, rows: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "flat":
        return torch.randn(rows, vocab, generator=generator)
    if kind == "spread":
        return torch.randn(rows, vocab, generator=generator) * 4
    logits = torch.randn(rows, vocab, generator=generator) * 2
    # 1 to 8 favourites per row, 18 to 26 nats above the floor (a trained model's margin)
    for row in range(rows):
        favourites = torch.randint(vocab, (1 + row % 8,), generator=generator)
        logits[row, favourites] += 18 + 8 * torch.rand(len(favourites), generator=generator)
    return logits


def nucleus_sizes(logits: torch.Tensor) -> list[int]:
    p = torch.softmax(logits.double() / TEMPERATURE, -1).sort(-1, descending=True).values
    return ((p.cumsum(-1) - p) < TOP_P).sum(-1).tolist()


def step_seconds(sampler, logits: torch.Tensor, steps: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    copies = [logits.clone() for _ in range(steps)]  # generate hands each step's processors a fresh copy
    sync()
    start = time.perf_counter()
    for scores in copies:
        sampler(None, scores)
    sync()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rows", type=int, default=32, help="rows per step (prompts x samples)")
    p.add_argument(
        "--kinds", nargs="+", choices=["peaked", "spread", "flat"], default=["peaked", "spread", "flat"]
    )
    p.add_argument("--steps", type=int, default=2, help="steps per timed round")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seeds = list(range(args.rows))
    table = []
    for kind in args.kinds:
        logits = logits_of(kind, args.rows, args.vocab, torch.Generator().manual_seed(0)).to(device)
        sizes = sorted(nucleus_sizes(logits.cpu()))
        ways = {"host sort (before)": HostSampler, "RowSampler": RowSampler}
        samplers = {way: cls(seeds, TEMPERATURE, TOP_P) for way, cls in ways.items()}
        for sampler in samplers.values():
            sampler(None, logits.clone())  # warm-up
        best = {way: float("inf") for way in ways}
        for _ in range(args.repeat):  # interleaved: load drift hits both alike
            for way, sampler in samplers.items():
                best[way] = min(best[way], step_seconds(sampler, logits, args.steps, device))
        before = best["host sort (before)"]
        for way, seconds in best.items():
            table.append([kind, f"{sizes[len(sizes) // 2]} / {sizes[-1]}", way, f"{1000 * seconds:.1f}",
                          f"{before / seconds:.1f}x"])  # fmt: skip
            print(f"{kind} {way}: {1000 * seconds:.1f} ms per step", file=sys.stderr)
    print(
        f"vocab={args.vocab} rows={args.rows} top_p={TOP_P} temperature={TEMPERATURE} device={device} "
        f"threads={args.threads} best of {args.repeat} interleaved rounds of {args.steps} steps, torch={torch.__version__}"
    )
    print(markdown_table(["logits", "nucleus (median / max)", "sampler", "ms per step", "x before"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
