"""Contextual repulsion (Dahary et al., arXiv 2603.28762, Eq. 2) in closed form and in coefficient space.

The paper updates each sample's contextual vector c_i (its text-stream tokens [N, D] after a block, flattened) by
M Euler steps of gradient ascent on H, the log Vendi score of the batch's cosine kernel:

    c_i <- c_i + (eta / M) * dH/dc_i,    recomputed M times per block.

Closed form (no autograd): with n_i = ||c_i||, K_ij = <c_i, c_j> / (n_i n_j) and G = dH/dK = -(log(K/R) + I) / R,

    dH/dc_i = (2 / n_i) * sum_{k != i} G_ik * (c_k / n_k - K_ik * c_i / n_i)

which is a linear combination of the batch's own vectors. So every inner step is C <- (I + s W(Gram)) C with W a
function of the R x R Gram matrix alone: the M steps run on R x R matrices on the host (float64), and the
[B, N, D] tensors are touched exactly twice per block (one Gram matrix, one combination), whatever M is.

Scale-free strength: ||dH/dc_i|| ~ |G| / n_i, so raw eta's effect scales like 1 / n_i^2 (which is why the paper's eta
spans 5e2 on SD3.5-Large to 8e9 on Flux-dev). With ``strength`` gamma the step uses eta_i = gamma * n_i^2 (current
norm, per sample, per inner step): the update then rotates each unit vector c_i / n_i by an angle that does not depend
on the model, the resolution or the prompt length.

Cross-batch memory: extra fixed rows (earlier batches' features) may join the kernel. They push the current rows but
never move; R = B + (memory rows) is the kernel's size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from .vendi import entropy_and_gradient, gradient_weights


@dataclass
class FlowResult:
    """Outcome of the B x B inner loop for one group of rows."""

    coefficients: np.ndarray  #: [B, R] float64: new current rows = coefficients @ [current rows; memory rows]
    entropy_before: float  #: H (log Vendi) of the current rows before the update (NaN when not asked for)
    entropy_after: float  #: H of the current rows after the update (NaN when not asked for)
    finite: bool  #: False when the input Gram or the result was not finite (the update must then be skipped)


def _rows_2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """View [R, ...] as [R, T, C] with the last dimension as C (a strided view, no copy, for [R, N, D] streams)."""
    if x.ndim >= 3:
        return x.reshape(x.shape[0], -1, x.shape[-1])
    return x.reshape(x.shape[0], 1, -1)


@contextlib.contextmanager
def _full_fp32_matmul(device: torch.device):
    """Disable TF32 for the Gram matrix (hosts such as ComfyUI turn it on; its 10-bit mantissa would blur 1 - cos)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def gram_matrix(parts: list[torch.Tensor]) -> torch.Tensor:
    """Float64 Gram matrix sum_k X_k X_k^T of row blocks ``parts`` (each [R, ...], any float dtype, same device).

    Computed as a batched product over tokens (one R x R product per token, summed in float64), which keeps the
    huge reduction dimension parallel on a GPU and the accumulation error small. float64 rows are multiplied in
    float64; others in float32, with fp16/bf16 upcast a slice of tokens at a time (at most one copy of the input).
    """
    total: torch.Tensor | None = None
    for x in parts:
        tokens = _as_tokens(x)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        step = tokens.shape[1]
        if x.element_size() < torch.finfo(work).bits // 8:
            step = max(1, math.ceil(step * x.element_size() / (torch.finfo(work).bits // 8)))
        with _full_fp32_matmul(x.device):
            for start in range(0, tokens.shape[1], step):
                chunk = tokens[:, start : start + step].to(work).transpose(0, 1)  # [T, R, C]
                g = torch.bmm(chunk, chunk.transpose(1, 2)).sum(dim=0, dtype=torch.float64)
                total = g if total is None else total + g
    assert total is not None
    return total


def combine_rows(delta: torch.Tensor, x: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """New current rows = ``current`` + ``delta`` @ ``x``, for [B, R] update coefficients and rows ``x`` = [current;
    memory] ([R, P]), as one fused product with float32 (or float64) accumulation.

    ``delta`` (= T - [I 0], see :func:`coefficient_flow`) is given in the stream dtype: for fp16/bf16 its rounding is
    a relative 2^-8 of the *update*, below the rounding of the output itself to the stream dtype.
    """
    return torch.addmm(current, delta, x)


def coefficient_flow(
    gram: np.ndarray,
    n_current: int,
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    want_entropy: bool = False,
) -> FlowResult:
    """Run M Euler steps of dH/dc on the coefficients of the first ``n_current`` rows (host, float64).

    ``gram`` is the R x R Gram matrix of [current rows; fixed memory rows]. Exactly one of ``eta`` (raw, the paper's
    parameterisation) and ``strength`` (angular: eta_i = strength * ||c_i||^2) must be given.
    Returns the [B, R] matrix T with new current rows = T @ [current rows; memory rows].
    """
    if (eta is None) == (strength is None):
        raise ValueError("coefficient_flow: give exactly one of eta or strength")
    gram = np.asarray(gram, dtype=np.float64)
    r = gram.shape[0]
    b = n_current
    coef = np.eye(b, r)
    if not np.isfinite(gram).all():
        return FlowResult(coef, math.nan, math.nan, False)
    diag = np.diagonal(gram)
    if (diag <= 0.0).any():
        # A zero row has no direction: there is nothing to repel from or towards. Leave the group unchanged.
        return FlowResult(coef, math.nan, math.nan, True)
    basis = np.eye(r)  # rows of Y over X: current rows move, memory rows (the last R - B) stay
    gy = gram
    step = (eta if eta is not None else strength) / iterations
    finite = True
    for _ in range(iterations):
        w = _euler_step_weights(gy, b, step, raw_eta=eta is not None)
        if w is None:  # a non-finite kernel
            finite = False
            break
        basis[:b] += w @ basis
        gy = basis @ gram @ basis.T
    coef = basis[:b]
    finite = finite and bool(np.isfinite(coef).all() and np.isfinite(gy).all())
    if not finite:
        return FlowResult(np.eye(b, r), math.nan, math.nan, False)
    before = after = math.nan
    if want_entropy:
        before = entropy_and_gradient(_cosine_from_gram(gram[:b, :b]))[0]
        after = entropy_and_gradient(_cosine_from_gram(gy[:b, :b]))[0]
    return FlowResult(coef, before, after, finite)


def _euler_step_weights(gy: np.ndarray, b: int, step: float, *, raw_eta: bool) -> np.ndarray | None:
    """One Euler step's update of the first ``b`` rows as weights over all R rows, for the rows' Gram matrix ``gy``:
    c_i += sum_k w_ik y_k, with ``step`` = eta / M (``raw_eta``) or strength / M (scaled by ||c_i||^2). None when
    the kernel's eigendecomposition fails (a non-finite kernel)."""
    r = gy.shape[0]
    sq = np.diagonal(gy)
    inv = 1.0 / np.sqrt(sq)
    kernel = gy * inv[:, None] * inv
    try:
        lam, vecs = np.linalg.eigh(kernel)
    except np.linalg.LinAlgError:
        return None
    idx = np.arange(b)
    g = (vecs[:b] * gradient_weights(lam / r, drop_null=True)) @ vecs.T  # = -R * dH/dK, current rows only
    # dH/dc_i = sum_k w_ik y_k with w_ik = 2 G_ik / (n_i n_k) (k != i), w_ii = -2 sum_{k != i} G_ik K_ik / n_i^2
    w = g * (inv[:b, None] * (-2.0 / r) * inv)
    w[idx, idx] = ((g * kernel[:b]).sum(axis=1) - g[idx, idx]) * (2.0 / r) * inv[:b] ** 2
    w *= step if raw_eta else (step * sq[:b])[:, None]  # eta_i = strength * ||c_i||^2
    return w


def _cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    inv = 1.0 / np.sqrt(np.diagonal(gram))
    kernel = gram * inv[:, None] * inv[None, :]
    np.fill_diagonal(kernel, 1.0)
    return kernel


def repel_parts(
    parts: list[torch.Tensor],
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    memory: list[torch.Tensor] | None = None,
    want_entropy: bool = False,
) -> tuple[list[torch.Tensor], FlowResult]:
    """Repel the rows of one group, whose feature vector is the concatenation of ``parts`` (each [B, ...]).

    ``memory``: optional fixed rows, one tensor [Mm, ...] per part, that push the group but do not move.
    Returns the new parts (same shapes and dtypes; the inputs themselves when nothing changes) and the flow result.
    A non-finite update is not applied (the inputs are returned and ``result.finite`` is False).
    """
    b = parts[0].shape[0]
    rows = currents = [_rows_2d(p) for p in parts]
    if memory is not None:
        rows = [
            torch.cat([x, _rows_2d(m).to(device=x.device, dtype=x.dtype)]) for x, m in zip(rows, memory, strict=True)
        ]
    with torch.no_grad():  # the B x B coefficients are constants: no backprop through the kernel's eigenvectors
        gram = gram_matrix(rows).cpu().numpy()
    result = coefficient_flow(gram, b, iterations, eta=eta, strength=strength, want_entropy=want_entropy)
    if not result.finite:
        return list(parts), result
    delta = result.coefficients - np.eye(b, result.coefficients.shape[1])
    if parts[0].dtype != torch.float64:
        delta = delta.astype(np.float32)
    coef = torch.from_numpy(delta).to(device=parts[0].device, dtype=parts[0].dtype)
    new_parts = [combine_rows(coef, x, c).reshape(p.shape) for x, c, p in zip(rows, currents, parts, strict=True)]
    return new_parts, result


def _validate_repel_args(features: torch.Tensor, iterations: int) -> None:
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise ValueError(f"repel: features must be a floating-point tensor [B, N, D], got {type(features).__name__}")
    if features.ndim < 3:
        raise ValueError(
            f"repel: features must be [B, N, D] (samples, tokens, width), got shape {tuple(features.shape)}; "
            "for one vector per sample add a token axis: features[:, None]"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"repel: iterations must be an integer >= 1, got {iterations!r}")


def repel(features: torch.Tensor, eta: float, iterations: int) -> torch.Tensor:
    """Contextual repulsion of a batch, exactly the paper's Eq. 2 with raw ``eta`` and M = ``iterations``.

    ``features`` [B, N, D] (any float dtype): each sample's contextual tokens. Returns a tensor of the same shape and
    dtype in which every sample has taken M Euler steps of size eta/M up the gradient of the batch's log Vendi score.
    B = 1 and eta = 0 return ``features`` unchanged. fp16/bf16 are computed in float32/float64 and cast back.
    A non-finite update (e.g. inf in the input) returns ``features`` unchanged.
    """
    _validate_repel_args(features, iterations)
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(
            f"repel: eta must be a finite number >= 0 (a negative eta pulls samples together), got {eta!r}"
        )
    if features.shape[0] < 2 or eta == 0.0:
        return features
    (out,), _ = repel_parts([features], iterations, eta=eta)
    return out


def repel_angular(features: torch.Tensor, strength: float, iterations: int) -> torch.Tensor:
    """Like :func:`repel` with the scale-free strength: eta_i = ``strength`` * ||c_i||^2 at every inner step."""
    _validate_repel_args(features, iterations)
    strength = float(strength)
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"repel_angular: strength must be finite and >= 0, got {strength!r}")
    if features.shape[0] < 2 or strength == 0.0:
        return features
    (out,), _ = repel_parts([features], iterations, strength=strength)
    return out


def eta_for_strength(features: torch.Tensor, strength: float) -> torch.Tensor:
    """The raw per-sample eta_i = strength * ||c_i||^2 that ``strength`` amounts to for ``features`` [B, ...]."""
    return strength * _rows_2d(features).to(torch.float64).pow(2).sum(dim=1)
