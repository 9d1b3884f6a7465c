"""SPELL for diffusers flow-matching pipelines (Flux, Flux Kontext, SD3): a wrapper of the scheduler's ``step``.

At each step the wrapper turns the guided velocity v the pipeline hands to ``scheduler.step`` into the x0 prediction
x0_hat = x_t - sigma * v (flow matching: x_t = (1 - sigma) x0 + sigma * eps), computes SPELL's correction delta, and
steps with v' = v - delta / sigma, i.e. towards x0_hat + delta. The last step (sigma -> 0) therefore lands on
x0_hat + delta: outside every (disjoint) shield. The final latents of each batch join the cross-batch memory.
diffusers itself is not imported here.
"""

from __future__ import annotations

from typing import Any

import torch

from ..spell import ReferenceSet, SpellConfig, SpellEngine, SpellStats

_ATTR = "_ctxrep_spell_handle"


class SpellHandle:
    """What :func:`apply_spell` returns: ``remove()`` (or leaving its ``with`` block) restores the scheduler."""

    def __init__(self, scheduler: Any, engine: SpellEngine) -> None:
        self.scheduler = scheduler
        self.engine = engine

    @property
    def config(self) -> SpellConfig:
        """The job's SPELL settings."""
        return self.engine.config

    @property
    def attached(self) -> bool:
        """Whether this handle still wraps the scheduler's ``step``."""
        return getattr(self.scheduler, _ATTR, None) is self

    @property
    def stats(self) -> SpellStats:
        """Sparsity so far: calls, samples seen / pushed, steps with a push."""
        return self.engine.stats

    def new_job(self) -> None:
        """Forget earlier batches (cross-batch memory) and reset the statistics."""
        self.engine.new_job()

    def remove(self) -> None:
        """Restore the scheduler's own ``step``; safe to call more than once."""
        if getattr(self.scheduler, _ATTR, None) is self:
            del self.scheduler.step
            delattr(self.scheduler, _ATTR)

    def __enter__(self) -> SpellHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attached_spell(pipeline: Any) -> SpellHandle | None:
    """The SPELL handle attached to ``pipeline``'s scheduler (or to ``pipeline`` itself, a scheduler), or None."""
    return getattr(getattr(pipeline, "scheduler", pipeline), _ATTR, None)


def apply_spell(
    pipeline: Any, config: SpellConfig | None = None, protected: ReferenceSet | None = None
) -> SpellHandle:
    """Attach SPELL to a diffusers pipeline whose scheduler is a flow-matching one (FlowMatchEulerDiscreteScheduler:
    Flux, Flux Kontext, SD3/SD3.5). ``protected``: a :class:`ReferenceSet` of latents in the pipeline's latent layout
    (e.g. the packed latents ``output_type="latent"`` returns). Attaching again replaces the previous handle."""
    scheduler = getattr(pipeline, "scheduler", pipeline)
    if "FlowMatch" not in type(scheduler).__name__ or not hasattr(scheduler, "sigmas"):
        raise TypeError(
            f"apply_spell: {type(scheduler).__name__} is not supported; SPELL's diffusers front end needs a "
            "flow-matching scheduler (FlowMatchEulerDiscreteScheduler: Flux, Flux Kontext, SD3/SD3.5)"
        )
    previous = getattr(scheduler, _ATTR, None)
    if previous is not None:
        previous.remove()
    engine = SpellEngine(config, protected)
    handle = SpellHandle(scheduler, engine)
    original = scheduler.step

    def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not engine.config.enabled:
            return original(model_output, timestep, sample, *args, **kwargs)
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)
        index = scheduler.step_index
        sigma = float(scheduler.sigmas[index])
        if sigma > 0:
            x0_hat = sample.to(torch.float32) - sigma * model_output.to(torch.float32)
            delta = engine.delta(x0_hat)
            engine.record(delta)
            model_output = (model_output.to(torch.float32) - delta / sigma).to(model_output.dtype)
        out = original(model_output, timestep, sample, *args, **kwargs)
        if index == len(scheduler.sigmas) - 2:  # the last step: its result is the batch's final latents
            final = out[0] if isinstance(out, tuple) else out.prev_sample
            engine.end_batch(final)
        return out

    scheduler.step = step
    setattr(scheduler, _ATTR, handle)
    return handle
