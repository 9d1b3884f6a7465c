"""diffusers front end: torch hooks on a diffusers transformer's blocks -> RepulsionEngine, through the block map.

Works with diffusers 0.31 (what Forge pins) up to current releases; diffusers itself is never imported here (the
supported classes are recognised by name in :mod:`lib_ctxrep.families`), and only plain torch hooks are used
(diffusers' own hook registry only exists from 0.33).

This file names no family: how each transformer's ``forward`` is called is in its family's entry
(:class:`lib_ctxrep.families.readers.DiffusersCall`). A forward pre-hook on the transformer reads the call's time (as
sigma), its row layout and its token layout (text length, text padding, the target's image tokens) and starts the
engine's call; a forward hook on each selected block hands its output to :func:`lib_ctxrep.blockmap.repel_block`.
The call state lasts until the next call, so gradient-checkpointing recomputation during backward repeats exactly the
same update (keep the handle attached until backward is done). Hooks read only the output, so positional calls
(gradient checkpointing) work too.

Row layouts: a pipeline either calls the transformer once per CFG branch, the prompt first (a second call at the same
sigma is the negative prompt's, repelled within itself), or batches the branches in one call in the order its entry's
``cfg_rows`` says, when the pipeline's CFG is on (a pipeline without ``do_classifier_free_guidance`` is read through
its ``guidance_scale`` > 1, or duplicated latents). Families with single-stream blocks only have their blocks play the
dual blocks' role, chosen by ``blocks``, and only their text tokens are repelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import blockmap, families
from ..blockmap import Architecture, CallTokens
from ..config import RepulsionConfig, as_config
from ..engine import RepulsionEngine
from ..families.readers import Args, CallNotReadable, diffusers_reads
from ..schedule import progress_from_schedule, progress_from_sigma

_ATTR = "_ctxrep_handle"
#: Two calls whose sigmas differ by less are at the same step (the prompt's and the negative prompt's call); steps
#: are far further apart, so this only absorbs rounding of the timestep.
_SAME_SIGMA = 1e-7


def _architecture(module: Any) -> Architecture:
    arch = families.recognise(module, "diffusers")
    if arch is None:
        raise TypeError(
            f"apply_contextual_repulsion: {type(module).__name__} is not supported; supported transformers are "
            f"{', '.join(families.supported('diffusers'))} (or a pipeline whose .transformer is one of them)"
        )
    return arch


class ContextualRepulsionHandle:
    """What :func:`apply_contextual_repulsion` returns: owns the hooks and the engine of one job.

    ``remove()`` takes every hook off (idempotent); the handle is also a context manager that removes on exit.
    """

    def __init__(self, transformer: torch.nn.Module, engine: RepulsionEngine) -> None:
        self.transformer = transformer
        self.engine = engine
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def config(self) -> RepulsionConfig:
        """The job's configuration."""
        return self.engine.config

    @property
    def stats(self) -> list:
        """Per-block records (only filled when attached with ``record_stats=True``)."""
        return self.engine.stats

    def new_batch(self) -> None:
        """Mark a batch boundary for the cross-batch memory (also detected automatically when sigma jumps back up)."""
        self.engine.new_batch()

    def new_job(self) -> None:
        """Clear the cross-batch memory."""
        self.engine.new_job()

    @property
    def attached(self) -> bool:
        """Whether the hooks are still on the model."""
        return bool(self._hooks)

    def remove(self) -> None:
        """Remove every hook and clear the memory; safe to call more than once."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.engine.new_job()
        if getattr(self.transformer, _ATTR, None) is self:
            delattr(self.transformer, _ATTR)

    def __enter__(self) -> ContextualRepulsionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attached_handle(model: Any) -> ContextualRepulsionHandle | None:
    """The handle attached to ``model`` (a transformer, or a pipeline whose ``.transformer`` is one), or None: lets a
    caller check that a model is free before attaching its own (attaching again would replace, and so clear, it)."""
    transformer = model if isinstance(model, torch.nn.Module) else getattr(model, "transformer", None)
    return getattr(transformer, _ATTR, None)


def _rows(value: Any) -> int:
    return len(value) if isinstance(value, (list, tuple)) else int(value.shape[0])


def _duplicated(latents: Any) -> bool:
    """Whether the rows of ``latents`` are two identical halves: ``torch.cat([latents] * 2)``, a pipeline's CFG
    batch, where nothing else says whether CFG is on (AuraFlowPipeline in diffusers 0.31)."""
    if not isinstance(latents, torch.Tensor) or latents.shape[0] % 2:
        return False
    half = latents.shape[0] // 2
    return bool(torch.equal(latents[:half], latents[half:]))


def apply_contextual_repulsion(
    model: Any,
    config: RepulsionConfig | None = None,
    *,
    scheduler: Any = None,
    shift: float = 1.0,
    record_stats: bool = False,
) -> ContextualRepulsionHandle:
    """Attach contextual repulsion to a diffusers transformer of a supported family, or to a pipeline that has one.

    Args:
        model: a supported transformer (``lib_ctxrep.families.supported("diffusers")``: Flux.1, Chroma, Flux.2,
            Qwen-Image, Z-Image, SD3, and the README's table), or a pipeline (FluxPipeline, StableDiffusion3Pipeline,
            ...) whose ``.transformer`` is one. Given a pipeline, the window is read from ``pipeline.scheduler`` (or
            its ``timesteps``, for families whose model time is not the scheduler's sigma) and batched CFG rows from
            the pipeline's CFG state.
        config: the settings; default ``RepulsionConfig()``.
        scheduler: the sampler's scheduler (with ``.sigmas``), for the exact "first tau steps" window. Without one the
            window is read from sigma with the time shift ``shift`` undone.
        shift: flow-matching time shift used when no scheduler is known (1 = none).
        record_stats: keep per-block Vendi before/after in ``handle.stats`` (costs two small host eigen-solves).

    Returns:
        A :class:`ContextualRepulsionHandle`; ``handle.remove()`` (or leaving its ``with`` block) takes it all off.
        Attaching again to the same transformer first removes the previous handle, so hooks never double.
    """
    pipeline = None
    transformer = model
    if not isinstance(model, torch.nn.Module) and isinstance(getattr(model, "transformer", None), torch.nn.Module):
        pipeline, transformer = model, model.transformer
        scheduler = scheduler if scheduler is not None else getattr(model, "scheduler", None)
    arch = _architecture(transformer)
    config = as_config(config, "apply_contextual_repulsion")
    previous = getattr(transformer, _ATTR, None)
    if previous is not None:
        previous.remove()
    engine = RepulsionEngine(config, record_stats=record_stats)
    handle = ContextualRepulsionHandle(transformer, engine)
    calls = _TransformerCalls(arch, engine, transformer, pipeline, scheduler, shift)
    hooks = handle._hooks
    hooks.append(transformer.register_forward_pre_hook(calls.pre_hook, with_kwargs=True))
    for name, block, where, mode in blockmap.select_blocks(arch, transformer, engine):
        hooks.append(block.register_forward_hook(calls.block_hook(name, where, mode), with_kwargs=True))
    setattr(transformer, _ATTR, handle)
    return handle


class _TransformerCalls:
    """The hooks' view of one attached transformer's calls: the pre-hook reads each call's time (as progress), row
    layout and token layout and starts the engine's call; each block hook hands its block's output to the block map.
    Holds no reference to a call's tensors after the pre-hook."""

    def __init__(
        self,
        arch: Architecture,
        engine: RepulsionEngine,
        transformer: torch.nn.Module,
        pipeline: Any,
        scheduler: Any,
        shift: float,
    ) -> None:
        self.arch = arch
        self.engine = engine
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.shift = shift
        self.reads = diffusers_reads(arch)
        self.call = Args(transformer.forward)
        self.sigma: float | None = None  # the previous call's
        self.calls = 0  # earlier calls at that sigma (the prompt's is the first)
        self.tokens: CallTokens | None = None  # the current call's token layout
        self._schedule_key: tuple[int, int] | None = None
        self._schedule_values: list[float] = []

    def schedule(self, values: Any, tail: tuple[float, ...] = ()) -> list[float]:
        """The scheduler's table as floats, read once per table (one host transfer, not one per call)."""
        key = (id(values), len(values))
        if self._schedule_key != key:
            self._schedule_key = key
            self._schedule_values = [float(v) for v in values] + list(tail)
        return self._schedule_values

    def progress_of(self, sigma: float, time: float) -> float:
        """The call's progress along the trajectory: from the scheduler's table when there is one, else from sigma."""
        scheduler = self.scheduler
        if self.reads.step_by_timesteps:
            timesteps = getattr(scheduler, "timesteps", None) if scheduler is not None else None
            if timesteps is not None and len(timesteps) > 0:
                return progress_from_schedule(time, self.schedule(timesteps, (0.0,)))  # every timestep a step
        sigmas = getattr(scheduler, "sigmas", None) if scheduler is not None else None
        if sigmas is None or len(sigmas) == 0:
            return progress_from_sigma(sigma, self.shift)
        return progress_from_schedule(sigma, self.schedule(sigmas))

    def chunks_of(self, rows: int, time: float) -> tuple[str, ...]:
        """The call's row layout: one branch per call, or the architecture's CFG rows when the pipeline batches CFG."""
        arch = self.arch
        if arch.cfg_rows is None:  # one call per branch, the prompt's first
            return ("cond",) if self.calls == 0 else ("uncond",)
        cfg_on = self._pipeline_cfg_on() and not self.reads.cfg_off(self.call, self.pipeline, time)
        return arch.cfg_rows if cfg_on and rows % len(arch.cfg_rows) == 0 else ("cond",)

    def _pipeline_cfg_on(self) -> bool:
        """Whether the pipeline batches CFG rows in this call (False without a pipeline)."""
        pipeline = self.pipeline
        if pipeline is None:
            return False
        cfg_on = getattr(pipeline, "do_classifier_free_guidance", None)
        if cfg_on is None:  # AuraFlow: a local flag in __call__, guidance_scale > 1
            scale = getattr(pipeline, "guidance_scale", None)  # a property from diffusers 0.32
            cfg_on = (
                float(scale) > 1.0 if isinstance(scale, (int, float)) else _duplicated(self.call.get("hidden_states"))
            )
        return bool(cfg_on)

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of the transformer: start the engine's call (or leave the call alone)."""
        if not self.engine.config.enabled:
            self.engine.end_call()
            return
        call = self.call
        call.args, call.kwargs = args, kwargs
        try:
            self.start_call(module)
        finally:
            call.args, call.kwargs = (), {}  # hold no reference to the call's tensors after it

    def start_call(self, module: torch.nn.Module) -> None:
        """Read the call's time, rows and tokens and begin the engine's call; end it when a layout cannot be read."""
        arch, call, engine = self.arch, self.call, self.engine
        timestep = call.get(self.reads.time_arg)
        if timestep is None:
            engine.warn_once("timestep", "[ctxrep] the transformer was called without a timestep; repulsion skipped")
            engine.end_call()
            return
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        sigma = self.reads.sigma_of_time(value)
        if self.sigma is not None and abs(sigma - self.sigma) < _SAME_SIGMA:
            self.calls += 1
        else:
            self.sigma, self.calls = sigma, 0
        first = call.get(self.reads.rows_arg)
        chunks = self.chunks_of(_rows(first), value) if first is not None else ("cond",)
        if not engine.begin_call(self.progress_of(sigma, value), chunks):
            return
        try:
            tokens = self.reads.tokens(arch, call, len(engine.chunks), module)
            reason = "" if tokens is not None else "no text it could read"
        except CallNotReadable as error:
            tokens, reason = None, str(error)
        except Exception as error:  # a call of an unexpected form: the generation must go on
            tokens, reason = None, f"{type(error).__name__}: {error}"
        if tokens is None:
            engine.warn_once(
                "layout",
                f"[ctxrep] {type(module).__name__}: the token layout of this call could not be read ({reason}); "
                "the call runs unmodified",
            )
            engine.end_call()
            return
        self.tokens = tokens

    def block_hook(self, name: str, where: blockmap.Blocks, mode: str) -> Callable:
        """The forward hook of block ``name``: its output repelled through the block map while a call is active."""
        engine = self.engine

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not engine.active:
                return None
            return blockmap.repel_block(engine, name, where, output, self.tokens, mode, inputs=(args, kwargs))

        return hook
