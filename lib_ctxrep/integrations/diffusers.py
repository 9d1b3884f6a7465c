"""diffusers front end: torch hooks on FluxTransformer2DModel / SD3Transformer2DModel blocks -> RepulsionEngine.

Works with diffusers 0.31 (what Forge pins) up to current releases; diffusers itself is never imported here (the
supported classes are recognised by name), and only plain torch hooks are used (diffusers' own hook registry only
exists from 0.33).

- A forward pre-hook on the transformer reads the call's timestep (sigma) and row layout and starts the engine's call.
  The call state lasts until the next call, so gradient-checkpointing recomputation during backward repeats exactly
  the same update (keep the handle attached until backward is done).
- A forward hook on each selected dual-stream block replaces the block's text-stream output
  (``encoder_hidden_states``, element 0 of the returned tuple) by its repelled version; the image stream is returned
  as it came. SD3's last block returns no text stream and is left alone.
- Flux single-stream blocks ("text" or "all" tokens): before diffusers 0.35 they take and return the concatenated
  [text; image] sequence, from 0.35 on they return ``(encoder_hidden_states, hidden_states)``; both are handled.
  Kontext's reference-image tokens (image ids with a first coordinate of 1) are never repelled: they are the input.
Hooks read only the output, so positional calls (gradient checkpointing) work too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..schedule import progress_from_schedule, progress_from_sigma

SUPPORTED_CLASSES = ("FluxTransformer2DModel", "SD3Transformer2DModel")
_ATTR = "_ctxrep_handle"
_TIMESTEP_POSITION = 3  # forward(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, ...)
_IMG_IDS_POSITION = 4


def _model_kind(module: Any) -> str:
    names = {cls.__name__ for cls in type(module).__mro__}
    if "FluxTransformer2DModel" in names:
        return "flux"
    if "SD3Transformer2DModel" in names:
        return "sd3"
    raise TypeError(
        f"apply_contextual_repulsion: {type(module).__name__} is not supported; supported transformers are "
        f"{', '.join(SUPPORTED_CLASSES)} (or a pipeline whose .transformer is one of them)"
    )


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


class _CallState:
    """Per-call facts the transformer pre-hook reads and the block hooks use."""

    def __init__(self) -> None:
        self.text_len = 0
        self.target_tokens: int | None = None  # image tokens of the target (Kontext appends reference tokens)
        self.sigma: float | None = None
        self.calls_at_sigma = 0


def apply_contextual_repulsion(
    model: Any,
    config: RepulsionConfig | None = None,
    *,
    scheduler: Any = None,
    shift: float = 1.0,
    record_stats: bool = False,
) -> ContextualRepulsionHandle:
    """Attach contextual repulsion to a diffusers Flux / SD3 transformer, or to a pipeline that has one.

    Args:
        model: a ``FluxTransformer2DModel`` or ``SD3Transformer2DModel``, or a pipeline (FluxPipeline,
            FluxKontextPipeline, StableDiffusion3Pipeline, ...) whose ``.transformer`` is one. Given a pipeline, the
            window is read from ``pipeline.scheduler`` and SD3's [uncond; cond] batching from the pipeline's CFG state.
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
    kind = _model_kind(transformer)
    config = config if config is not None else RepulsionConfig()
    previous = getattr(transformer, _ATTR, None)
    if previous is not None:
        previous.remove()
    engine = RepulsionEngine(config, record_stats=record_stats)
    handle = ContextualRepulsionHandle(transformer, engine)
    state = _CallState()
    schedule_cache: dict[str, Any] = {"key": None, "values": None}

    def progress_of(sigma: float) -> float:
        sigmas = getattr(scheduler, "sigmas", None) if scheduler is not None else None
        if sigmas is None or len(sigmas) == 0:
            return progress_from_sigma(sigma, shift)
        key = (id(sigmas), len(sigmas))
        if schedule_cache["key"] != key:
            schedule_cache["key"] = key
            schedule_cache["values"] = [float(s) for s in sigmas]
        return progress_from_schedule(sigma, schedule_cache["values"])

    def chunks_of(kwargs: dict[str, Any]) -> tuple[str, ...]:
        if kind == "sd3":
            cfg_on = bool(getattr(pipeline, "do_classifier_free_guidance", False)) if pipeline is not None else False
            return ("uncond", "cond") if cfg_on and kwargs.get("skip_layers") is None else ("cond",)
        # Flux pipelines call the transformer once per branch, cond first (true CFG sends the negative second).
        return ("cond",) if state.calls_at_sigma == 0 else ("uncond",)

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        state.text_len = text.shape[1] if text is not None else 0
        if not config.enabled:
            engine.end_call()
            return
        timestep = kwargs.get("timestep", args[_TIMESTEP_POSITION] if len(args) > _TIMESTEP_POSITION else None)
        if timestep is None:
            engine.warn_once("timestep", "[ctxrep] the transformer was called without a timestep; repulsion skipped")
            engine.end_call()
            return
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        sigma = value / 1000.0 if kind == "sd3" else value
        if state.sigma is not None and abs(sigma - state.sigma) < 1e-7:
            state.calls_at_sigma += 1
        else:
            state.sigma, state.calls_at_sigma = sigma, 0
        active = engine.begin_call(progress_of(sigma), chunks_of(kwargs))
        state.target_tokens = None
        if active and kind == "flux" and config.single_blocks == "all":
            ids = kwargs.get("img_ids", args[_IMG_IDS_POSITION] if len(args) > _IMG_IDS_POSITION else None)
            if isinstance(ids, torch.Tensor):
                ids = ids[0] if ids.ndim == 3 else ids
                # Kontext marks reference-image tokens with a first id of 1; they are the input image, not repelled
                state.target_tokens = int((ids[:, 0] == 0).sum())

    def double_hook(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            if not engine.active or output[0] is None:
                return None
            new = engine.process(name, [output[0]])
            return None if new is None else (new[0], *output[1:])

        return hook

    def single_hook(name: str, mode: str):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            if not engine.active:
                return None
            if isinstance(output, tuple):  # diffusers >= 0.35: (encoder_hidden_states, hidden_states)
                text, image = output[0], output[1]
                if mode == "text":
                    new = engine.process(name, [text])
                    return None if new is None else (new[0], image, *output[2:])
                target = image.shape[1] if state.target_tokens is None else state.target_tokens
                new = engine.process(name, [text, image[:, :target]], memory_parts=1)
                if new is None:
                    return None
                new_image = new[1] if target >= image.shape[1] else torch.cat([new[1], image[:, target:]], dim=1)
                return (new[0], new_image, *output[2:])
            length = state.text_len  # diffusers < 0.35: one [text; image] sequence
            if mode == "text":
                return engine.process_prefix(name, output, length)
            target = output.shape[1] - length if state.target_tokens is None else state.target_tokens
            return engine.process_prefix(name, output, length + target, memory_length=length)

        return hook

    hooks = handle._hooks
    hooks.append(transformer.register_forward_pre_hook(pre_hook, with_kwargs=True))
    double_blocks: Sequence[torch.nn.Module] = transformer.transformer_blocks
    for i in config.block_indices(len(double_blocks)):
        hooks.append(double_blocks[i].register_forward_hook(double_hook(f"double.{i}")))
    if kind == "flux" and config.single_blocks != "off":
        for i, block in enumerate(transformer.single_transformer_blocks):
            hooks.append(block.register_forward_hook(single_hook(f"single.{i}", config.single_blocks)))
    setattr(transformer, _ATTR, handle)
    return handle
