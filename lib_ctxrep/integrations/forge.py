"""Forge front end (lllyasviel/stable-diffusion-webui-forge, and Forge Neo): a chained model-function wrapper.

Nothing here imports Forge; it works on the objects Forge hands to a script, through what the k-diffusion hosts
share (:mod:`lib_ctxrep.integrations.kdiffusion`). Mirrors, from Forge main (dfdcbab6):

- ``backend/patcher/base.py`` ``ModelPatcher.set_model_unet_function_wrapper`` / ``model_options
  ["model_function_wrapper"]``: one slot, so an existing wrapper (MultiDiffusion's) is chained, never dropped;
- ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch`` (the wrapper's calling convention);
- ``backend/modules/k_prediction.py``: flow predictors keep ``sigmas``, a table of the (shifted) sigma over evenly
  spaced model time.

Which blocks a model has, and how its calls are read, is in its family's entry (:mod:`lib_ctxrep.families`, host
"forge"). Block hooks are attached by the wrapper for the duration of one in-window model call and removed in
``finally``: outside the window nothing is attached at all, and no exception, interrupt or hires pass can leave a
hook on the shared model. The wrapper itself lives only in the patched clone's ``model_options``, which Forge discards
before the next sampling.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import families
from ..blockmap import Architecture
from ..spell import SpellStats
from .kdiffusion import KRepulsion, PostCfgSpell, PredictorWindow, model_call_wrapper

__all__ = ["ForgeRepulsion", "ForgeSpell", "PredictorWindow", "architecture_of", "model_call_wrapper"]


def architecture_of(diffusion_model: Any) -> Architecture | None:
    """The family entry of a Forge / Neo diffusion model, or None when contextual repulsion cannot hook it (models of
    other class names with a family's block lists, forks and renamed copies, are recognised by those)."""
    return families.recognise(diffusion_model, "forge")


class ForgeRepulsion(KRepulsion):
    """Contextual repulsion for one Forge job (one generation, across its batch count).

    ``patch(unet)`` installs the wrapper on a UnetPatcher *clone*; call it before every sampling. The engine (with its
    cross-batch memory) lives as long as this object: make one per job.
    """

    def supports(self, unet: Any) -> bool:
        """Whether ``unet``'s diffusion model has blocks this front end can hook."""
        return architecture_of(unet.model.diffusion_model) is not None

    def patch(self, unet: Any) -> bool:
        """Install the chained wrapper on ``unet`` (a clone); False (nothing installed) for unsupported models."""
        diffusion_model = unet.model.diffusion_model
        self.architecture = architecture_of(diffusion_model)
        if self.architecture is None:
            return False
        previous = unet.model_options.get("model_function_wrapper")
        predictor = getattr(unet.model, "predictor", None)
        unet.set_model_unet_function_wrapper(self.wrapper(diffusion_model, predictor, previous, hooks=True))
        return True


class ForgeSpell(PostCfgSpell):
    """SPELL for one Forge job, on any model Forge runs (UNets and DiTs), as a post-CFG function on the UNet patcher
    clone (mirrors ``backend/patcher/base.py`` ``set_model_sampler_post_cfg_function`` and
    ``sampling_function_inner``'s ``fn(args) -> denoised`` loop)."""

    def patch(self, unet: Any) -> None:
        """Add the post-CFG function to ``unet`` (a clone)."""
        unet.set_model_sampler_post_cfg_function(self.post_cfg())

    def radius(self, sample_shape: tuple[int, ...] | torch.Size) -> float:
        """The absolute shield radius for latents of ``sample_shape``."""
        return self.engine.config.absolute_radius(tuple(sample_shape))

    def end_batch(self, samples: torch.Tensor) -> SpellStats:
        """Remember a finished batch's final latents for the next batches of the job and return the batch's sparsity.
        ``samples`` is what the sampler returned (``post_sample``); after a hires pass (another shape) the last
        corrected prediction of the first pass stands in for it."""
        last = self.take_last()
        if last is not None and tuple(samples.shape) != tuple(last.shape):
            samples = last
        return super().end_batch(samples)
