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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .config import named_fields

#: The paper's overcompensation factor.
DEFAULT_OVERCOMPENSATION = 1.6
#: Above this many references the exact search (a scan of every reference per query and step) gives way to faiss's
#: approximate IVF index, whose search reads only ``nprobe`` of its sqrt(K) cells.
DEFAULT_EXACT_LIMIT = 100_000
#: IVF cells searched per query: a few cells around the query's own find its nearest references at a small share of
#: a full scan's cost.
DEFAULT_NPROBE = 8
#: Nearest references fetched per sample from a protected set: only references within the shield radius push, and a
#: sample has few that close.
DEFAULT_NEIGHBOURS = 16
#: k-means training points per IVF cell: faiss asks for at least 39 per centroid; training on more than a sample of
#: the set only costs time.
_TRAIN_POINTS_PER_CELL = 64
#: Latents added to the index per call, so that ``progress`` reports while a large set is indexed.
_INDEX_ADD_CHUNK = 16384
#: Values (queries x width x references) per chunk of the exact search's distance matrix, which bounds its memory.
_EXACT_SEARCH_BLOCK = 2**26


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


def _relu_weights(d: torch.Tensor, radius: float) -> torch.Tensor:
    """ReLU(r / d - 1) for distances ``d``; zero at d = 0 (no direction to push along) and for NaN distances."""
    w = torch.where(d > 0, torch.relu(radius / d.clamp_min(torch.finfo(d.dtype).tiny) - 1.0), torch.zeros_like(d))
    return torch.nan_to_num(w, nan=0.0)


def shield_weights(x: torch.Tensor, z: torch.Tensor, radius: float, *, exclude_self: bool = False) -> torch.Tensor:
    """ReLU(r / d_ij - 1) for rows ``x`` [B, P] and references ``z`` [K, P] ([B, K]; zero outside the shields and for
    d = 0). Distances are computed directly (not from a Gram expansion), so tiny distances stay accurate."""
    w = _relu_weights(torch.cdist(x, z, compute_mode="donot_use_mm_for_euclid_dist"), radius)
    if exclude_self:
        if z.shape[0] != x.shape[0]:
            raise ValueError("repellency: exclude_self needs one reference row per sample")
        w.fill_diagonal_(0.0)
    return w


def typical_distance(sample_shape: tuple[int, ...] | torch.Size, std: float = 1.0) -> float:
    """Typical distance between two independent samples of a latent space with per-value standard deviation ``std``:
    sqrt(2 * numel) * std (the scale against which a relative radius is set)."""
    return math.sqrt(2.0 * math.prod(sample_shape)) * std


class SpellStats:
    """Sparsity of SPELL over a generation: how many (sample, step) pairs were pushed.

    Recording keeps the per-step counts on the device (no host sync inside sampling); reading a count syncs once.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.samples_seen = 0
        self._pushed: list[torch.Tensor] = []
        self._ever: torch.Tensor | None = None  # [B] bool: sample pushed at least once (while B stays the same)

    def record(self, delta: torch.Tensor) -> None:
        """Count one step's correction [B, ...]."""
        self.calls += 1
        self.samples_seen += delta.shape[0]
        pushed = _flat(delta).abs().amax(dim=1) > 0
        self._pushed.append(pushed.sum())
        same = self._ever is not None and self._ever.shape == pushed.shape and self._ever.device == pushed.device
        self._ever = self._ever | pushed if same else pushed

    @property
    def batch_size(self) -> int:
        """Samples per call of the latest calls."""
        return 0 if self._ever is None else int(self._ever.shape[0])

    @property
    def samples_ever_pushed(self) -> int:
        """Samples (of the latest batch size) pushed at least once."""
        return 0 if self._ever is None else int(self._ever.sum())

    def summary(self) -> str:
        """One line for a console or an infotext, e.g. ``2/4 samples in 3/20 steps (5/80 sample-steps)``."""
        return (
            f"{self.samples_ever_pushed}/{self.batch_size} samples in {self.steps_with_push}/{self.calls} steps "
            f"({self.samples_pushed}/{self.samples_seen} sample-steps)"
        )

    @property
    def samples_pushed(self) -> int:
        """(sample, step) pairs that received a non-zero push."""
        return int(sum(int(p) for p in self._pushed))

    @property
    def steps_with_push(self) -> int:
        """Steps in which at least one sample was pushed."""
        return sum(int(p) > 0 for p in self._pushed)

    @property
    def share_pushed(self) -> float:
        """Fraction of (sample, step) pairs that received a non-zero push."""
        return self.samples_pushed / self.samples_seen if self.samples_seen else 0.0


def repellency_from_candidates(
    x0: torch.Tensor, candidates: torch.Tensor, radius: float, overcompensation: float = DEFAULT_OVERCOMPENSATION
) -> torch.Tensor:
    """Like :func:`repellency`, but each sample i has its own candidate references ``candidates[i]`` [B, k, ...]
    (its nearest neighbours in a large protected set). Padding rows may be NaN: they never push."""
    work = torch.float64 if x0.dtype == torch.float64 else torch.float32
    x = _flat(x0).to(work)
    z = candidates.reshape(candidates.shape[0], candidates.shape[1], -1).to(device=x.device, dtype=work)
    diff = x[:, None, :] - z  # [B, k, P]
    w = _relu_weights(diff.norm(dim=2), radius)
    delta = overcompensation * (w[:, :, None] * torch.nan_to_num(diff, nan=0.0)).sum(dim=1)
    return delta.to(x0.dtype).reshape(x0.shape)


class ReferenceSet:
    """A protected set of reference latents with nearest-neighbour search.

    Exact search (chunked, on the CPU) up to ``exact_limit`` references; above it an approximate faiss IVF-Flat
    index (``pip install faiss-cpu``; ``nlist`` = sqrt(K) cells by default, ``nprobe`` cells searched per query), as
    in the paper's 1.2M-image experiment. The latents stay in CPU memory as float32; only the k candidates of each
    query move to the query's device.
    """

    def __init__(
        self,
        latents: torch.Tensor,
        *,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(
                f"ReferenceSet: latents must be a torch.Tensor [K, ...] (K latents), got {type(latents).__name__}; "
                "build it with torch.tensor(...) or torch.stack(list_of_latents)"
            )
        if latents.ndim < 2 or latents.shape[0] == 0:
            raise ValueError(f"ReferenceSet: latents must be a non-empty [K, ...] tensor, got {tuple(latents.shape)}")
        self.sample_shape = tuple(latents.shape[1:])
        self.data = _flat(latents.detach()).to("cpu", torch.float32).contiguous()
        self.nprobe = nprobe
        self.index = None
        if self.data.shape[0] > exact_limit:
            self.index = self._build_index(nlist or max(1, int(math.sqrt(self.data.shape[0]))), progress)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def approximate(self) -> bool:
        """Whether searches go through the approximate (faiss) index."""
        return self.index is not None

    def _build_index(self, nlist: int, progress: Callable[[int, int], None] | None) -> Any:
        try:
            import faiss
        except ImportError:
            raise ImportError(
                f"ReferenceSet: {len(self)} references need the approximate index: pip install faiss-cpu "
                "(or raise exact_limit to search exactly, slower)"
            ) from None
        data = self.data.numpy()
        quantizer = faiss.IndexFlatL2(data.shape[1])
        index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist)
        train = data[:: max(1, len(data) // (nlist * _TRAIN_POINTS_PER_CELL))]
        index.train(train)
        step = _INDEX_ADD_CHUNK
        for start in range(0, len(data), step):
            index.add(data[start : start + step])
            if progress is not None:
                progress(min(start + step, len(data)), len(data))
        index.nprobe = self.nprobe
        return index

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Indices [B, k] of the k nearest references of each query (-1 where the index returned fewer)."""
        q = _flat(queries.detach()).to("cpu", torch.float32).contiguous()
        k = min(k, len(self))
        if self.index is not None:
            self.index.nprobe = self.nprobe
            _, ids = self.index.search(q.numpy(), k)
            return torch.from_numpy(ids)
        best_d = torch.full((q.shape[0], k), float("inf"))
        best_i = torch.full((q.shape[0], k), -1, dtype=torch.long)
        step = max(1, _EXACT_SEARCH_BLOCK // max(1, q.shape[1] * max(1, q.shape[0])))
        for start in range(0, len(self), step):
            d = torch.cdist(q, self.data[start : start + step])
            d_all = torch.cat([best_d, d], dim=1)
            i_all = torch.cat([best_i, torch.arange(start, start + d.shape[1]).expand(q.shape[0], -1)], dim=1)
            best_d, order = d_all.topk(k, dim=1, largest=False)
            best_i = i_all.gather(1, order)
        return best_i

    def candidates(self, queries: torch.Tensor, k: int = DEFAULT_NEIGHBOURS) -> torch.Tensor:
        """The k nearest references of each query, [B, k, *sample_shape], on the queries' device (NaN padding)."""
        ids = self.search(queries, k)
        rows = self.data[ids.clamp_min(0)]
        rows[ids < 0] = float("nan")
        return rows.reshape(ids.shape[0], ids.shape[1], *self.sample_shape).to(queries.device)

    def repellency(
        self,
        x0: torch.Tensor,
        radius: float,
        overcompensation: float = DEFAULT_OVERCOMPENSATION,
        k: int = DEFAULT_NEIGHBOURS,
    ) -> torch.Tensor:
        """SPELL's correction of ``x0`` against this set, through the k nearest references of each sample."""
        if tuple(x0.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"ReferenceSet: samples of shape {tuple(x0.shape[1:])} do not match the set's {self.sample_shape} "
                "(a set made for another model or resolution)"
            )
        return repellency_from_candidates(x0, self.candidates(x0, k), radius, overcompensation)

    def save_index(self, path: str) -> None:
        """Write the approximate index (faiss format) so a later job can reload it instead of rebuilding."""
        if self.index is None:
            raise ValueError("ReferenceSet: this set searches exactly; there is no index to save")
        import faiss

        faiss.write_index(self.index, str(path))

    def load_index(self, path: str) -> None:
        """Reload an index written by :meth:`save_index` for the same latents."""
        import faiss

        index = faiss.read_index(str(path))
        if index.ntotal != len(self) or index.d != self.data.shape[1]:
            raise ValueError(
                f"ReferenceSet: the index at {path} holds {index.ntotal} x {index.d}, this set is "
                f"{len(self)} x {self.data.shape[1]}"
            )
        self.index = index


#: Default relative radius (a fraction of the typical distance between two independent latents), checked on the
#: reference model; the paper tuned r over 0 .. 2 x the median pairwise distance of final latents.
DEFAULT_RELATIVE_RADIUS = 0.35


@named_fields
@dataclass
class SpellConfig:
    """Settings of SPELL for one job.

    Args:
        enabled: master switch.
        relative_radius: shield radius as a fraction of the typical distance between two independent latents of the
            generation's shape (sqrt(2 * numel) for unit-variance latents); used when ``radius`` is None.
        radius: absolute shield radius in latent units (overrides ``relative_radius``).
        overcompensation: lambda, the paper's 1.6 by default.
        intra_batch: repel each sample from the other samples' predictions of the same batch.
        cross_batch: repel from the final latents of earlier batches of the same job.
        memory_size: at most this many earlier final latents are kept.
        neighbours: candidates fetched per sample from a protected set.
    """

    enabled: bool = True
    relative_radius: float = DEFAULT_RELATIVE_RADIUS
    radius: float | None = None
    overcompensation: float = DEFAULT_OVERCOMPENSATION
    intra_batch: bool = True
    cross_batch: bool = True
    memory_size: int = 64
    neighbours: int = DEFAULT_NEIGHBOURS

    def __post_init__(self) -> None:
        def fail(name: str, accepted: str) -> ValueError:
            return ValueError(f"SpellConfig.{name} must be {accepted}, got {getattr(self, name)!r}")

        def real(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not real(self.relative_radius) or self.relative_radius <= 0:
            raise fail("relative_radius", "a finite number > 0")
        if self.radius is not None and (not real(self.radius) or self.radius <= 0):
            raise fail("radius", "None or a finite number > 0")
        if not real(self.overcompensation) or self.overcompensation <= 0:
            raise fail("overcompensation", "a finite number > 0")
        for name in ("enabled", "intra_batch", "cross_batch"):
            if not isinstance(getattr(self, name), bool):
                raise fail(name, "True or False")
        for name, low in (("memory_size", 0), ("neighbours", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise fail(name, f"an integer >= {low}")

    def absolute_radius(self, sample_shape: tuple[int, ...] | torch.Size) -> float:
        """The shield radius in latent units for samples of ``sample_shape``."""
        return self.radius if self.radius is not None else self.relative_radius * typical_distance(sample_shape)


def _check_spell_arguments(config: Any, protected: Any) -> None:
    """Refuse, when SPELL is set up, what would only fail mid-generation: a config that is not a SpellConfig instance
    or a protected set that is not a ReferenceSet, with a TypeError saying how to build the right one."""
    if config is SpellConfig:
        raise TypeError("SPELL: got the class SpellConfig itself; pass an instance: SpellConfig(...)")
    if config is not None and not isinstance(config, SpellConfig):
        hint = "SpellConfig(**settings)" if isinstance(config, dict) else "SpellConfig(relative_radius=..., ...)"
        raise TypeError(f"SPELL: config must be a SpellConfig, got {type(config).__name__}; build one with {hint}")
    if protected is not None and not isinstance(protected, ReferenceSet):
        raise TypeError(
            f"SPELL: protected must be a ReferenceSet, got {type(protected).__name__}; build one with "
            "ReferenceSet(latents) from a [K, ...] tensor of latents"
        )


class SpellEngine:
    """SPELL for one job: intra-batch, earlier batches (cross-batch memory) and an optional protected set.

    Hosts call :meth:`correct` with each step's x0 prediction and use the result as the prediction the sampler steps
    towards; :meth:`end_batch` with a batch's final latents; :meth:`new_job` between jobs.
    """

    def __init__(self, config: SpellConfig | None = None, protected: ReferenceSet | None = None) -> None:
        _check_spell_arguments(config, protected)
        self.config = config if config is not None else SpellConfig()
        self.protected = protected
        self.stats = SpellStats()  # the whole job
        self.batch_stats = SpellStats()  # the current batch
        self._memory: torch.Tensor | None = None  # earlier final latents, [M, ...], one tensor
        self._warned_shape = False

    @property
    def remembered(self) -> int:
        """Number of earlier final latents held."""
        return 0 if self._memory is None else self._memory.shape[0]

    def delta(self, x0: torch.Tensor) -> torch.Tensor:
        """The summed correction for predictions ``x0`` [B, ...] (zeros where nothing is within the radius)."""
        cfg = self.config
        radius = cfg.absolute_radius(x0.shape[1:])
        total = torch.zeros_like(x0)
        if not cfg.enabled:
            return total
        if cfg.intra_batch and x0.shape[0] > 1:
            total = total + repellency(x0, x0, radius, cfg.overcompensation, exclude_self=True)
        if cfg.cross_batch and self._memory is not None:
            memory = self._memory.to(device=x0.device, dtype=x0.dtype)
            if memory.shape[1:] == x0.shape[1:]:
                total = total + repellency(x0, memory, radius, cfg.overcompensation, exclude_self=False)
        if self.protected is not None:
            if tuple(x0.shape[1:]) == self.protected.sample_shape:
                delta = self.protected.repellency(x0, radius, cfg.overcompensation, cfg.neighbours)
                total = total + delta.to(x0.dtype)
            elif not self._warned_shape:
                self._warned_shape = True
                warnings.warn(
                    f"SPELL: samples of shape {tuple(x0.shape[1:])} do not match the protected set's "
                    f"{self.protected.sample_shape}; the protected set is not used for them",
                    stacklevel=2,
                )
        return total

    def record(self, delta: torch.Tensor) -> None:
        """Count one step's correction in the job's and the current batch's statistics."""
        self.stats.record(delta)
        self.batch_stats.record(delta)

    def correct(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0 + delta``, recording the sparsity statistics."""
        delta = self.delta(x0)
        self.record(delta)
        return x0 + delta

    def end_batch(self, final_latents: torch.Tensor) -> SpellStats:
        """Remember a finished batch's final latents (oldest dropped beyond ``memory_size``); returns the batch's
        sparsity statistics and starts new ones for the next batch."""
        finished, self.batch_stats = self.batch_stats, SpellStats()
        if not self.config.cross_batch or self.config.memory_size == 0:
            return finished
        rows = final_latents.detach()
        if self._memory is not None and self._memory.shape[1:] == rows.shape[1:]:
            rows = torch.cat([self._memory, rows.to(self._memory.device)])
        self._memory = rows[-self.config.memory_size :].clone()
        return finished

    def new_job(self) -> None:
        """Forget earlier batches and reset the statistics."""
        self._memory = None
        self.stats = SpellStats()
        self.batch_stats = SpellStats()
