"""The comparison baselines: Particle Guidance's kernel gradient and CADS's condition annealing."""

from __future__ import annotations

import math

import pytest
import torch

from lib_ctxrep.evaluation.baselines import cads_condition, cads_gamma, particle_guidance, rbf_potential_gradient


def reference_pg(x: torch.Tensor) -> torch.Tensor:
    """-d/dx_i sum_{j != i} exp(-||x_i - x_j||^2 / h_i) by autograd (float64), bandwidths held fixed."""
    b = x.shape[0]
    flat = x.reshape(b, -1).double()
    with torch.no_grad():
        d = torch.cdist(flat, flat)
        h = torch.stack([d[i][torch.arange(b) != i].median() ** 2 for i in range(b)]) / max(math.log(b - 1), 1e-2)
    grads = []
    for i in range(b):
        xi = flat[i].clone().requires_grad_(True)
        others = torch.cat([flat[:i], flat[i + 1 :]])
        potential = torch.exp(-((xi - others) ** 2).sum(1) / h[i]).sum()
        (g,) = torch.autograd.grad(potential, xi)
        grads.append(-g)
    return torch.stack(grads).reshape(x.shape)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("b", [2, 3, 8])
def test_pg_gradient_matches_autograd(seed, b):
    x = torch.randn(b, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(rbf_potential_gradient(x), reference_pg(x), rtol=1e-9, atol=1e-12)


def test_pg_pushes_close_samples_apart_and_is_a_no_op_for_one_sample():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    out = particle_guidance(x, 1.0, 0.1)
    assert torch.dist(out[0], out[1]) > torch.dist(x[0], x[1])
    assert torch.equal(particle_guidance(x[:1], 1.0, 1.0), x[:1])
    assert torch.equal(particle_guidance(x, 1.0, 0.0), x)


def test_pg_keeps_float16_and_stays_finite_for_identical_samples():
    x = torch.zeros(4, 8, dtype=torch.float16)
    g = rbf_potential_gradient(x)
    assert g.dtype == torch.float16 and torch.isfinite(g).all()


def test_cads_schedule_is_one_late_zero_early_and_linear_between():
    assert cads_gamma(0.1) == 1.0 and cads_gamma(0.95) == 0.0
    assert cads_gamma(0.75) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tau1"):
        cads_gamma(0.5, 0.9, 0.6)


def test_cads_leaves_late_steps_alone_and_rescales_early_ones_to_the_conditions_statistics():
    y = torch.randn(4, 4, 32, generator=torch.Generator().manual_seed(0)) * 2 + 1
    assert cads_condition(y, 0.3, scale=0.5) is y
    out = cads_condition(y, 1.0, scale=0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(out, y)
    assert out.mean().item() == pytest.approx(y.mean().item(), abs=1e-5)
    assert out.std().item() == pytest.approx(y.std().item(), rel=1e-5)
    mixed = cads_condition(y, 1.0, scale=0.5, psi=0.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mixed, 0.5 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
