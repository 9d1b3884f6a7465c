"""Forge front end (lllyasviel/stable-diffusion-webui-forge, and Forge Neo): a chained model-function wrapper.

Nothing here imports Forge; it works on the objects Forge hands to a script. Mirrors, from Forge main (dfdcbab6):

- ``backend/patcher/base.py`` ``ModelPatcher.set_model_unet_function_wrapper`` / ``model_options
  ["model_function_wrapper"]``: one slot, so an existing wrapper (MultiDiffusion's) is chained, never dropped;
- ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch``: the wrapper is called as
  ``wrapper(model.apply_model, {"input", "timestep", "c", "cond_or_uncond"})``; rows are ``len(cond_or_uncond)``
  whole chunks of B rows (0 = cond, 1 = uncond; several cond chunks for AND prompts; chunks may come in separate
  calls under low VRAM); ``timestep`` is sigma; ``c["c_crossattn"]`` is the text;
- ``backend/nn/flux.py`` ``DoubleStreamBlock.forward(img, txt, vec, pe) -> (img, txt)``, ``SingleStreamBlock`` on
  ``cat((txt, img), 1)``; ``backend/nn/chroma.py`` (same shapes); ``backend/nn/mmditx.py``
  ``JointBlock -> (context, x)`` with ``context`` None on the last block;
- ``backend/modules/k_prediction.py``: flow predictors keep ``sigmas``, a table of the (shifted) sigma over evenly
  spaced model time; ``percent_to_sigma(p) = 1 - p`` on that sigma.

Block hooks are attached by the wrapper for the duration of one in-window model call and removed in ``finally``:
outside the window nothing is attached at all, and no exception, interrupt or hires pass can leave a hook on the
shared model. The wrapper itself lives only in the patched clone's ``model_options``, which Forge discards before
the next sampling.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import torch

from .. import blockmap
from ..blockmap import Architecture, CallTokens
from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..schedule import progress_from_sigma
from ..spell import ReferenceSet, SpellConfig, SpellEngine, SpellStats

_LABELS = {0: "cond", 1: "uncond"}
#: Relative tolerance when a call's sigma is placed in the predictor's table: the sampler's sigmas come from that
#: table through float32 tensors, so they match an entry only up to rounding.
_SIGMA_TOLERANCE = 1e-6
#: Flux.1's patch size, for a model that does not say (Forge's IntegratedFluxTransformer2DModel patchifies 2 x 2).
_FLUX_PATCH = 2


def architecture_of(diffusion_model: Any) -> Architecture | None:
    """The block-map entry of a Forge / Neo diffusion model, or None when contextual repulsion cannot hook it. Models
    of other class names with Flux's or MMDiT-X's block lists (forks, renamed copies) are read by their blocks."""
    arch = blockmap.recognise(diffusion_model, "forge")
    if arch is not None:
        return arch
    if hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks"):
        return blockmap.recognise_class("IntegratedFluxTransformer2DModel", "forge")
    if hasattr(diffusion_model, "joint_blocks"):
        return blockmap.recognise_class("MMDiTX", "forge")
    return None


class PredictorWindow:
    """Progress of a call from its sigma, through the predictor's own sigma table.

    Forge's flow predictors tabulate sigma over evenly spaced model time (with the model's shift applied), and its
    schedulers pick steps from that table; so the table position of a sigma is the fraction of the trajectory, and
    ``window`` = 0.05 is the first step of 20 with the "simple" schedule, as in the diffusers front end. Predictors
    without a table fall back to ``1 - sigma`` (= Forge's ``percent_to_sigma`` inverse for flow models).
    """

    def __init__(self, predictor: Any) -> None:
        table = getattr(predictor, "sigmas", None)
        self._table: list[float] | None = None
        if isinstance(table, torch.Tensor) and table.numel() > 1:
            values = [float(v) for v in table.detach().float().cpu().flatten()]
            if all(a <= b for a, b in zip(values, values[1:], strict=False)):
                self._table = values
        self._cache: dict[float, float] = {}

    def progress(self, sigma: float) -> float:
        """Fraction of the trajectory (0 = pure noise) at which a call at ``sigma`` is."""
        cached = self._cache.get(sigma)
        if cached is not None:
            return cached
        if self._table is None:
            value = progress_from_sigma(sigma)
        else:
            table = self._table
            index = bisect.bisect_left(table, sigma - _SIGMA_TOLERANCE * max(1.0, abs(sigma)))
            value = 1.0 - min(index + 1, len(table)) / len(table)
        self._cache[sigma] = value = max(0.0, min(1.0, value))
        return value


class ForgeRepulsion:
    """Contextual repulsion for one Forge job (one generation, across its batch count).

    ``patch(unet)`` installs the wrapper on a UnetPatcher *clone*; call it before every sampling. The engine (with its
    cross-batch memory) lives as long as this object: make one per job.
    """

    def __init__(self, config: RepulsionConfig, *, record_stats: bool = False) -> None:
        self.engine = RepulsionEngine(config, record_stats=record_stats)
        self.architecture: Architecture | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._tokens: CallTokens | None = None

    @property
    def config(self) -> RepulsionConfig:
        """The job's settings."""
        return self.engine.config

    @property
    def attached_hooks(self) -> int:
        """Number of block hooks currently attached (non-zero only during an in-window model call)."""
        return len(self._hooks)

    def supports(self, unet: Any) -> bool:
        """Whether ``unet``'s diffusion model has blocks this front end can hook."""
        return architecture_of(unet.model.diffusion_model) is not None

    def patch(self, unet: Any) -> bool:
        """Install the chained wrapper on ``unet`` (a clone); False (nothing installed) for unsupported models."""
        diffusion_model = unet.model.diffusion_model
        self.architecture = architecture_of(diffusion_model)
        if self.architecture is None:
            return False
        window = PredictorWindow(getattr(unet.model, "predictor", None))

        def enter(args: dict) -> None:
            self._tokens = call_tokens(diffusion_model, args)
            self._attach(diffusion_model)

        previous = unet.model_options.get("model_function_wrapper")
        unet.set_model_unet_function_wrapper(model_call_wrapper(self.engine, window, previous, enter, self._detach))
        return True

    def _attach(self, diffusion_model: torch.nn.Module) -> None:
        self._detach()
        hooked = blockmap.hooked_blocks(self.architecture, diffusion_model, self.config)
        self.engine.repelled_blocks = len(hooked)
        for name, block, where, mode in hooked:
            self._hooks.append(block.register_forward_hook(self._hook(name, where, mode), with_kwargs=True))

    def _hook(self, name: str, where: blockmap.Blocks, mode: str) -> Callable:
        engine = self.engine

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not engine.active:
                return None
            return blockmap.repel_block(engine, name, where, output, self._tokens, mode, inputs=(args, kwargs))

        return hook

    def _detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def close(self) -> None:
        """End the job: remove any hook (normally none is left) and clear the memory."""
        self._detach()
        self.engine.new_job()


def model_call_wrapper(
    engine: RepulsionEngine,
    window: PredictorWindow,
    previous: Callable | None,
    enter: Callable[[dict], None],
    leave: Callable[[], None],
) -> Callable:
    """A ``model_function_wrapper`` that brackets each in-window model call with ``engine.begin_call`` /
    ``end_call``, calling ``enter(args)`` before the model (the call's tokens, hooks) and ``leave()`` after it, even
    when the model raises. Chains ``previous`` (the wrapper another extension installed), never drops it. Forge, Neo
    and ComfyUI share this calling convention: ``wrapper(apply_model, {"input", "timestep", "c",
    "cond_or_uncond"})`` with ``timestep`` = sigma."""

    def ctxrep_model_function_wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        def call() -> torch.Tensor:
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

        if not engine.config.enabled:
            return call()
        sigma = float(args["timestep"].reshape(-1)[0])
        chunks = tuple(_LABELS.get(int(c), "cond") for c in args["cond_or_uncond"])
        if not engine.begin_call(window.progress(sigma), chunks):
            return call()
        enter(args)
        try:
            return call()
        finally:
            leave()
            engine.end_call()

    return ctxrep_model_function_wrapper


def call_tokens(diffusion_model: Any, args: dict) -> CallTokens:
    """Text length from the call's ``c_crossattn``; the target's image tokens from the latent (Flux.1 patchifies 2 x 2,
    Neo's Flux.2 Klein 1 x 1); reference tokens (Kontext) follow them and are not repelled. Neo's NextDiT (Z-Image)
    pads the caption to a multiple of its ``pad_tokens_multiple``; the padding is not repelled."""
    text = args["c"].get("c_crossattn")
    text_len = text.shape[1] if isinstance(text, torch.Tensor) else 0
    multiple = getattr(diffusion_model, "pad_tokens_multiple", None)
    if isinstance(multiple, int) and multiple > 1:
        return CallTokens(text_len + (-text_len) % multiple, (text_len,))
    latent = args["input"]
    target = None
    if latent.ndim == 4:
        patch = int(getattr(diffusion_model, "patch_size", _FLUX_PATCH) or _FLUX_PATCH)
        target = (0, ((latent.shape[-2] + patch - 1) // patch) * ((latent.shape[-1] + patch - 1) // patch))
    return CallTokens(text_len, target=target)


#: Latent space of each Forge diffusion engine (backend/diffusion_engine/*.py): models sharing a VAE share it.
LATENT_SPACES = {
    "StableDiffusion": "sd1",
    "StableDiffusion2": "sd1",
    "StableDiffusionXL": "sdxl",
    "StableDiffusionXLRefiner": "sdxl",
    "StableDiffusion3": "sd3",
    "Flux": "flux",
    "Chroma": "flux",
}


def latent_space_of(sd_model: Any) -> str:
    """The latent-space name of a Forge engine (``p.sd_model``), for checking protected sets against the model."""
    name = type(sd_model).__name__
    return LATENT_SPACES.get(name, name)


class ForgeSpell:
    """SPELL for one Forge job, on any model Forge runs (UNets and DiTs): a post-CFG function that replaces the
    denoised prediction by ``denoised + delta`` (mirrors ``backend/patcher/base.py``
    ``set_model_sampler_post_cfg_function`` and ``sampling_function_inner``'s ``fn(args) -> denoised`` loop); Forge's
    samplers step towards that prediction, so the final latents land outside the shields."""

    def __init__(self, config: SpellConfig, protected: ReferenceSet | None = None) -> None:
        self.engine = SpellEngine(config, protected)
        self._last_x0: torch.Tensor | None = None

    def patch(self, unet: Any) -> None:
        """Add the post-CFG function to ``unet`` (a clone)."""
        engine = self.engine

        def ctxrep_spell_post_cfg(args: dict) -> torch.Tensor:
            corrected = engine.correct(args["denoised"])
            self._last_x0 = corrected
            return corrected

        unet.set_model_sampler_post_cfg_function(ctxrep_spell_post_cfg)

    def radius(self, sample_shape: tuple[int, ...] | torch.Size) -> float:
        """The absolute shield radius for latents of ``sample_shape``."""
        return self.engine.config.absolute_radius(tuple(sample_shape))

    def end_batch(self, samples: torch.Tensor) -> SpellStats:
        """Remember a finished batch's final latents for the next batches of the job and return the batch's sparsity.
        ``samples`` is what the sampler returned (``post_sample``); after a hires pass (another shape) the last
        corrected prediction of the first pass stands in for it."""
        last, self._last_x0 = self._last_x0, None
        if last is not None and tuple(samples.shape) != tuple(last.shape):
            samples = last
        return self.engine.end_batch(samples)

    def close(self) -> None:
        """End the job: forget the cross-batch memory."""
        self._last_x0 = None
        self.engine.new_job()
