"""Two published batch-diversity baselines, for side-by-side comparison on the reference model (``bench``).

- Particle Guidance (Corso et al., ICLR 2024, arXiv 2310.13102), latent-space, non-SVGD form: each sample is pushed
  down the gradient of the batch's RBF kernel potential sum_j k(x_i, x_j), k = exp(-d^2 / h_i), with the per-sample
  median bandwidth h_i = median_j(d_ij)^2 / log(n - 1), weighted by the noise level. Here it acts on the x0
  prediction (identity features: the feature-space variant of the paper with the pixels as features), so it plugs
  into the same hook as SPELL.
- CADS (Sadat et al., ICLR 2024, arXiv 2310.17347): the condition is annealed with Gaussian noise,
  y' = sqrt(gamma(t)) y + s sqrt(1 - gamma(t)) n, gamma = 1 below tau1, 0 above tau2, linear between (t = 1 is
  noise), then rescaled to y's mean and standard deviation and mixed with psi.

Pure torch; the hosts call these from their step hooks.
"""

from __future__ import annotations

import math

import torch


def rbf_potential_gradient(x: torch.Tensor) -> torch.Tensor:
    """Particle Guidance's repulsion g [B, ...]: g_i = sum_{j != i} 2 w_ij (x_i - x_j) / h_i with w_ij = exp(-d_ij^2 /
    h_i) and h_i = median_{j != i}(d_ij)^2 / log(B - 1) (``log`` floored for B = 2), i.e. minus the gradient of
    sum_j k(x_i, x_j) in x_i at a fixed bandwidth. Zeros for B = 1."""
    b = x.shape[0]
    if b < 2:
        return torch.zeros_like(x)
    flat = x.reshape(b, -1).double()
    diff = flat[:, None, :] - flat[None, :, :]  # [B, B, P]
    d2 = (diff**2).sum(-1)
    off = ~torch.eye(b, dtype=torch.bool)
    dist = d2.clamp_min(0).sqrt()
    median = torch.stack([dist[i][off[i]].median() for i in range(b)])
    h = (median**2 / max(math.log(b - 1), 1e-2)).clamp_min(1e-12)  # [B]
    w = torch.exp(-d2 / h[:, None]) * off
    g = 2.0 * (w[:, :, None] * diff).sum(1) / h[:, None]
    return g.to(x.dtype).reshape(x.shape)


def particle_guidance(x0: torch.Tensor, t: float, scale: float) -> torch.Tensor:
    """x0 + scale * t * g (the repulsion weighted by the noise level t in [0, 1], as the paper's alpha_t)."""
    if scale == 0:
        return x0
    return x0 + scale * t * rbf_potential_gradient(x0)


def cads_gamma(t: float, tau1: float = 0.6, tau2: float = 0.9) -> float:
    """CADS's annealing gamma(t): 1 for t <= tau1 (late, little noise), 0 for t >= tau2 (early), linear between."""
    if not 0 <= tau1 < tau2 <= 1:
        raise ValueError(f"cads_gamma: need 0 <= tau1 < tau2 <= 1, got tau1={tau1}, tau2={tau2}")
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


def cads_condition(
    y: torch.Tensor,
    t: float,
    *,
    scale: float,
    tau1: float = 0.6,
    tau2: float = 0.9,
    psi: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The CADS-noised condition for time t: y' = sqrt(gamma) y + scale sqrt(1 - gamma) n, rescaled to y's scalar
    mean and standard deviation (over the whole tensor, as both reference implementations do) and mixed:
    psi * rescaled + (1 - psi) * y'. Fresh noise n from ``generator`` at every call."""
    gamma = cads_gamma(t, tau1, tau2)
    if gamma == 1.0 or scale == 0:
        return y
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    noised = math.sqrt(gamma) * y + scale * math.sqrt(1.0 - gamma) * noise
    rescaled = (noised - noised.mean()) / noised.std().clamp_min(1e-12) * y.std() + y.mean()
    return psi * rescaled + (1.0 - psi) * noised
