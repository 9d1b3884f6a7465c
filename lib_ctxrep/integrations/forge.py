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

from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..schedule import progress_from_sigma
from ..spell import ReferenceSet, SpellConfig, SpellEngine, SpellStats

#: Diffusion-model classes whose blocks are hooked, and how their text stream is laid out.
SUPPORTED_MODELS = {
    "IntegratedFluxTransformer2DModel": "flux",
    "IntegratedChromaTransformer2DModel": "flux",
    "MMDiTX": "mmditx",
}
_LABELS = {0: "cond", 1: "uncond"}


def model_kind(diffusion_model: Any) -> str | None:
    """'flux' (double + single blocks, txt at output index 1), 'mmditx' (joint blocks, context at index 0) or None."""
    kind = SUPPORTED_MODELS.get(type(diffusion_model).__name__)
    if kind is not None:
        return kind
    if hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks"):
        return "flux"
    if hasattr(diffusion_model, "joint_blocks"):
        return "mmditx"
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
            index = bisect.bisect_left(table, sigma - 1e-6 * max(1.0, abs(sigma)))
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
        self.kind: str | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._text_len = 0
        self._image_tokens: int | None = None

    @property
    def config(self) -> RepulsionConfig:
        """The job's settings."""
        return self.engine.config

    @property
    def attached_hooks(self) -> int:
        """Number of block hooks currently attached (non-zero only during an in-window model call)."""
        return len(self._hooks)

    def supports(self, unet: Any) -> bool:
        """Whether ``unet``'s diffusion model has MM-DiT blocks this front end can hook."""
        return model_kind(unet.model.diffusion_model) is not None

    def patch(self, unet: Any) -> bool:
        """Install the chained wrapper on ``unet`` (a clone); False (nothing installed) for unsupported models."""
        diffusion_model = unet.model.diffusion_model
        self.kind = model_kind(diffusion_model)
        if self.kind is None:
            return False
        window = PredictorWindow(getattr(unet.model, "predictor", None))
        previous: Callable | None = unet.model_options.get("model_function_wrapper")
        engine = self.engine

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
            text = args["c"].get("c_crossattn")
            self._text_len = text.shape[1] if isinstance(text, torch.Tensor) else 0
            latent = args["input"]
            # Target image tokens (Flux.1 patchifies 2 x 2, Neo's Flux.2 Klein 1 x 1); reference tokens (Kontext)
            # follow them and are not repelled
            patch = int(getattr(diffusion_model, "patch_size", 2) or 2)
            rows, cols = (latent.shape[-2] + patch - 1) // patch, (latent.shape[-1] + patch - 1) // patch
            self._image_tokens = rows * cols if latent.ndim == 4 else None
            self._attach(diffusion_model)
            try:
                return call()
            finally:
                self._detach()
                engine.end_call()

        unet.set_model_unet_function_wrapper(ctxrep_model_function_wrapper)
        return True

    def _attach(self, diffusion_model: torch.nn.Module) -> None:
        self._detach()
        cfg = self.config
        engine = self.engine
        if self.kind == "mmditx":
            blocks = diffusion_model.joint_blocks
            for i in cfg.block_indices(len(blocks)):
                self._hooks.append(blocks[i].register_forward_hook(_replace_output(engine, f"double.{i}", 0)))
            return
        blocks = diffusion_model.double_blocks
        for i in cfg.block_indices(len(blocks)):
            self._hooks.append(blocks[i].register_forward_hook(_replace_output(engine, f"double.{i}", 1)))
        if cfg.single_blocks != "off":
            for i, block in enumerate(diffusion_model.single_blocks):
                self._hooks.append(block.register_forward_hook(self._single_hook(f"single.{i}", cfg.single_blocks)))

    def _single_hook(self, name: str, mode: str) -> Callable:
        engine = self.engine

        def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            if not engine.active or not isinstance(output, torch.Tensor):
                return None
            if mode == "text":
                return engine.process_prefix(name, output, self._text_len)
            image = output.shape[1] - self._text_len if self._image_tokens is None else self._image_tokens
            return engine.process_prefix(name, output, self._text_len + image, memory_length=self._text_len)

        return hook

    def _detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def close(self) -> None:
        """End the job: remove any hook (normally none is left) and clear the memory."""
        self._detach()
        self.engine.new_job()


def _replace_output(engine: RepulsionEngine, name: str, index: int) -> Callable:
    """Forward hook replacing element ``index`` (the text stream) of a block's output tuple."""

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if not engine.active or not isinstance(output, tuple) or output[index] is None:
            return None
        new = engine.process(name, [output[index]])
        if new is None:
            return None
        out = list(output)
        out[index] = new[0]
        return tuple(out)

    return hook


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
