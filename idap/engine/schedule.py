"""Stage-1 pruning schedules (docs/method.md §2): plain functions of the step index."""

from __future__ import annotations


def cumulative_target(k: int, steps: int, reduction: float, share: float, alpha: float) -> float:
    """Cumulative MAC reduction R_k = share · R · (1 − (1 − k/K)^α) after step k (front-loaded)."""
    if not 0 <= k <= steps:
        raise ValueError(f"step {k} outside 0..{steps}")
    return share * reduction * (1.0 - (1.0 - k / steps) ** alpha)


def code_fraction(k: int, steps: int, p0: float, alpha: float) -> float:
    """Fraction of the *remaining* units removed at step k by the authors' script: p0·(1+k/K)^α."""
    return p0 * (1.0 + k / steps) ** alpha
