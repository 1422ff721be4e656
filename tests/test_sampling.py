"""RowSampler: each row's token is the one a full sort of that row's probabilities gives (the oracle below), at
a toy vocabulary and at Qwen's 151,936 tokens, whatever the other rows of the batch are."""

from __future__ import annotations

import pytest
import torch

from spr.sampling import RowSampler


class OneRowAtATime:
    """The sampler's rule written out row by row over a full sort of the vocabulary: the oracle. Tokens by
    probability, ties by lower id; the nucleus is the prefix whose sum before each token is below top_p; the
    draw u takes the first token whose running sum reaches u times the nucleus's."""

    def __init__(self, seeds, temperature, top_p):
        self.generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def choose(self, scores):
        chosen = scores.float().argmax(-1)
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        for row, g in enumerate(self.generators):
            if g is None:
                continue
            p, order = probs[row].sort(descending=True, stable=True)
            cumulative = p.cumsum(-1)
            before = torch.cat([cumulative.new_zeros(1), cumulative[:-1]])
            nucleus = int((before < self.top_p).sum())
            total = float(cumulative[nucleus - 1])
            u = torch.rand((), generator=g, dtype=torch.float64).item() * total
            k = int(torch.searchsorted(cumulative[:nucleus], torch.tensor([u], dtype=cumulative.dtype)))
            chosen[row] = order[min(k, nucleus - 1)]
        return chosen


def check_against_oracle(seeds, steps, make_scores, temperature=0.8, top_p=0.9):
    sampler, oracle = RowSampler(seeds, temperature, top_p), OneRowAtATime(seeds, temperature, top_p)
    for step in range(steps):
        scores = make_scores(step)
        expected = oracle.choose(scores)
        given = scores.clone()
        out = sampler(None, given)
        assert torch.equal(given, scores)  # left as they are: generate keeps them (output_logits)
        assert ((out == 0).sum(-1) == 1).all()  # one token left possible per row, the others -inf
        assert torch.isinf(out).sum() == out.numel() - len(seeds)
        assert out.argmax(-1).tolist() == expected.tolist(), f"step {step}"


def test_row_sampler_takes_each_rows_own_draw():
    torch.manual_seed(0)

    def scores(step):
        s = torch.randn(6, 50) * 3
        if step % 5 == 2:
            s[:, :4] = 6.0  # ties at the top
        if step % 5 == 3:
            s[:, 10:40] = 1.0  # ties inside the nucleus and past it
        return s

    check_against_oracle([None, 3, 11, 2**40, None, 5], 20, scores)


QWEN_VOCAB = 151936


def real_vocabulary_scores(step: int) -> torch.Tensor:
    """Rows as spread as a model's next-token distributions get: confident, a few thousand tokens in the
    nucleus, nearly flat (the whole-vocabulary path), and ties at the top."""
    g = torch.Generator().manual_seed(step)
    s = torch.randn(5, QWEN_VOCAB, generator=g) * 2
    s[0, torch.randint(QWEN_VOCAB, (3,), generator=g)] += 22
    s[1] *= 2
    s[2] /= 2
    s[3, :6] = 40.0
    s[4, 1000:1100] = 20.0
    return s


def test_row_sampler_at_a_real_vocabulary_equals_a_full_sort():
    check_against_oracle([1, 2, 3, 4, None], 3, real_vocabulary_scores, temperature=1.0, top_p=0.95)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_rows_token_does_not_depend_on_the_other_rows(temperature):
    """What a resumed or sharded run relies on: a row sampled alone or beside others draws the same tokens."""
    seeds = [101, 202, 303, 404, 505]
    together = RowSampler(seeds, temperature, 0.95)
    alone = [RowSampler([s], temperature, 0.95) for s in seeds]
    for step in range(3):
        scores = real_vocabulary_scores(step)
        batch = together(None, scores.clone()).argmax(-1).tolist()
        assert batch == [
            alone[r](None, scores[r : r + 1].clone()).argmax(-1).item() for r in range(len(seeds))
        ]


def test_streams_differ_and_repeat():
    scores = torch.zeros(4, 1000)  # uniform: every token in the nucleus
    first = RowSampler([1, 2, 1, None], 1.0, 0.95)(None, scores.clone()).argmax(-1).tolist()
    assert first[0] == first[2] != first[1]
    assert first[3] == 0  # greedy: the lowest id among the ties
