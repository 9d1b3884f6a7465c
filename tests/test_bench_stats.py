"""The benchmark's 95 % intervals (``evaluation.stats``) against a plain float64 reference and published t values."""

from __future__ import annotations

import math

import pytest
import torch

from lib_ctxrep.evaluation.stats import interval, paired_interval, t975

PUBLISHED_T975 = {1: 12.706, 2: 4.303, 10: 2.228, 30: 2.042, 31: 2.040, 40: 2.021, 60: 2.000, 120: 1.980, 10**6: 1.960}


@pytest.mark.parametrize("df", sorted(PUBLISHED_T975))
def test_t_quantiles_match_the_published_tables(df):
    assert t975(df) == pytest.approx(PUBLISHED_T975[df], abs=1.5e-3)


def test_an_interval_is_the_mean_plus_minus_t_times_the_standard_error():
    g = torch.Generator().manual_seed(7)
    for n in (2, 3, 17, 96):
        xs = torch.rand(n, generator=g, dtype=torch.float64)
        mean, low, high = interval(xs.tolist())
        half = t975(n - 1) * float(xs.std(unbiased=True)) / math.sqrt(n)
        assert mean == pytest.approx(float(xs.mean()), abs=1e-15)
        assert (low, high) == pytest.approx((float(xs.mean()) - half, float(xs.mean()) + half), abs=1e-14)


def test_degenerate_inputs_give_a_point_or_nan_and_nan_values_are_left_out():
    assert interval([0.25]) == (0.25, 0.25, 0.25)
    assert interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert all(v != v for v in interval([]))
    assert interval([1.0, float("nan"), 3.0]) == interval([1.0, 3.0])


def test_a_paired_interval_is_the_interval_of_the_differences_and_needs_equal_lengths():
    a, b = [0.3, 0.5, 0.4, 0.6], [0.2, 0.45, 0.41, 0.5]
    assert paired_interval(a, b) == interval([x - y for x, y in zip(a, b, strict=True)])
    # a constant shift on noisy units: the paired interval is a point, the unpaired ones are wide
    noisy = [0.1, 0.9, 0.3, 0.7]
    shifted = [x + 0.05 for x in noisy]
    mean, low, high = paired_interval(shifted, noisy)
    assert mean == pytest.approx(0.05) and high - low < 1e-12
    with pytest.raises(ValueError, match="equal lengths"):
        paired_interval([1.0], [1.0, 2.0])
