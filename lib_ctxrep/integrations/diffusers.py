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

Row layouts: Flux.1, Chroma, Flux.2, Qwen-Image, Lumina 2, Krea 2, Flux 3, HunyuanImage 2.1, Ovis-Image,
LongCat-Image and CogView4 pipelines call the transformer once per CFG branch, the prompt first (a second call at the
same sigma is the negative prompt's, repelled within itself); SD3, HiDream, Bria 3, AuraFlow and CogView3-Plus batch
[uncond; cond] and Z-Image [cond; uncond] when the pipeline's CFG is on (AuraFlow's pipeline has no
``do_classifier_free_guidance``: its ``guidance_scale`` > 1 is read instead). Z-Image, Lumina 2, Krea 2 and Flux 3
have no dual-stream blocks: their single-stream blocks play that role, chosen by ``blocks``, and only text tokens are
repelled (``single_blocks`` has no effect there).
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
from ..config import RepulsionConfig, as_config
from ..engine import RepulsionEngine
from ..schedule import progress_from_schedule, progress_from_sigma

SUPPORTED_CLASSES = tuple(c for a in blockmap.ARCHITECTURES if a.host == "diffusers" for c in a.classes)
_ATTR = "_ctxrep_handle"


#: Model time per unit of sigma in families trained on 1000 discrete timesteps (SD3, HiDream, ...): t = 1000 sigma.
_TIMESTEPS_PER_SIGMA = 1000.0
#: Two calls whose sigmas differ by less are at the same step (the prompt's and the negative prompt's call); steps
#: are far further apart, so this only absorbs rounding of the timestep.
_SAME_SIGMA = 1e-7
#: Z-Image's forward defaults when the call leaves them out: 2 x 2 spatial patches, one frame per patch.
_Z_IMAGE_PATCH = 2
_Z_IMAGE_FRAME_PATCH = 1


def _per_mille(t: float) -> float:
    return t / _TIMESTEPS_PER_SIGMA


def _one_minus(t: float) -> float:
    return 1.0 - t


#: Model time -> sigma, per family whose pipeline does not pass sigma (sigma x 1000, or 1 - sigma).
_SIGMA_OF_TIME: dict[str, Callable[[float], float]] = {
    "SD3": _per_mille,
    "Z-Image": _one_minus,
    "HiDream": _per_mille,
    "Lumina 2": _one_minus,
    "HunyuanImage 2.1": _per_mille,
    "Bria 3": _per_mille,
    "CogView4": _per_mille,
    "CogView3-Plus": _per_mille,
}
#: The forward argument holding the model time, where it is not ``timestep``.
_TIME_ARG = {"Z-Image": "t", "HiDream": "timesteps"}
#: The forward argument holding the text padding mask ([rows, text] or longer; nonzero = real), where it is not
#: ``encoder_hidden_states_mask``.
_MASK_ARG = {
    "Chroma": "attention_mask",
    "Lumina 2": "encoder_attention_mask",
    "Krea 2": "encoder_attention_mask",
    "HunyuanImage 2.1": "encoder_attention_mask",
}
#: Families whose pipelines pad the text with zero rows and pass no mask: the zero rows are the padding.
_ZERO_PADDED = frozenset({"Ovis-Image", "Bria 3", "AuraFlow"})
#: Families whose model time is not a sigma of the scheduler's (CogView4 passes unshifted timesteps while its
#: scheduler steps shifted sigmas; CogView3-Plus is a DDPM): the step is found in ``scheduler.timesteps``.
_STEP_BY_TIMESTEPS = frozenset({"CogView4", "CogView3-Plus"})
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


def attached_handle(model: Any) -> ContextualRepulsionHandle | None:
    """The handle attached to ``model`` (a transformer, or a pipeline whose ``.transformer`` is one), or None: lets a
    caller check that a model is free before attaching its own (attaching again would replace, and so clear, it)."""
    transformer = model if isinstance(model, torch.nn.Module) else getattr(model, "transformer", None)
    return getattr(transformer, _ATTR, None)


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


def _duplicated(latents: Any) -> bool:
    """Whether the rows of ``latents`` are two identical halves: ``torch.cat([latents] * 2)``, a pipeline's CFG
    batch, where nothing else says whether CFG is on (AuraFlowPipeline in diffusers 0.31)."""
    if not isinstance(latents, torch.Tensor) or latents.shape[0] % 2:
        return False
    half = latents.shape[0] // 2
    return bool(torch.equal(latents[:half], latents[half:]))


def _padded(tokens: int, multiple: int) -> int:
    return tokens + (-tokens) % multiple


def _per_chunk(values: torch.Tensor, chunks: int, reduce: Callable[[torch.Tensor], int]) -> tuple[int, ...]:
    """``reduce`` of each chunk's rows of ``values`` ([rows, ...])."""
    per_chunk = values.shape[0] // chunks
    return tuple(reduce(values[c * per_chunk : (c + 1) * per_chunk]) for c in range(chunks))


def _tokens(arch: Architecture, call: _Call, chunks: int, multiple: int, model: Any = None) -> CallTokens | None:
    """The token layout of this call (None when it cannot be read: the call is then left unmodified)."""
    if arch.family == "Z-Image":
        return _z_image_tokens(call, chunks, multiple)
    if arch.family == "HiDream":
        return _hidream_tokens(call, model)
    text = call.get("encoder_hidden_states")
    if not isinstance(text, torch.Tensor):
        return None
    text_len = text.shape[1]
    mask = call.get(_MASK_ARG.get(arch.family, "encoder_hidden_states_mask"))
    if arch.family in _ZERO_PADDED:
        mask = (text != 0).any(-1)
    if arch.family == "AuraFlow":  # 8 learned register tokens lead the text stream
        registers = int(model.register_tokens.shape[1])
        mask = torch.cat([mask.new_ones(mask.shape[0], registers), mask], dim=1)
        text_len += registers
    valid: tuple[int, ...] = ()
    if arch.family == "Lumina 2":  # each row's joint sequence holds its real caption tokens only, then the image
        if not isinstance(mask, torch.Tensor):
            return None
        lengths = mask.bool().sum(1)
        return CallTokens(int(lengths.max()), _per_chunk(lengths, chunks, lambda n: int(n.min())))
    if arch.family == "HunyuanImage 2.1":
        text_2, mask_2 = call.get("encoder_hidden_states_2"), call.get("encoder_attention_mask_2")
        masks = isinstance(mask, torch.Tensor) and isinstance(mask_2, torch.Tensor)
        if masks and isinstance(text_2, torch.Tensor) and getattr(model, "context_embedder_2", None) is not None:
            # the model moves each row's valid byT5 and MLLM tokens first, padding after them
            lengths = mask.bool().sum(1) + mask_2.bool().sum(1)
            return CallTokens(text_len + text_2.shape[1], _per_chunk(lengths, chunks, lambda n: int(n.min())))
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        valid = _per_chunk(mask, chunks, lambda rows: blockmap.leading_valid(rows, text_len))
    if arch.text_tail:
        valid = tuple(min(v, text_len - arch.text_tail) for v in valid or (text_len,))
    image = call.get("hidden_states")
    target = None
    if isinstance(image, torch.Tensor) and image.ndim == 3 and arch.single is not None:
        target = blockmap.target_span(call.get("img_ids"), image.shape[1], arch.target_id)
    return CallTokens(text_len, valid, target=target)


def _hidream_tokens(call: _Call, model: Any) -> CallTokens | None:
    """HiDream's text stream in every block: [T5; last Llama layer; this block's Llama layer], the last part
    discarded after the block (never repelled); its single-stream sequence: [image (padded to ``max_seq`` when not
    square); that text]."""
    t5, llama, image = (
        call.get(n) for n in ("encoder_hidden_states_t5", "encoder_hidden_states_llama3", "hidden_states")
    )
    if not all(isinstance(x, torch.Tensor) for x in (t5, llama, image)):
        return None
    kept = t5.shape[1] + llama.shape[-2]
    if image.ndim == 4:  # latents [rows, channels, height, width]: patchified in the model
        patch = int(model.config.patch_size)
        target = (image.shape[-2] // patch) * (image.shape[-1] // patch)
        image_len = target if image.shape[-2] == image.shape[-1] else int(model.max_seq)
    else:  # already patchified, with hidden_states_masks marking the real image tokens
        image_len = image.shape[1]
        target = blockmap.leading_valid(call.get("hidden_states_masks"), image_len)
    return CallTokens(kept + llama.shape[-2], (kept,), image_len=image_len, target=(0, target))


def _z_image_tokens(call: _Call, chunks: int, multiple: int) -> CallTokens | None:
    """Z-Image's unified sequence per row: [image (padded), caption (padded)], each padded to a multiple of 32."""
    images, captions = call.get("x"), call.get("cap_feats")
    if not isinstance(images, (list, tuple)) or not isinstance(captions, (list, tuple)) or not images:
        return None
    if isinstance(images[0], (list, tuple)):
        return None  # omni mode ([caption, images, siglip]): not supported
    patch = int(call.get("patch_size") or _Z_IMAGE_PATCH)
    frames = int(call.get("f_patch_size") or _Z_IMAGE_FRAME_PATCH)
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
            Z-Image, SD3, HiDream, Lumina 2, Krea 2, Flux 3, HunyuanImage 2.1, Ovis-Image, LongCat-Image, Bria 3,
            AuraFlow, CogView4, CogView3-Plus), or a pipeline (FluxPipeline, FluxKontextPipeline, Flux2Pipeline,
            QwenImagePipeline, ZImagePipeline, StableDiffusion3Pipeline, ...) whose ``.transformer`` is one. Given a
            pipeline, the window is read from ``pipeline.scheduler`` (its ``timesteps`` for CogView4 and
            CogView3-Plus) and batched CFG rows (SD3, Z-Image, HiDream, Bria 3, AuraFlow, CogView3-Plus) from the
            pipeline's CFG state.
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
    hooked = blockmap.hooked_blocks(arch, transformer, config)
    engine.repelled_blocks = len(hooked)
    for name, block, where, mode in hooked:
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
        self.call = _Call(transformer)
        self.sigma_of_time = _SIGMA_OF_TIME.get(arch.family, float)
        module = sys.modules.get(type(transformer).__module__)
        self.multiple = int(getattr(module, "SEQ_MULTI_OF", _Z_IMAGE_SEQ_MULTIPLE))
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
        if self.arch.family in _STEP_BY_TIMESTEPS:
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
        cfg_on = self._pipeline_cfg_on()
        if arch.family == "SD3" and self.call.get("skip_layers") is not None:
            cfg_on = False  # skip-layer guidance: an extra call on the prompt's rows alone
        truncation = getattr(self.pipeline, "_cfg_truncation", None) if arch.family == "Z-Image" else None
        if isinstance(truncation, (int, float)) and truncation <= 1 and time > truncation:
            cfg_on = False  # ZImagePipeline drops CFG (the prompt's rows alone) once its t = 1 - sigma passes this
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
        timestep = call.get(_TIME_ARG.get(arch.family, "timestep"))
        if timestep is None:
            engine.warn_once("timestep", "[ctxrep] the transformer was called without a timestep; repulsion skipped")
            engine.end_call()
            return
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        sigma = self.sigma_of_time(value)
        if self.sigma is not None and abs(sigma - self.sigma) < _SAME_SIGMA:
            self.calls += 1
        else:
            self.sigma, self.calls = sigma, 0
        first = call.get("hidden_states") if arch.family != "Z-Image" else call.get("x")
        chunks = self.chunks_of(_rows(first), value) if first is not None else ("cond",)
        if not engine.begin_call(self.progress_of(sigma, value), chunks):
            return
        tokens = _tokens(arch, call, len(engine.chunks), self.multiple, module)
        if tokens is None:
            engine.warn_once(
                "layout",
                f"[ctxrep] {type(module).__name__}: the token layout of this call could not be read (text length, "
                "padding, image tokens); the call runs unmodified",
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
