"""Specification of lib_ctxrep.vendi: the cosine-kernel Vendi score and the entropy gradient the repulsion uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lib_ctxrep.vendi import cosine_kernel, entropy_and_gradient, log_vendi_score, vendi_score


def numpy_vendi(x: np.ndarray) -> float:
    """Independent reference: exp of the von Neumann entropy of K / B, K the cosine kernel of the flattened rows."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(unit @ unit.T / flat.shape[0])
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def random_kernel(r: int, p: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, p, generator=gen, dtype=torch.float64)
    return cosine_kernel(base + 0.7 * torch.randn(r, p, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("b", [2, 3, 8])
def test_identical_rows_have_vendi_one(b):
    gen = torch.Generator().manual_seed(b)
    x = torch.randn(1, 5, 7, generator=gen).expand(b, 5, 7)
    assert vendi_score(x).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("b", [1, 2, 5, 16])
def test_orthogonal_rows_have_vendi_b(b):
    assert vendi_score(torch.eye(b)).item() == pytest.approx(b, rel=1e-12)


def test_single_sample_has_vendi_one():
    gen = torch.Generator().manual_seed(1)
    assert vendi_score(torch.randn(1, 4, 9, generator=gen)).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("shape", "seed"), [((2, 6), 0), ((5, 3, 4), 1), ((8, 2, 3, 2), 2), ((16, 3), 3)])
def test_vendi_matches_independent_numpy_reference(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, *shape[1:], generator=gen)
    x = base + 0.8 * torch.randn(*shape, generator=gen)
    got = vendi_score(x)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(numpy_vendi(x.numpy()), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_vendi_accepts_any_float_dtype_and_computes_in_float64(dtype):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 5, generator=gen).to(dtype)
    assert vendi_score(x).item() == pytest.approx(numpy_vendi(x.to(torch.float64).numpy()), rel=1e-10)


def test_vendi_lies_between_one_and_b():
    gen = torch.Generator().manual_seed(5)
    for b in (2, 4, 9):
        score = vendi_score(torch.randn(b, 6, generator=gen)).item()
        assert 1.0 <= score <= b


def test_vendi_is_invariant_to_row_scaling_and_permutation():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    scales = torch.tensor([0.1, 2.0, 7.0, 1.0, 0.5], dtype=torch.float64).reshape(-1, 1, 1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert vendi_score(x * scales).item() == pytest.approx(vendi_score(x).item(), rel=1e-12)
    assert vendi_score(x[perm]).item() == pytest.approx(vendi_score(x).item(), rel=1e-12)


def test_log_vendi_is_log_of_vendi():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 10, generator=gen)
    assert log_vendi_score(x).item() == pytest.approx(math.log(vendi_score(x).item()), rel=1e-12)


def test_vendi_is_differentiable():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(log_vendi_score(x), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_zero_row_counts_as_its_own_direction():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.isfinite(vendi_score(x))
    assert vendi_score(x).item() == pytest.approx(2.0, rel=1e-12)


def test_empty_batch_raises():
    with pytest.raises(ValueError, match="batch dimension"):
        vendi_score(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="batch dimension"):
        vendi_score(torch.tensor(1.0))


def test_cosine_kernel_has_exact_unit_diagonal():
    gen = torch.Generator().manual_seed(9)
    kernel = cosine_kernel(torch.randn(5, 2, 3, generator=gen) * 1e3)
    assert kernel.dtype == torch.float64
    assert torch.equal(torch.diagonal(kernel), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(kernel, kernel.T, rtol=0, atol=1e-15)


# --- entropy_and_gradient --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("r", "seed"), [(2, 0), (4, 1), (7, 2)])
def test_entropy_equals_log_vendi_of_the_kernel(r, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(r, 12, generator=gen, dtype=torch.float64)
    entropy, _ = entropy_and_gradient(cosine_kernel(x).numpy())
    assert entropy == pytest.approx(log_vendi_score(x).item(), rel=1e-12)


@pytest.mark.parametrize(("r", "seed"), [(2, 0), (4, 1), (7, 2)])
def test_symmetric_gradient_matches_autograd_of_off_diagonal_perturbation(r, seed):
    kernel = random_kernel(r, 12, seed)
    _, grad = entropy_and_gradient(kernel.numpy())
    grad = torch.from_numpy(grad)
    # K(S) = K + S + S^T: dH/dS_ij = G_ij + G_ji for the off-diagonal entry pair (i, j).
    s = torch.zeros(r, r, dtype=torch.float64, requires_grad=True)
    lam = torch.linalg.eigvalsh((kernel + s + s.T) / r)
    entropy = -(lam * lam.log()).sum()
    (expected,) = torch.autograd.grad(entropy, s)
    upper = torch.triu(torch.ones(r, r, dtype=torch.bool), diagonal=1)
    torch.testing.assert_close((grad + grad.T)[upper], expected[upper], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("r", "seed"), [(3, 3), (6, 4)])
def test_symmetric_gradient_matches_central_finite_differences(r, seed):
    kernel = random_kernel(r, 12, seed).numpy()
    _, grad = entropy_and_gradient(kernel)
    h = 1e-6
    for i in range(r):
        for j in range(i + 1, r):
            bump = np.zeros((r, r))
            bump[i, j] = bump[j, i] = h
            plus, _ = entropy_and_gradient(kernel + bump)
            minus, _ = entropy_and_gradient(kernel - bump)
            assert grad[i, j] + grad[j, i] == pytest.approx((plus - minus) / (2 * h), rel=1e-6, abs=1e-9)


def test_gradient_is_symmetric_and_finite_on_a_degenerate_kernel():
    entropy, grad = entropy_and_gradient(np.ones((4, 4)))
    assert entropy == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, grad.T, rtol=0, atol=1e-12)


def test_identity_kernel_has_entropy_log_r():
    entropy, grad = entropy_and_gradient(np.eye(5))
    assert entropy == pytest.approx(math.log(5), rel=1e-14)
    # log(K/R) = -log(R) I: the gradient -(log(K/R) + I)/R is diagonal.
    np.testing.assert_allclose(grad, np.eye(5) * (math.log(5) - 1) / 5, rtol=1e-12, atol=1e-15)


def test_vendi_score_of_something_other_than_a_tensor_says_how_to_make_one():
    with pytest.raises(TypeError, match=r"torch.Tensor \[B, \.\.\.\], got list; .*torch.stack"):
        vendi_score([torch.ones(3), torch.zeros(3)])


@pytest.mark.parametrize("value", [0.0, 1.5], ids=["zero", "nonzero"])
def test_identical_rows_have_a_vendi_score_of_one_zero_rows_included(value):
    assert vendi_score(torch.full((4, 3, 2), value)).item() == pytest.approx(1.0, abs=1e-12)


def test_zero_rows_are_unlike_every_other_row():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert vendi_score(x).item() == pytest.approx(2.0, rel=1e-12)  # two distinct samples: zero, and (1, 0)
