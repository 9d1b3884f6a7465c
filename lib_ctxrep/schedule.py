"""The repulsion window, in the host's time variable.

The window is a fraction w of the sampling trajectory counted from pure noise. Hosts report each model call's
``progress`` in [0, 1] (0 = the first step); a call is inside when progress < w. Two ways to get progress:

- from the schedule (exact "first tau steps"): the step whose sigma interval holds the call's sigma, over the
  number of steps: step i of N has progress i / N, so w = 0.05 is 1 step of 20, 3 of 50 and 1 of 4;
- from sigma alone, when no schedule is known: progress = 1 - t, where t is sigma with the flow-matching time shift
  undone (shift 1 = no shift), i.e. the same fraction in the model's unshifted time.

Multi-evaluation samplers (Heun, DPM++ SDE) call the model at intermediate sigmas; they fall into the step whose
interval holds them, so the window stays correct.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Relative tolerance when a call's sigma is placed in the schedule: hosts hand sigma back through float32 (or
#: fp16) timesteps, so it matches its schedule entry only up to that rounding. Also the largest "terminal" sigma.
_SIGMA_TOLERANCE = 1e-6
#: A step whose progress equals the window's edge up to float rounding (3 / 60 against 0.05) is outside the window.
_WINDOW_EDGE_TOLERANCE = 1e-9


def is_active(progress: float, window: float) -> bool:
    """True when a call at ``progress`` lies inside a window of size ``window`` (always true for the first step)."""
    return progress <= 0.0 or progress < window - _WINDOW_EDGE_TOLERANCE


def progress_from_schedule(sigma: float, sigmas: Sequence[float]) -> float:
    """Progress i / N of the step whose interval [sigmas[i], sigmas[i+1]) holds ``sigma``.

    ``sigmas`` is the sampler's decreasing schedule; a trailing terminal value (usually 0) is allowed and is not a
    step. A sigma above the first value counts as step 0.
    """
    values = [float(s) for s in sigmas]
    steps = len(values) - 1 if len(values) > 1 and values[-1] <= _SIGMA_TOLERANCE else len(values)
    if steps <= 0:
        raise ValueError("progress_from_schedule: the schedule has no steps")
    index = 0
    for i in range(steps):
        if values[i] >= sigma - _SIGMA_TOLERANCE * max(1.0, abs(values[i])):
            index = i
        else:
            break
    return index / steps


def progress_from_sigma(sigma: float, shift: float = 1.0) -> float:
    """Progress 1 - t for a flow-matching sigma in [0, 1], with the time shift sigma = s t / (1 + (s - 1) t) undone."""
    sigma = min(max(float(sigma), 0.0), 1.0)
    t = sigma / (shift - (shift - 1.0) * sigma) if shift != 1.0 else sigma
    return 1.0 - t
