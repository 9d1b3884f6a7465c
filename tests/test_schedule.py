"""Specification of lib_ctxrep.schedule: which model calls fall inside the repulsion window."""

from __future__ import annotations

import pytest
import torch

from lib_ctxrep.schedule import is_active, progress_from_schedule, progress_from_sigma


def flow_match_sigmas(steps: int, shift: float) -> list[float]:
    """Like diffusers' FlowMatchEulerDiscreteScheduler: shifted linspace(1, 1/N) and a terminal 0."""
    ts = [1.0 - i / steps for i in range(steps)]
    return [shift * t / (1 + (shift - 1) * t) for t in ts] + [0.0]


def karras_sigmas(steps: int, sigma_min: float = 0.0292, sigma_max: float = 14.6146, rho: float = 7.0) -> list[float]:
    """Like diffusers' Karras schedule for EDM-style samplers: decreasing, with a terminal 0."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)] + [0.0]


SCHEDULES = [
    ("flow-shift1-N4", flow_match_sigmas(4, 1.0)),
    ("flow-shift3-N20", flow_match_sigmas(20, 3.0)),
    ("flow-shift3-N50", flow_match_sigmas(50, 3.0)),
    ("karras-N28", karras_sigmas(28)),
]


def test_first_step_is_always_active():
    for window in (1e-6, 0.01, 0.05, 1.0):
        assert is_active(0.0, window)


@pytest.mark.parametrize(("steps", "expected"), [(4, {0}), (20, {0}), (50, {0, 1, 2}), (100, {0, 1, 2, 3, 4})])
def test_window_0_05_covers_the_first_steps(steps, expected):
    assert {i for i in range(steps) if is_active(i / steps, 0.05)} == expected


def test_full_window_covers_every_step():
    assert all(is_active(i / 30, 1.0) for i in range(30))


@pytest.mark.parametrize(("name", "sigmas"), SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_progress_from_schedule_is_step_over_steps(name, sigmas):
    steps = len(sigmas) - 1
    assert [progress_from_schedule(s, sigmas) for s in sigmas[:-1]] == [i / steps for i in range(steps)]


@pytest.mark.parametrize(("name", "sigmas"), SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_intermediate_sigma_maps_to_the_step_whose_interval_holds_it(name, sigmas):
    steps = len(sigmas) - 1
    for i in range(steps):
        for frac in (0.5, 0.01, 0.99):
            sigma = sigmas[i] + frac * (sigmas[i + 1] - sigmas[i])
            assert progress_from_schedule(sigma, sigmas) == i / steps, (i, frac)


def test_sigma_above_the_schedule_counts_as_step_zero():
    sigmas = flow_match_sigmas(10, 3.0)
    assert progress_from_schedule(1.5, sigmas) == 0.0


def test_sigma_off_by_float32_rounding_still_maps_to_its_step():
    sigmas = flow_match_sigmas(20, 3.0)
    as_f32 = torch.tensor(sigmas, dtype=torch.float32).tolist()
    assert [progress_from_schedule(s, sigmas) for s in as_f32[:-1]] == [i / 20 for i in range(20)]


def test_schedule_without_terminal_zero_counts_every_value_as_a_step():
    sigmas = [1.0, 0.75, 0.5, 0.25]
    assert [progress_from_schedule(s, sigmas) for s in sigmas] == [0.0, 0.25, 0.5, 0.75]


def test_empty_schedule_raises():
    with pytest.raises(ValueError, match="no steps"):
        progress_from_schedule(0.5, [])


@pytest.mark.parametrize("steps", [4, 20, 50])
def test_window_over_a_schedule_with_heun_midpoints(steps):
    sigmas = flow_match_sigmas(steps, 3.0)
    calls = [(i, s) for i in range(steps) for s in (sigmas[i], 0.5 * (sigmas[i] + sigmas[i + 1]))]
    active = {i for i, s in calls if is_active(progress_from_schedule(s, sigmas), 0.05)}
    assert active == {i for i in range(steps) if i / steps < 0.05}


@pytest.mark.parametrize("sigma", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_progress_from_sigma_without_shift_is_one_minus_sigma(sigma):
    assert progress_from_sigma(sigma) == pytest.approx(1.0 - sigma, abs=1e-15)
    assert progress_from_sigma(sigma, 1.0) == pytest.approx(1.0 - sigma, abs=1e-15)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.3, 0.5, 0.77, 1.0])
def test_progress_from_sigma_undoes_the_time_shift(t):
    sigma = 3 * t / (1 + 2 * t)
    assert progress_from_sigma(sigma, 3.0) == pytest.approx(1.0 - t, abs=1e-12)


def test_progress_from_sigma_clamps_out_of_range_sigma():
    assert progress_from_sigma(1.7, 3.0) == pytest.approx(0.0, abs=1e-15)
    assert progress_from_sigma(-0.2, 3.0) == pytest.approx(1.0, abs=1e-15)
