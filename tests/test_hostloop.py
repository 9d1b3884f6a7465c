"""The compiled inner loop (lib_ctxrep.hostloop, numba) computes what the numpy loop computes, on fresh random and
degenerate groups; skipped where numba is not installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from lib_ctxrep import hostloop, repulsion  # noqa: E402
from lib_ctxrep.repulsion import coefficient_flow, host_loop, repel_angular  # noqa: E402
from lib_ctxrep.vendi import NULL_EIG  # noqa: E402


def grams(count: int, rows: int, seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 1, 300)) + spread * rng.standard_normal((count, rows, 300))
    return x @ x.transpose(0, 2, 1)


def both(gram: np.ndarray, b: int, iterations: int, step: float, raw: bool):
    r = gram.shape[-1]
    compiled = hostloop.flow(gram, b, iterations, step, raw, NULL_EIG * r, 1.0 - math.log(r))
    numpy = repulsion._flow(gram, b, iterations, step, raw_eta=raw)
    return compiled, numpy


@pytest.mark.parametrize(("b", "memory"), [(2, 0), (4, 0), (4, 3), (9, 0), (16, 16)])
@pytest.mark.parametrize("raw", [False, True], ids=["strength", "eta"])
def test_compiled_loop_matches_numpy_loop(b, memory, raw):
    gram = grams(3, b + memory, seed=b + memory, spread=0.2)
    step = 300.0 / 20 if raw else 0.3 / 20
    (coef, kernel), (want_coef, want_kernel) = both(gram, b, 20, step, raw)
    np.testing.assert_allclose(coef, want_coef, rtol=0, atol=1e-12)
    np.testing.assert_allclose(kernel, want_kernel, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spread", [0.0, 1e-7, 1e-3], ids=["identical", "null-directions", "cos-0.999999"])
def test_compiled_loop_matches_numpy_loop_on_degenerate_groups(spread):
    gram = grams(2, 4, seed=7, spread=spread)
    (coef, _), (want, _) = both(gram, 4, 10, 0.05, False)
    rows = np.random.default_rng(7).standard_normal((4, 30))
    # identical rows admit many coefficient matrices for one result: compare the rows they make
    np.testing.assert_allclose(coef @ rows, want @ rows, rtol=1e-8, atol=1e-9)  # log of eigenvalues ~1e-6: 1e-10 rel.


def test_the_compiled_loop_is_used_where_numba_is_installed_unless_numpy_is_asked_for(monkeypatch):
    assert host_loop() == "numba"
    monkeypatch.setenv("CTXREP_HOST_LOOP", "numpy")
    assert host_loop() == "numpy"


def test_repulsion_is_the_same_with_either_loop(monkeypatch):
    x = torch.randn(4, 6, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2.0
    compiled = repel_angular(x, 0.4, 30)
    monkeypatch.setenv("CTXREP_HOST_LOOP", "numpy")
    torch.testing.assert_close(repel_angular(x, 0.4, 30), compiled, rtol=0, atol=1e-12)
    assert coefficient_flow(grams(1, 4, 1, 0.1)[0], 4, 5, strength=0.1).finite
