"""Specification of lib_ctxrep.repulsion: the paper's Eq. 2 computed in coefficient space."""

from __future__ import annotations

import math

import pytest
import torch

from lib_ctxrep import repulsion
from lib_ctxrep.repulsion import eta_for_strength, repel, repel_angular, repel_parts
from lib_ctxrep.vendi import vendi_score

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# (B, N, D): N*D > B and N*D < B (rank-deficient kernels), B from 2 to 16.
SHAPES = [(2, 3, 5), (3, 1, 2), (5, 4, 8), (8, 2, 3), (12, 2, 2), (16, 5, 7), (16, 1, 3)]


@pytest.fixture(autouse=True)
def _single_thread():
    """The reference runs hundreds of tiny matmuls; intra-op threads only add start-up latency to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_flow(
    x: torch.Tensor,
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    memory: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain autograd Euler ascent of H = -sum(lam log lam), lam = eig(K / R), on the first B rows (float64).

    ``strength``: per-sample eta_i = strength * ||c_i||^2, recomputed every iteration.
    ``memory``: fixed extra rows that join the kernel (R = B + Mm) but are never updated.
    """
    c = x.detach().to(torch.float64).clone()
    b = c.shape[0]
    fixed = None if memory is None else memory.detach().to(torch.float64).reshape(memory.shape[0], -1)
    for _ in range(iterations):
        c.requires_grad_(True)
        f = c.reshape(b, -1)
        if fixed is not None:
            f = torch.cat([f, fixed])
        u = f / f.norm(dim=1, keepdim=True)
        kernel = u @ u.T
        lam = torch.linalg.eigvalsh(kernel / f.shape[0]).clamp_min(1e-12)
        entropy = -(lam * lam.log()).sum()
        (grad,) = torch.autograd.grad(entropy, c)
        with torch.no_grad():
            if strength is None:
                step = eta / iterations
            else:
                norms_sq = c.reshape(b, -1).pow(2).sum(dim=1)
                step = (strength / iterations) * norms_sq.reshape(b, *[1] * (c.ndim - 1))
            c = (c + step * grad).detach()
    return c


def clustered(shape, seed: int, spread: float = 0.5, dtype=torch.float64) -> torch.Tensor:
    """Samples scattered around a common random vector: correlated, like samples of one prompt."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, *shape[1:], generator=gen, dtype=torch.float64)
    x = base + spread * torch.randn(*shape, generator=gen, dtype=torch.float64)
    return x.to(dtype)


def mean_norm_sq(x: torch.Tensor) -> float:
    return x.reshape(x.shape[0], -1).to(torch.float64).pow(2).sum(dim=1).mean().item()


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, rtol: float = 1e-6) -> None:
    displacement = (ref - x).norm().item()
    assert displacement > 0
    assert (out - ref).norm().item() <= rtol * displacement
    assert (out - ref).abs().max().item() <= rtol * ref.norm().item()


def row_cosines(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    unit = flat / flat.norm(dim=1, keepdim=True)
    return unit @ unit.T


# --- agreement with the autograd reference (float64) -----------------------------------------------------------------


@pytest.mark.parametrize("iterations", [1, 7, 50])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_repel_matches_autograd_reference_float64(shape, iterations):
    x = clustered(shape, seed=sum(shape) + iterations)
    eta = 0.3 * mean_norm_sq(x)
    out = repel(x, eta, iterations)
    assert_matches_reference(out, reference_flow(x, iterations, eta=eta), x)


@pytest.mark.parametrize("iterations", [1, 7, 50])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_repel_angular_matches_autograd_reference_with_per_sample_eta(shape, iterations):
    x = clustered(shape, seed=100 + sum(shape) + iterations)
    # Unequal norms, so a shared eta would not do: eta_i must follow ||c_i||^2.
    x = x * torch.linspace(0.5, 3.0, shape[0], dtype=torch.float64).reshape(-1, 1, 1)
    out = repel_angular(x, 0.3, iterations)
    assert_matches_reference(out, reference_flow(x, iterations, strength=0.3), x)


def test_repel_matches_reference_on_uncorrelated_samples():
    x = clustered((6, 4, 16), seed=7, spread=10.0)
    eta = 0.5 * mean_norm_sq(x)
    assert_matches_reference(repel(x, eta, 10), reference_flow(x, 10, eta=eta), x)


def test_repel_matches_reference_at_cosine_similarity_0_9999():
    b, p, a = 5, 12, 0.9999
    eye = torch.eye(p, dtype=torch.float64)
    x = (math.sqrt(a) * eye[0] + math.sqrt(1 - a) * eye[1 : b + 1]) * 3.0
    assert torch.allclose(row_cosines(x)[~torch.eye(b, dtype=torch.bool)], torch.full((b * b - b,), a, dtype=x.dtype))
    eta = 1e-3 * mean_norm_sq(x)
    assert_matches_reference(repel(x[:, None], eta, 20)[:, 0], reference_flow(x, 20, eta=eta), x)


def test_eta_for_strength_is_strength_times_squared_norm_per_sample():
    x = clustered((4, 3, 5), seed=3, dtype=torch.float32)
    expected = 0.25 * x.to(torch.float64).reshape(4, -1).pow(2).sum(dim=1)
    got = eta_for_strength(x, 0.25)
    assert got.dtype == torch.float64 and got.shape == (4,)
    torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)


def test_one_angular_step_equals_raw_step_with_eta_for_strength_when_norms_are_equal():
    x = clustered((5, 2, 6), seed=4)
    x = x / x.reshape(5, -1).norm(dim=1).reshape(-1, 1, 1) * 2.5
    eta = eta_for_strength(x, 0.2)
    torch.testing.assert_close(repel_angular(x, 0.2, 1), repel(x, eta[0].item(), 1), rtol=1e-12, atol=1e-12)


# --- cross-batch memory rows in the kernel ---------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "mm", "iterations"), [(1, 1, 5), (1, 4, 20), (3, 2, 1), (4, 5, 30)])
def test_memory_rows_push_current_rows_but_stay_fixed(b, mm, iterations):
    both = clustered((b + mm, 3, 4), seed=10 * b + mm)
    x, mem = both[:b], both[b:]
    eta = 0.3 * mean_norm_sq(both)
    (out,), result = repel_parts([x], iterations, eta=eta, memory=[mem])
    assert result.finite
    assert result.coefficients.shape == (b, b + mm)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_matches_reference(out, reference_flow(x, iterations, eta=eta, memory=mem), x)


def test_memory_rows_with_angular_strength_match_reference():
    both = clustered((5, 2, 5), seed=11)
    x, mem = both[:2], both[2:]
    (out,), _ = repel_parts([x], 15, strength=0.2, memory=[mem])
    assert_matches_reference(out, reference_flow(x, 15, strength=0.2, memory=mem), x)


def test_parts_are_repelled_as_one_concatenated_feature_vector():
    x = clustered((4, 3, 8), seed=12)
    eta = 0.3 * mean_norm_sq(x)
    (whole,), _ = repel_parts([x.reshape(4, -1)], 10, eta=eta)
    (a, b), _ = repel_parts([x[:, :1], x[:, 1:]], 10, eta=eta)
    torch.testing.assert_close(torch.cat([a, b], dim=1).reshape(4, -1), whole, rtol=1e-13, atol=1e-13)


def test_repel_parts_requires_exactly_one_of_eta_and_strength():
    x = clustered((3, 2, 2), seed=13)
    with pytest.raises(ValueError, match="exactly one"):
        repel_parts([x], 2, eta=1.0, strength=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        repel_parts([x], 2)


# --- degenerate inputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [repel, repel_angular])
def test_single_sample_is_returned_as_is(fn):
    x = clustered((1, 4, 6), seed=20)
    assert fn(x, 0.5, 10) is x


def test_zero_eta_and_zero_strength_are_no_ops():
    x = clustered((4, 4, 6), seed=21)
    assert repel(x, 0.0, 10) is x
    assert repel_angular(x, 0.0, 10) is x


def identical_rows(b: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(22)
    return torch.randn(1, 4, 8, generator=gen, dtype=torch.float64).expand(b, 4, 8).clone().to(dtype)


@pytest.mark.parametrize("fn", [repel, repel_angular])
@pytest.mark.parametrize("b", [2, 5, 16])
def test_identical_samples_feel_no_force(fn, b):
    x = identical_rows(b)
    strength = 0.05 if fn is repel_angular else 0.05 * mean_norm_sq(x)
    out = fn(x, strength, 50)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "strength", "atol"), [(torch.float64, 0.5, 1e-12), (torch.float32, 1.0, 1e-5)], ids=["f64", "f32"]
)
def test_identical_samples_feel_no_force_at_large_strength(dtype, strength, atol):
    x = identical_rows(2, dtype)
    out = repel_angular(x, strength, 50)
    torch.testing.assert_close(out, x, rtol=0, atol=atol * x.abs().max().item())


@pytest.mark.parametrize("fn", [repel, repel_angular])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_differing_by_1e_6_noise_stay_finite(fn, dtype):
    gen = torch.Generator().manual_seed(23)
    base = torch.randn(1, 4, 8, generator=gen, dtype=torch.float64)
    x = (base + 1e-6 * torch.randn(6, 4, 8, generator=gen, dtype=torch.float64)).to(dtype)
    strength = 0.05 if fn is repel_angular else 0.05 * mean_norm_sq(x)
    out = fn(x, strength, 50)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.isfinite(out).all()


def test_zero_row_leaves_the_group_unchanged():
    x = clustered((4, 3, 5), seed=24)
    x[2] = 0.0
    out = repel(x, 0.3 * mean_norm_sq(x), 10)
    assert torch.isfinite(out).all()
    assert torch.equal(out, x)


def test_all_zero_rows_stay_zero():
    x = torch.zeros(3, 2, 4)
    out = repel_angular(x, 0.5, 10)
    assert torch.equal(out, x)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("fn", [repel, repel_angular])
def test_non_finite_input_is_returned_unchanged(fn, dtype, bad):
    x = clustered((4, 3, 5), seed=25, dtype=dtype)
    x[1, 2, 3] = bad
    before = x.clone()
    out = fn(x, 0.5, 10)
    torch.testing.assert_close(out, before, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("eta", [1e6, 1e12, 1e100])
@pytest.mark.parametrize("iterations", [1, 50])
def test_large_eta_gives_finite_output_float64(eta, iterations):
    x = clustered((4, 8, 16), seed=26)
    out = repel(x, eta, iterations)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("fn", "size"), [(repel, 1e200), (repel_angular, 1e10)], ids=["repel", "repel_angular"])
def test_huge_step_gives_finite_output_or_input_unchanged(fn, size):
    x = clustered((4, 8, 16), seed=26)
    out = fn(x, size, 50)
    assert torch.isfinite(out).all() or out is x


@pytest.mark.parametrize("fn", [repel, repel_angular])
def test_invalid_arguments_raise_value_error(fn):
    x = clustered((3, 2, 2), seed=27)
    with pytest.raises(ValueError, match="iterations"):
        fn(x, 0.1, 0)
    with pytest.raises(ValueError, match="floating-point"):
        fn(torch.ones(3, 2, dtype=torch.int64), 0.1, 1)
    with pytest.raises(ValueError, match=r"\[B, N, D\].*got shape \(3,\)"):
        fn(torch.ones(3, dtype=torch.float32), 0.1, 1)
    with pytest.raises(ValueError, match=r"token axis.*features\[:, None\]"):
        fn(torch.ones(3, 4, dtype=torch.float32), 0.1, 1)
    with pytest.raises(ValueError):
        fn(x, math.nan, 1)


def test_a_negative_eta_is_refused_because_it_would_pull_samples_together():
    with pytest.raises(ValueError, match=r"eta must be a finite number >= 0 .*pulls samples together.*-1\.0"):
        repel(clustered((3, 2, 2), seed=29), -1.0, 8)


def test_negative_strength_is_rejected():
    with pytest.raises(ValueError, match="strength"):
        repel_angular(clustered((3, 2, 2), seed=28), -0.1, 1)


# --- dtypes and determinism ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fn", [repel, repel_angular])
def test_dtype_and_shape_round_trip(fn, dtype):
    x = clustered((4, 6, 10), seed=30, dtype=dtype)
    size = 0.2 if fn is repel_angular else 0.2 * mean_norm_sq(x)
    out = fn(x, size, 20)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fn", [repel, repel_angular])
def test_low_precision_result_is_the_float64_result_rounded(fn, dtype):
    x = clustered((4, 6, 10), seed=31, dtype=dtype)
    size = 0.2 if fn is repel_angular else 0.2 * mean_norm_sq(x)
    out = fn(x, size, 20)
    ref = fn(x.to(torch.float64), size, 20)
    eps = torch.finfo(dtype).eps
    # Two units in the last place of ``dtype``: the output's own rounding, plus the update's coefficients entering
    # the fused combination in ``dtype`` (a relative eps of the update, which is smaller than the output); plus the
    # float32 arithmetic of the Gram matrix.
    atol = 8 * torch.finfo(torch.float32).eps * ref.abs().max().item()
    torch.testing.assert_close(out.to(torch.float64), ref.to(dtype).to(torch.float64), rtol=2 * eps, atol=atol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_repel_is_deterministic(dtype):
    x = clustered((5, 4, 9), seed=32, dtype=dtype)
    first = repel_angular(x, 0.3, 25)
    second = repel_angular(x.clone(), 0.3, 25)
    assert torch.equal(first, second)


# --- geometry and cost -----------------------------------------------------------------------------------------------


def test_single_step_is_orthogonal_to_each_sample():
    x = clustered((6, 3, 7), seed=40)
    out = repel(x, 0.3 * mean_norm_sq(x), 1)
    flat, moved = x.reshape(6, -1), (out - x).reshape(6, -1)
    cos = (flat * moved).sum(dim=1) / (flat.norm(dim=1) * moved.norm(dim=1))
    assert cos.abs().max().item() < 1e-12


@pytest.mark.parametrize("fn", [repel, repel_angular])
def test_small_steps_preserve_norms_to_first_order(fn):
    x = clustered((6, 3, 7), seed=41, spread=0.3)
    size = 1e-3 if fn is repel_angular else 1e-3 * mean_norm_sq(x)
    out = fn(x, size, 10)
    norms = x.reshape(6, -1).norm(dim=1)
    displacement = (out - x).reshape(6, -1).norm(dim=1) / norms
    norm_change = (out.reshape(6, -1).norm(dim=1) - norms).abs() / norms
    assert displacement.min().item() > 1e-5
    assert (norm_change / displacement).max().item() < 1e-2


@pytest.mark.parametrize("fn", [repel, repel_angular])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repel_increases_vendi_of_near_collapsed_batch(fn, dtype):
    x = clustered((6, 8, 16), seed=42, spread=0.05, dtype=dtype)
    size = 0.05 if fn is repel_angular else 0.05 * mean_norm_sq(x)
    out = fn(x, size, 50)
    before, after = vendi_score(x).item(), vendi_score(out).item()
    assert before < 1.05
    assert after > before + 1e-3


def test_repel_moves_samples_apart():
    x = clustered((5, 4, 8), seed=43, spread=0.2)
    out = repel_angular(x, 0.1, 50)
    off = ~torch.eye(5, dtype=torch.bool)
    assert (row_cosines(out)[off] < row_cosines(x)[off]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_large_tensors_are_touched_once_whatever_the_iteration_count(monkeypatch, dtype):
    calls = {"centred_gram": 0, "combine_rows": 0}

    def counted(name):
        original = getattr(repulsion, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(repulsion, name, counted(name))
    x = clustered((4, 8, 32), seed=44, dtype=dtype)
    for iterations in (1, 200):
        calls.update(centred_gram=0, combine_rows=0)
        out = repel_angular(x, 0.1, iterations)
        assert not torch.equal(out, x)
        assert calls == {"centred_gram": 1, "combine_rows": 1}, iterations


def test_flow_reports_entropy_increase_when_asked():
    x = clustered((4, 3, 5), seed=45, spread=0.1)
    _, result = repel_parts([x], 20, strength=0.1, want_entropy=True)
    assert result.finite
    assert result.entropy_after > result.entropy_before
    assert result.entropy_before == pytest.approx(math.log(vendi_score(x).item()), rel=1e-9)
