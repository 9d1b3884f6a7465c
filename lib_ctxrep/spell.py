"""SPELL: sparse repellency of the x0 prediction (Kirchhof et al., arXiv 2410.06025), core maths.

At each step the model's prediction x0_hat of the final sample is pushed out of every shield (a ball of radius r
around a reference point z) that it falls into:

    delta = lambda * sum_z ReLU(r / ||x0_hat - z|| - 1) * (x0_hat - z)

With lambda = 1 and disjoint shields, x0_hat + delta lies exactly on the boundary of the shield it was in; the paper's
overcompensation lambda = 1.6 overshoots so the trajectory leaves the shield sooner. delta is exactly zero for a
sample with no reference within r: most of the time nothing happens (the method's sparsity).

Hosts add delta to the denoised prediction that the sampler steps towards (Forge: a post-CFG function; diffusers: a
step callback), so the final sample lands outside the shields. Nothing here imports a host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The paper's overcompensation factor.
DEFAULT_OVERCOMPENSATION = 1.6


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _is_same_batch(x0: torch.Tensor, references: torch.Tensor) -> bool:
    return references is x0 or (
        references.shape == x0.shape
        and references.data_ptr() == x0.data_ptr()
        and references.stride() == x0.stride()
        and references.device == x0.device
    )


def repellency(
    x0: torch.Tensor,
    references: torch.Tensor,
    radius: float,
    overcompensation: float = DEFAULT_OVERCOMPENSATION,
    *,
    exclude_self: bool | None = None,
) -> torch.Tensor:
    """SPELL's correction delta for the predictions ``x0`` [B, ...] against ``references`` [K, ...] (same trailing
    shape), summed over the references, with the shape and dtype of ``x0``.

    ``exclude_self``: leave out each sample's own row (intra-batch repellency, references = the batch's own
    predictions, K = B); None = do so when ``references`` is ``x0`` itself. delta is exactly zero for a sample with no
    reference within ``radius``; a reference at distance exactly 0 gives no push (its direction is undefined).
    Distances and weights are computed in float32 or better.
    """
    if not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"repellency: radius must be a finite number > 0, got {radius!r}")
    if not math.isfinite(overcompensation) or overcompensation <= 0:
        raise ValueError(f"repellency: overcompensation must be a finite number > 0, got {overcompensation!r}")
    if references.shape[1:] != x0.shape[1:]:
        raise ValueError(
            f"repellency: references {tuple(references.shape)} do not match the samples {tuple(x0.shape)} "
            "(every reference must have one sample's shape)"
        )
    if exclude_self is None:
        exclude_self = _is_same_batch(x0, references)
    work = torch.float64 if x0.dtype == torch.float64 else torch.float32
    x = _flat(x0).to(work)
    z = _flat(references).to(device=x.device, dtype=work)
    if z.shape[0] == 0:
        return torch.zeros_like(x0)
    weights = shield_weights(x, z, radius, exclude_self=exclude_self)
    delta = overcompensation * (weights.sum(dim=1, keepdim=True) * x - weights @ z)
    return delta.to(x0.dtype).reshape(x0.shape)


def shield_weights(x: torch.Tensor, z: torch.Tensor, radius: float, *, exclude_self: bool = False) -> torch.Tensor:
    """ReLU(r / d_ij - 1) for rows ``x`` [B, P] and references ``z`` [K, P] ([B, K]; zero outside the shields and for
    d = 0). Distances are computed directly (not from a Gram expansion), so tiny distances stay accurate."""
    d = torch.cdist(x, z, compute_mode="donot_use_mm_for_euclid_dist")
    w = torch.where(d > 0, torch.relu(radius / d.clamp_min(torch.finfo(d.dtype).tiny) - 1.0), torch.zeros_like(d))
    if exclude_self:
        if z.shape[0] != x.shape[0]:
            raise ValueError("repellency: exclude_self needs one reference row per sample")
        w.fill_diagonal_(0.0)
    return w


def typical_distance(sample_shape: tuple[int, ...] | torch.Size, std: float = 1.0) -> float:
    """Typical distance between two independent samples of a latent space with per-value standard deviation ``std``:
    sqrt(2 * numel) * std (the scale against which a relative radius is set)."""
    return math.sqrt(2.0 * math.prod(sample_shape)) * std


@dataclass
class SpellStats:
    """Sparsity of SPELL over a generation: how many (sample, step) pairs were pushed."""

    calls: int = 0
    samples_seen: int = 0
    samples_pushed: int = 0
    steps_with_push: int = 0

    def record(self, delta: torch.Tensor) -> None:
        """Count one step's correction [B, ...] (one host sync)."""
        pushed = int((_flat(delta).abs().amax(dim=1) > 0).sum())
        self.calls += 1
        self.samples_seen += delta.shape[0]
        self.samples_pushed += pushed
        self.steps_with_push += int(pushed > 0)

    @property
    def share_pushed(self) -> float:
        """Fraction of (sample, step) pairs that received a non-zero push."""
        return self.samples_pushed / self.samples_seen if self.samples_seen else 0.0
