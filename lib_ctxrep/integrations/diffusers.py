"""diffusers front end: torch hooks on a diffusers transformer's blocks -> RepulsionEngine, through the block map.

Works with diffusers 0.31 (what Forge pins) up to current releases; diffusers itself is never imported here (the
supported classes are recognised by name in ``lib_ctxrep.blockmap``), and only plain torch hooks are used (diffusers'
own hook registry only exists from 0.33).

What this file knows is only what the block map cannot: how each transformer's ``forward`` is called. A forward
pre-hook on the transformer reads the call's timestep (as sigma), its row layout and its token layout (text length,
text padding, the target's image tokens) and starts the engine's call; a forward hook on each selected block hands its
output to :func:`lib_ctxrep.blockmap.repel_block`. The call state lasts until the next call, so
gradient-checkpointing recomputation during backward repeats exactly the same update (keep the handle attached until
backward is done). Hooks read only the output, so positional calls (gradient checkpointing) work too.

Row layouts: Flux.1, Chroma, Flux.2 and Qwen-Image pipelines call the transformer once per CFG branch, the prompt
first (a second call at the same sigma is the negative prompt's, repelled within itself); SD3 batches [uncond; cond]
and Z-Image [cond; uncond] when the pipeline's CFG is on. Z-Image has no dual-stream blocks: its ``layers`` (the
single stream over [image; caption]) play their role, chosen by ``blocks``, and only caption tokens are repelled
(``single_blocks`` has no effect there).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from .. import blockmap
from ..blockmap import Architecture, CallTokens
from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..schedule import progress_from_schedule, progress_from_sigma

SUPPORTED_CLASSES = tuple(c for a in blockmap.ARCHITECTURES if a.host == "diffusers" for c in a.classes)
_ATTR = "_ctxrep_handle"
#: Model time -> sigma, per family whose pipeline does not pass sigma (SD3: sigma x 1000; Z-Image: 1 - sigma).
_SIGMA_OF_TIME: dict[str, Callable[[float], float]] = {"SD3": lambda t: t / 1000.0, "Z-Image": lambda t: 1.0 - t}
#: Z-Image pads captions and images to a multiple of this many tokens (transformer_z_image.SEQ_MULTI_OF).
_Z_IMAGE_SEQ_MULTIPLE = 32


def _architecture(module: Any) -> Architecture:
    arch = blockmap.recognise(module, "diffusers")
    if arch is None:
        raise TypeError(
            f"apply_contextual_repulsion: {type(module).__name__} is not supported; supported transformers are "
            f"{', '.join(blockmap.supported('diffusers'))} (or a pipeline whose .transformer is one of them)"
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


class _Call:
    """Reads one transformer's ``forward`` arguments by name, whether passed by keyword or by position."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        try:
            self._names = list(inspect.signature(transformer.forward).parameters)
        except (TypeError, ValueError):
            self._names = []
        self.args: tuple = ()
        self.kwargs: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        index = self._names.index(name) if name in self._names else -1
        return self.args[index] if 0 <= index < len(self.args) else None


def _rows(value: Any) -> int:
    return len(value) if isinstance(value, (list, tuple)) else int(value.shape[0])


def _padded(tokens: int, multiple: int) -> int:
    return tokens + (-tokens) % multiple


def _tokens(arch: Architecture, call: _Call, chunks: int, multiple: int) -> CallTokens | None:
    """The token layout of this call (None when it cannot be read: the call is then left unmodified)."""
    if arch.family == "Z-Image":
        return _z_image_tokens(call, chunks, multiple)
    text = call.get("encoder_hidden_states")
    if not isinstance(text, torch.Tensor):
        return None
    text_len = text.shape[1]
    mask = call.get("attention_mask") if arch.family == "Chroma" else call.get("encoder_hidden_states_mask")
    valid: tuple[int, ...] = ()
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        per_chunk = mask.shape[0] // chunks
        valid = tuple(
            blockmap.leading_valid(mask[c * per_chunk : (c + 1) * per_chunk], text_len) for c in range(chunks)
        )
    image = call.get("hidden_states")
    target = None
    if isinstance(image, torch.Tensor) and arch.single is not None:
        target = blockmap.target_span(call.get("img_ids"), image.shape[1])
    return CallTokens(text_len, valid, target=target)


def _z_image_tokens(call: _Call, chunks: int, multiple: int) -> CallTokens | None:
    """Z-Image's unified sequence per row: [image (padded), caption (padded)], each padded to a multiple of 32."""
    images, captions = call.get("x"), call.get("cap_feats")
    if not isinstance(images, (list, tuple)) or not isinstance(captions, (list, tuple)) or not images:
        return None
    if isinstance(images[0], (list, tuple)):
        return None  # omni mode ([caption, images, siglip]): not supported
    patch = int(call.get("patch_size") or 2)
    frames = int(call.get("f_patch_size") or 1)
    image_lens = {_padded(math.prod(x.shape[-3:]) // (frames * patch * patch), multiple) for x in images}
    if len(image_lens) != 1:
        return None  # images of different sizes in one call: the caption starts at different places
    lengths = [int(c.shape[0]) for c in captions]
    per_chunk = len(lengths) // chunks
    valid = tuple(min(lengths[c * per_chunk : (c + 1) * per_chunk]) for c in range(chunks))
    text_len = max(_padded(n, multiple) for n in lengths)
    return CallTokens(text_len, valid, image_len=image_lens.pop())


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
        model: a supported transformer (``blockmap.supported("diffusers")``: Flux.1, Chroma, Flux.2, Qwen-Image,
            Z-Image, SD3), or a pipeline (FluxPipeline, FluxKontextPipeline, Flux2Pipeline, QwenImagePipeline,
            ZImagePipeline, StableDiffusion3Pipeline, ...) whose ``.transformer`` is one. Given a pipeline, the window
            is read from ``pipeline.scheduler`` and batched CFG rows (SD3, Z-Image) from the pipeline's CFG state.
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
    config = config if config is not None else RepulsionConfig()
    previous = getattr(transformer, _ATTR, None)
    if previous is not None:
        previous.remove()
    engine = RepulsionEngine(config, record_stats=record_stats)
    handle = ContextualRepulsionHandle(transformer, engine)
    call = _Call(transformer)
    sigma_of_time = _SIGMA_OF_TIME.get(arch.family, float)
    multiple = int(getattr(sys.modules.get(type(transformer).__module__), "SEQ_MULTI_OF", _Z_IMAGE_SEQ_MULTIPLE))
    state: dict[str, Any] = {"sigma": None, "calls": 0, "tokens": None}
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

    def chunks_of(rows: int, time: float) -> tuple[str, ...]:
        if arch.cfg_rows is None:  # one call per branch, the prompt's first
            return ("cond",) if state["calls"] == 0 else ("uncond",)
        cfg_on = bool(getattr(pipeline, "do_classifier_free_guidance", False)) if pipeline is not None else False
        if arch.family == "SD3" and call.get("skip_layers") is not None:
            cfg_on = False  # skip-layer guidance: an extra call on the prompt's rows alone
        truncation = getattr(pipeline, "_cfg_truncation", None) if arch.family == "Z-Image" else None
        if isinstance(truncation, (int, float)) and truncation <= 1 and time > truncation:
            cfg_on = False  # ZImagePipeline drops CFG (the prompt's rows alone) once its t = 1 - sigma passes this
        return arch.cfg_rows if cfg_on and rows % len(arch.cfg_rows) == 0 else ("cond",)

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not config.enabled:
            engine.end_call()
            return
        call.args, call.kwargs = args, kwargs
        timestep = call.get("timestep") if arch.family != "Z-Image" else call.get("t")
        if timestep is None:
            engine.warn_once("timestep", "[ctxrep] the transformer was called without a timestep; repulsion skipped")
            engine.end_call()
            return
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        sigma = sigma_of_time(value)
        if state["sigma"] is not None and abs(sigma - state["sigma"]) < 1e-7:
            state["calls"] += 1
        else:
            state["sigma"], state["calls"] = sigma, 0
        first = call.get("hidden_states") if arch.family != "Z-Image" else call.get("x")
        chunks = chunks_of(_rows(first), value) if first is not None else ("cond",)
        if not engine.begin_call(progress_of(sigma), chunks):
            return
        tokens = _tokens(arch, call, len(engine.chunks), multiple)
        call.args, call.kwargs = (), {}
        if tokens is None:
            engine.warn_once(
                "layout",
                f"[ctxrep] {type(module).__name__}: the token layout of this call could not be read (text length, "
                "padding, image tokens); the call runs unmodified",
            )
            engine.end_call()
            return
        state["tokens"] = tokens

    def block_hook(name: str, where: blockmap.Blocks, mode: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            if not engine.active:
                return None
            return blockmap.repel_block(engine, name, where, output, state["tokens"], mode)

        return hook

    hooks = handle._hooks
    hooks.append(transformer.register_forward_pre_hook(pre_hook, with_kwargs=True))
    hooked = blockmap.hooked_blocks(arch, transformer, config)
    engine.repelled_blocks = len(hooked)
    for name, block, where, mode in hooked:
        hooks.append(block.register_forward_hook(block_hook(name, where, mode)))
    setattr(transformer, _ATTR, handle)
    return handle
