"""Paired bootstrap intervals for the difference of two runs' metrics on the same samples.

Every evaluation metric here is a ratio of per-sample sums: accuracy = hits / samples, a split's accuracy =
(hits in the split) / (samples in the split), micro F1 = 2 TP / (predicted + annotated boxes). So a metric is
given by two per-sample arrays (numerator, denominator), and a bootstrap resample by how often each sample is
drawn. Both runs are resampled with the SAME draws (the samples are paired by id), which is what makes the
interval of B - A narrow when the runs agree on most samples.

The interval is the percentile interval of the resampled differences (``resamples`` draws of n samples with
replacement, a fixed seed). Resamples where a denominator is 0 (a split not drawn at all) are left out.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
SEED = 0


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def resample_counts(rng, n: int, b: int) -> np.ndarray:
    """(b, n) matrix: how often each of n samples is drawn in each of b resamples of size n."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def paired_bootstrap(
    num_a,
    den_a,
    num_b,
    den_b,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
    chunk: int = 250,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(delta, lo, hi) of B - A for m metrics given as (n, m) arrays (or (n,) for one metric) of per-sample
    numerators and denominators of the two runs, row i of A and of B being the same sample. ``delta`` is the
    difference on all n samples; [lo, hi] the ``level`` percentile interval; nan where undefined."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b)]
    single = arrays[0].ndim == 1
    arrays = [x.reshape(len(x), -1) for x in arrays]
    n, m = arrays[0].shape
    if any(x.shape != (n, m) for x in arrays):
        raise ValueError("numerators and denominators of both runs must have the same shape")
    x = np.concatenate(arrays, axis=1)
    total = x.sum(axis=0)
    delta = _ratio(total[2 * m : 3 * m], total[3 * m :]) - _ratio(total[:m], total[m : 2 * m])
    if n == 0 or resamples <= 0:
        nan = np.full(m, np.nan)
        return (delta[0], nan[0], nan[0]) if single else (delta, nan, nan)
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, chunk):
        sums = resample_counts(rng, n, min(chunk, resamples - start)) @ x
        diffs.append(
            _ratio(sums[:, 2 * m : 3 * m], sums[:, 3 * m :]) - _ratio(sums[:, :m], sums[:, m : 2 * m])
        )
    d = np.concatenate(diffs)
    tail = (1 - level) / 2 * 100
    lo, hi = np.full(m, np.nan), np.full(m, np.nan)
    ok = np.isfinite(d).any(axis=0)
    if ok.any():
        lo[ok], hi[ok] = np.nanpercentile(d[:, ok], [tail, 100 - tail], axis=0)
    return (delta[0], lo[0], hi[0]) if single else (delta, lo, hi)
