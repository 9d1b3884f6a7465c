"""95 % confidence intervals for the benchmark's means: of one method's values, and of its paired gain over base.

What it is for: the benchmark's numbers move by a few percent between seed sets, so every mean it reports comes with
an interval, and a gain over base is judged on the same seeds (paired), which removes most of the seed-to-seed noise.
The intervals are Student-t intervals over independent units (the benchmark's units are batches: each batch has its
own seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (beyond 30: a series in 1/df)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its 95 % interval (low = high = mean for fewer than 2 values;
    all NaN for none). NaN values are left out."""
    xs = [float(v) for v in values if v == v]
    if not xs:
        nan = float("nan")
        return nan, nan, nan
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, mean, mean
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    half = t975(len(xs) - 1) * math.sqrt(var / len(xs))
    return mean, mean - half, mean + half


def paired_interval(values: Sequence[float], base: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the differences ``values[i] - base[i]`` (the same units, e.g. the same seeds)."""
    if len(values) != len(base):
        raise ValueError(f"paired values need equal lengths, got {len(values)} and {len(base)}")
    return interval([a - b for a, b in zip(values, base, strict=True) if a == a and b == b])
