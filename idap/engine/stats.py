"""Paired statistics for comparisons: methods share each seed's split, dense model and data
stream, so their differences are paired, per seed and per image.

- :func:`paired_interval`: mean paired difference over seeds with a two-sided 95% Student-t
  interval (n - 1 degrees of freedom).
- :func:`mcnemar_exact`: exact two-sided McNemar test on the same images (the discordant
  pairs b, c follow Binomial(b + c, 1/2) under "no difference").
- :func:`paired_bootstrap_bounds`: one-sided bounds of a paired accuracy drop on the same
  images, for truncation acceptance.
"""

from __future__ import annotations

import math

import numpy as np

# scipy.stats is imported where it is used: it costs ~0.9 s per process, and the evaluate and
# truncation jobs, which import this module for pack_bits and the bootstrap, never need it.


def paired_interval(diffs, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences over seeds; NaN bounds with fewer than 2."""
    d = np.asarray(list(diffs), dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return mean, mean - half, mean + half


def discordant(a, b) -> tuple[int, int]:
    """(b, c): images right under ``a`` only, and right under ``b`` only."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions differ in length: {a.shape} vs {b.shape}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    from scipy import stats

    return float(min(1.0, 2 * stats.binom.cdf(min(b, c), n, 0.5)))


def paired_bootstrap_bounds(
    before, after, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """One-sided ``level`` (lower, upper) bounds, in pp, of the accuracy drop ``before -
    after`` measured on the same images, by a paired bootstrap over images.

    Each image contributes -1, 0 or +1 to the drop, so a resample is a multinomial draw of
    those three counts: exact for the bootstrap and cheap for 5,000 images.
    """
    a = np.asarray(before, dtype=bool)
    b = np.asarray(after, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions differ in length: {a.shape} vs {b.shape}")
    n = a.size
    if n == 0:
        return math.nan, math.nan
    lost, gained = int(np.sum(a & ~b)), int(np.sum(~a & b))
    probs = np.array([lost, gained, n - lost - gained], dtype=np.float64) / n
    draws = np.random.default_rng(seed).multinomial(n, probs, size=resamples)
    drops = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    return float(np.quantile(drops, 1 - level)), float(np.quantile(drops, level))


def pack_bits(correct) -> str:
    """Per-image correctness as a hex string (1 bit per image), for metrics files."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return bits.tobytes().hex()


def unpack_bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)
