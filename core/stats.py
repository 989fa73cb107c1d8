"""Interval estimates shared by the evaluation and the diagnostics (95% by default)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def half_width(values: npt.ArrayLike, z: float = Z95) -> float:
    """Half-width of the normal-approximation interval of a mean (0 when n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    return float(z * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def mean_interval(values: npt.ArrayLike, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation 95% interval of a mean (the mean twice when n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        m = float(x.mean()) if len(x) else float("nan")
        return m, m
    half = half_width(x, z)
    return float(x.mean() - half), float(x.mean() + half)
