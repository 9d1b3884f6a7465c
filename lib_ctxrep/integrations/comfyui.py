"""ComfyUI front end: contextual repulsion and SPELL as patches on a ``ModelPatcher`` clone.

Nothing here imports ComfyUI; it works on the ``MODEL`` object a node receives. Mirrors, from ComfyUI (upstream
comfyanonymous/ComfyUI and the pip-installable fork hiddenswitch/pip-and-uv-installable-ComfyUI 0.12.1):

- ``comfy/model_patcher.py``: ``clone()`` (deep-copies ``model_options``; functions are kept, not copied),
  ``set_model_unet_function_wrapper`` (one slot: an existing wrapper is chained, never dropped),
  ``set_model_patch_replace(patch, "dit", "double_block" | "single_block", i)`` (one per block: an existing one is
  chained), ``set_model_patch(patch, "double_block")`` (a list: appended), ``set_model_sampler_post_cfg_function``
  (a list), ``add_wrapper_with_key("outer_sample", key, wrapper)``;
- ``comfy/samplers.py`` ``calc_cond_batch``: the wrapper is called as ``wrapper(model.apply_model, {"input",
  "timestep", "c", "cond_or_uncond"})``, rows being ``len(cond_or_uncond)`` whole chunks of B rows (0 = cond,
  1 = uncond; chunks come in separate calls when memory is short); ``timestep`` is sigma; post-CFG functions get
  ``{"denoised", "sigma", ...}`` and return the prediction to use;
- ``comfy/ldm/flux/model.py``, ``chroma/model.py``, ``qwen_image/model.py``, ``modules/diffusionmodules/mmdit.py``:
  ``patches_replace["dit"][("double_block", i)](args, {"original_block": f})`` returning ``{"img", "txt"}``, and Flux's
  and Chroma's ``("single_block", i)`` returning ``{"img": cat((txt, img), 1)}``; ``lumina/model.py`` (Z-Image,
  Lumina 2): ``patches["double_block"]`` after each layer with ``{"img", "txt", "block_index"}``, whose ``"txt"`` is
  written back;
- ``comfy/model_sampling.py``: flow models keep ``sigmas``, a table of the (shifted) sigma over evenly spaced model
  time, so the window reads a call's sigma as it does in Forge;
- a model with no block patch point (Krea 2's ``comfy/ldm/krea2``, reached only through the model wrappers): its
  blocks get forward hooks for the duration of each in-window call, as in Forge (entry ``comfy_patch="hooks"``).

What the k-diffusion hosts share (the window, the wrapper, the call's tokens, SPELL's post-CFG step) is in
:mod:`lib_ctxrep.integrations.kdiffusion`; which blocks a model has and how its calls are read, in its family's entry
(:mod:`lib_ctxrep.families`, host "comfyui").

Nothing is attached to the loaded model: every patch lives in the clone's ``model_options``, which ComfyUI reads
only while it samples with that clone. The engine (with its cross-batch memory) lives as long as the clone: ComfyUI
reuses a node's output while its inputs are unchanged, so later queue runs of the same workflow are "later batches";
changing a setting makes a new clone with an empty memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .. import families
from ..blockmap import Architecture, Blocks, HookedBlock, select_blocks
from ..spell import ReferenceSet, SpellStats
from .kdiffusion import KRepulsion, PostCfgSpell

logger = logging.getLogger("lib_ctxrep")

#: ``add_wrapper_with_key``'s key, so that the wrappers of this library can be found (and removed) by name.
WRAPPER_KEY = "lib_ctxrep"


def architecture_of(diffusion_model: Any) -> Architecture | None:
    """The family entry of a ComfyUI diffusion model (``model.model.diffusion_model``), or None."""
    return families.recognise(diffusion_model, "comfyui")


def unsupported_message(model: Any) -> str:
    """What the node says when contextual repulsion cannot patch ``model`` (it is returned unpatched)."""
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", model)
    reason = families.unsupported_reason(diffusion_model, "comfyui")
    return f"[ctxrep] Contextual Repulsion: {reason}; the model is returned unpatched. SPELL works on every model."


def _block_key(name: str) -> tuple[str, int]:
    """The ComfyUI patch key of a block-map block name: "double.3" -> ("double_block", 3)."""
    kind, index = name.split(".")
    return ("double_block" if kind == "double" else "single_block"), int(index)


def _read(where: Blocks, out: dict) -> Any:
    """A block patch's output dict as the block map reads block outputs: (img, txt) for a dual-stream block, the
    one sequence for a single-stream block."""
    if "txt" in out:
        pair = [None, None]
        pair[where.image_at], pair[where.text_at] = out.get("img"), out["txt"]
        return tuple(pair)
    return out["img"]


def _write(where: Blocks, out: dict, new: Any) -> dict:
    """``out`` with the repelled tensors of ``new`` (from :func:`_read`'s form) in place."""
    if isinstance(new, tuple):
        return {**out, "img": new[where.image_at], "txt": new[where.text_at]}
    return {**out, "img": new}


class ComfyRepulsion(KRepulsion):
    """Contextual repulsion for one ComfyUI node output: :meth:`patch` returns a patched clone of a MODEL."""

    def patch(self, model: Any) -> Any | None:
        """A clone of ``model`` (a ComfyUI ``ModelPatcher``) with the wrapper and block patches; None (and nothing
        cloned) when its diffusion model is not one the block map covers."""
        self.architecture = architecture_of(model.model.diffusion_model)
        if self.architecture is None:
            return None
        clone = model.clone()
        diffusion_model = clone.model.diffusion_model
        hooks = self.architecture.comfy_patch == "hooks"
        previous = clone.model_options.get("model_function_wrapper")
        predictor = getattr(clone.model, "model_sampling", None)
        clone.set_model_unet_function_wrapper(self.wrapper(diffusion_model, predictor, previous, hooks=hooks))
        if hooks:
            return clone
        hooked = select_blocks(self.architecture, diffusion_model, self.engine)
        if self.architecture.comfy_patch == "post":
            clone.set_model_patch(self._post_patch(hooked), "double_block")
            return clone
        existing = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for name, _, where, mode in hooked:
            kind, index = _block_key(name)
            patch = self._replace_patch(name, where, mode, existing.get((kind, index)))
            clone.set_model_patch_replace(patch, "dit", kind, index)
        return clone

    def _replace_patch(self, name: str, where: Blocks, mode: str, previous: Callable | None) -> Callable:
        """A ``patches_replace["dit"]`` function: runs the block (through ``previous``, another node's patch of the
        same block, when there is one) and repels its output inside the window."""

        def ctxrep_block_patch(args: dict, extra: dict) -> dict:
            out = previous(args, extra) if previous is not None else extra["original_block"](args)
            if not self.in_call:  # outside the window: no tuple built, nothing read
                return out
            new = self.repel(name, where, _read(where, out), mode, inputs=args)
            return out if new is None else _write(where, out, new)

        return ctxrep_block_patch

    def _post_patch(self, hooked: list[HookedBlock]) -> Callable:
        """A ``patches["double_block"]`` function (run after every block): repels the text of the selected ones."""
        selected = {_block_key(block.name)[1]: block for block in hooked}

        def ctxrep_post_block_patch(args: dict) -> dict:
            block = selected.get(args.get("block_index")) if self.in_call else None
            if block is None:
                return {}
            new = self.repel(block.name, block.where, _read(block.where, args), block.mode)
            return {} if new is None else {"txt": new[block.where.text_at]}

        return ctxrep_post_block_patch


def protected_latents(model: Any, latent: dict | None) -> tuple[ReferenceSet | None, str]:
    """A LATENT (``{"samples": [N, C, H, W]}``) as SPELL's protected set in the model's own latent space
    (``process_latent_in``); ``(None, message)`` when it cannot be one (the message says why), ``(None, "")`` for
    no LATENT."""
    if latent is None:
        return None, ""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim < 3 or samples.shape[0] == 0:
        return None, "[ctxrep] SPELL: the protected LATENT holds no samples; SPELL runs without a protected set"
    channels = getattr(getattr(model.model, "latent_format", None), "latent_channels", None)
    if isinstance(channels, int) and samples.shape[1] != channels:
        return None, (
            f"[ctxrep] SPELL: the protected LATENT has {samples.shape[1]} channels, this model's latents "
            f"{channels} (another model's latents?); SPELL runs without a protected set"
        )
    latents = model.model.process_latent_in(samples.float())
    return ReferenceSet(latents), ""


class ComfySpell(PostCfgSpell):
    """SPELL for one ComfyUI node output, on any model: a post-CFG function on a clone replaces the denoised
    prediction by ``denoised + delta``; ComfyUI's samplers step towards it. An ``outer_sample`` wrapper marks each
    sampling's end: its last corrected prediction joins the cross-batch memory and its sparsity is logged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_stats: SpellStats | None = None

    def patch(self, model: Any) -> Any:
        """A clone of ``model`` with SPELL's post-CFG function (and the end-of-sampling wrapper)."""
        clone = model.clone()

        def ctxrep_spell_outer_sample(executor: Callable, *args: Any, **kwargs: Any) -> Any:
            self.last_x0 = None
            try:
                out = executor(*args, **kwargs)
            finally:  # an interrupted or failed run leaves no half-way prediction to be remembered
                last = self.take_last()
            self._end_batch(last)
            return out

        clone.set_model_sampler_post_cfg_function(self.post_cfg())
        if hasattr(clone, "add_wrapper_with_key"):
            clone.add_wrapper_with_key("outer_sample", WRAPPER_KEY, ctxrep_spell_outer_sample)
        elif self.engine.config.cross_batch:
            logger.warning("[ctxrep] SPELL: this ComfyUI has no sampling wrappers; earlier runs are not remembered")
        return clone

    def _end_batch(self, last: torch.Tensor | None) -> None:
        if last is None:
            return
        self.last_stats = self.end_batch(last)
        logger.info(f"[ctxrep] SPELL pushed {self.last_stats.summary()}")
