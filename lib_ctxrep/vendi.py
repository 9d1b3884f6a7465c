"""Vendi score of a batch under the cosine kernel, and the kernel helpers the repulsion shares.

The Vendi score (Friedman & Dieng, 2023) is exp(H), where H = -sum(lambda log lambda) is the von Neumann entropy of
K / n for a positive semi-definite kernel K with unit diagonal. It counts the "effective number of distinct samples":
1 for identical samples, n for orthogonal ones. Contextual repulsion ascends H (the log Vendi score).

Two flavours live here:
- ``vendi_score`` / ``log_vendi_score``: torch, any device, float64 inside, differentiable through ``eigvalsh``
  (whose backward has no 1/(lambda_i - lambda_j) terms, so it is safe on degenerate spectra);
- ``gradient_weights`` / ``entropy_and_gradient``: numpy float64 on the host, for the repulsion's B x B inner loop
  and its statistics.
"""

from __future__ import annotations

import numpy as np
import torch

#: Eigenvalues below this are treated as zero in lambda*log(lambda) (0 log 0 = 0) and clamped inside log(): far below
#: the eigenvalues of distinct samples, yet log(EIG_FLOOR) is finite, so degenerate spectra give finite gradients.
EIG_FLOOR = 1e-12


def cosine_kernel(x: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity kernel [B, B] (float64) of the rows of ``x`` [B, ...], each flattened to one vector.

    A row of zeros has no direction; rows of zeros are the same sample (similarity 1 to each other) and unlike every
    other row (similarity 0), so a batch of identical rows has a Vendi score of 1 whether or not they are zero.
    """
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    norms = flat.norm(dim=1)
    unit = flat / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    zero = (norms == 0).to(torch.float64)
    kernel = unit @ unit.T + zero[:, None] * zero[None, :]
    # Exact unit diagonal (also for zero rows) without an in-place write, so the kernel stays differentiable.
    return (
        kernel
        - torch.diag(torch.diagonal(kernel))
        + torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    )


def log_vendi_score(x: torch.Tensor) -> torch.Tensor:
    """log of the cosine-kernel Vendi score of ``x`` [B, ...]: the von Neumann entropy of K/B (float64 scalar)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"vendi_score: x must be a torch.Tensor [B, ...], got {type(x).__name__}; "
            "for a list of samples use torch.stack(samples)"
        )
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"vendi_score: x must have a batch dimension with at least one sample, got shape {tuple(x.shape)}"
        )
    kernel = cosine_kernel(x)
    lam = torch.linalg.eigvalsh(kernel / kernel.shape[0])
    lam = lam.clamp_min(0.0)
    terms = torch.where(lam > EIG_FLOOR, lam * torch.log(lam.clamp_min(EIG_FLOOR)), torch.zeros_like(lam))
    return -terms.sum()


def vendi_score(x: torch.Tensor) -> torch.Tensor:
    """Cosine-kernel Vendi score exp(-sum(lambda log lambda)) of K/B for ``x`` [B, ...]; between 1 and B."""
    return torch.exp(log_vendi_score(x))


#: Eigen-directions of K/R below this are null directions of the batch (a combination of rows that is ~0): float64
#: eigen-solves of an R x R kernel carry rounding of order R * 1e-16, far below it.
NULL_EIG = 1e-10


def gradient_weights(lam: np.ndarray, *, drop_null: bool = False) -> np.ndarray:
    """Per-eigenvalue weights w of dH/dK = -(U diag(w) U^T) / R for eigenvalues ``lam`` of K/R: w = log(lambda) + 1.

    Eigenvalues are floored at ``EIG_FLOOR`` inside the logarithm, so a degenerate spectrum (near-identical samples,
    the normal case at the first step) gives large but finite weights. ``drop_null`` gives directions with
    lambda <= ``NULL_EIG`` a zero weight: they are combinations of the rows that are (numerically) the zero vector, so
    they add nothing to the gradient *vectors*, but in coefficient space their large |log lambda| would inflate the
    coefficients of a zero combination and turn into rounding error.
    """
    weight = np.log(np.maximum(lam, EIG_FLOOR)) + 1.0
    if drop_null:
        weight[lam <= NULL_EIG] = 0.0
    return weight


def entropy_and_gradient(kernel: np.ndarray) -> tuple[float, np.ndarray]:
    """Entropy H of K/R and its gradient dH/dK, for an R x R cosine kernel (numpy float64, host).

    With K/R = U diag(lambda) U^T and tr(K/R) = 1, dH/dK = -(log(K/R) + I) / R. The identity part only touches the
    diagonal, which is constant (= 1) for a cosine kernel, so callers use the off-diagonal entries.
    """
    r = kernel.shape[-1]
    lam, vecs = np.linalg.eigh(kernel / r)
    lam = np.maximum(lam, 0.0)
    entropy = float(-(lam * np.where(lam > EIG_FLOOR, np.log(np.maximum(lam, EIG_FLOOR)), 0.0)).sum())
    grad = -((vecs * gradient_weights(lam)) @ vecs.T) / r
    return entropy, grad
