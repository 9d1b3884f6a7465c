"""ComfyUI nodes: "Contextual Repulsion" and "SPELL", each MODEL -> MODEL, under ``model_patches``.

UI and wiring only: the settings go through the same conversion as the Forge accordion's
(:func:`lib_ctxrep.integrations.forge_args.parse`), the patching through :mod:`lib_ctxrep.integrations.comfyui`.
Classic (V1) node classes, which every ComfyUI since 2023 loads: ``INPUT_TYPES`` with a tooltip on every input and
ranges that ComfyUI checks at queue time, ``VALIDATE_INPUTS`` for the block range (also at queue time), so that no
setting can fail mid-sampling. Importing this module imports no ``comfy`` module.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW, RepulsionConfig
from ..spell import DEFAULT_OVERCOMPENSATION, DEFAULT_RELATIVE_RADIUS, SpellConfig
from . import forge_args
from .comfyui import ComfyRepulsion, ComfySpell, protected_latents, unsupported_message

logger = logging.getLogger("lib_ctxrep")

CATEGORY = "model_patches"
#: Wider than the Forge slider (which the Forge API may exceed): a widget is the only way in here.
SPELL_RADIUS_RANGE = (forge_args.SPELL_RADIUS_RANGE[0], 4.0, forge_args.SPELL_RADIUS_RANGE[2])


def _float(default: float, bounds: tuple[float, float, float], tooltip: str) -> tuple[str, dict[str, Any]]:
    low, high, step = bounds
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip})


def _settings(**inputs: Any) -> forge_args.ScriptSettings:
    """The node's inputs as validated settings (raises ``forge_args.ArgumentError`` naming a bad one)."""
    strength = inputs.get("per_block_strength", 0.0)
    values = {
        "enabled": True,
        "step_strength": inputs.get("strength", DEFAULT_STEP_STRENGTH),
        "window": inputs.get("window", DEFAULT_WINDOW),
        "blocks": inputs.get("blocks", "all"),
        "custom_blocks": inputs.get("custom_blocks", ""),
        "single_blocks": inputs.get("single_blocks", "all tokens"),
        "memory": inputs.get("memory", True),
        "strength": "" if not strength else strength,
        "eta": inputs.get("eta", 0.0),
        "iterations": inputs.get("iterations", RepulsionConfig.iterations),
    }
    return forge_args.parse(values)


class _ModelPatchNode:
    """What both nodes share: MODEL in, a patched MODEL out, under ``model_patches``."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "patch"
    MODEL_INPUT = ("MODEL", {"tooltip": "The model to patch (a clone is patched; this one is not)."})


class ContextualRepulsionNode(_ModelPatchNode):
    """Pushes the images of one batch apart (contextual repulsion on the text stream of a diffusion transformer)."""

    DESCRIPTION = (
        "Contextual repulsion (arXiv 2603.28762): during the first sampling steps, after each transformer block, the "
        "batch's text-stream tokens are pushed apart, so a batch of one prompt varies in composition, pose and "
        "style. Flux.1 / Kontext / Flux.2, Chroma, Qwen-Image (+ Edit), Z-Image, SD3 / SD3.5; other models pass "
        "through unpatched."
    )
    OUTPUT_TOOLTIPS = ("The model, patched; connect it to the KSampler (batch size 2 or more).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        presets, modes = list(forge_args.BLOCK_PRESETS), list(forge_args.SINGLE_MODES)
        low, high, step = forge_args.ITERATIONS_RANGE
        return {
            "required": {
                "model": cls.MODEL_INPUT,
                "strength": _float(
                    DEFAULT_STEP_STRENGTH,
                    forge_args.STEP_STRENGTH_RANGE,
                    "How far each image's text tokens turn away from the others in one step, summed over the "
                    "repelled blocks; means the same on every model. 2.85 is moderate; raise it for more variety, "
                    "lower it if images drift from the prompt. 0: no effect.",
                ),
                "window": _float(
                    DEFAULT_WINDOW,
                    forge_args.WINDOW_RANGE,
                    "Fraction of the trajectory, from pure noise, during which it acts: 0.05 = the first step of 20 "
                    "(the paper's setting). The first step is always included.",
                ),
                "blocks": (
                    presets,
                    {
                        "default": "all",
                        "tooltip": "Which dual-stream blocks repel: all, a third of them (the middle third is the "
                        "paper's best trade-off), or custom (the range below).",
                    },
                ),
                "custom_blocks": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "With blocks = custom: a range start:stop (stop excluded), e.g. 6:13 for the "
                        "middle third of Flux's 19 double blocks.",
                    },
                ),
                "single_blocks": (
                    modes,
                    {
                        "default": "all tokens",
                        "tooltip": "Single-stream blocks of Flux, Chroma and Flux.2: repel all tokens (the paper's "
                        "choice), only the text tokens, or none. Edit reference images are never repelled.",
                    },
                ),
                "memory": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Cross-batch memory: each queue run of this workflow is also pushed away from "
                        "the earlier runs (up to 16 images), so batch size 1 gets diverse too. Changing any input "
                        "of this node starts an empty memory.",
                    },
                ),
            },
            "optional": {
                "per_block_strength": _float(
                    0.0, (0.0, 10.0, 0.01), "Advanced: a strength per block instead; 0 = use strength."
                ),
                "eta": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1e12,
                        "step": 1.0,
                        "tooltip": "Advanced: the paper's raw step size eta (Flux-dev 5e6 to 8e9, SD3.5-Large 5e2 "
                        "to 5e6); 0 = use the strengths.",
                    },
                ),
                "iterations": (
                    "INT",
                    {
                        "default": RepulsionConfig.iterations,
                        "min": low,
                        "max": high,
                        "step": step,
                        "tooltip": "Advanced: inner gradient steps per block, M (the paper: 50 on Flux). Costs "
                        "only a little CPU time per block.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, blocks: str, custom_blocks: str) -> bool | str:  # noqa: N802 (ComfyUI's name)
        """At queue time: the block preset and, with "custom", the range."""
        try:
            _settings(blocks=blocks, custom_blocks=custom_blocks)
        except forge_args.ArgumentError as error:
            return str(error)
        return True

    def patch(self, model: Any, **inputs: Any) -> tuple[Any]:
        """The patched clone; ``model`` itself at strength 0 (off) and, with one message, on a model contextual
        repulsion cannot patch."""
        config = _settings(**inputs).config
        if config.eta is None and not config.strength and not config.step_strength:
            return (model,)
        patched = ComfyRepulsion(config).patch(model)
        if patched is None:
            logger.warning(unsupported_message(model))
            return (model,)
        return (patched,)


class SpellNode(_ModelPatchNode):
    """Sparse repellency (SPELL): pushes each image's predicted result out of small shields around the others."""

    DESCRIPTION = (
        "SPELL (arXiv 2410.06025): when an image's predicted result comes within a small shield of another image "
        "of the batch, of an earlier run or of a protected image, it is pushed out; otherwise nothing changes. "
        "Works on every model."
    )
    OUTPUT_TOOLTIPS = ("The model with SPELL; connect it to the KSampler.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "model": cls.MODEL_INPUT,
                "radius": _float(
                    DEFAULT_RELATIVE_RADIUS,
                    SPELL_RADIUS_RANGE,
                    "Shield radius as a fraction of the typical distance between two unrelated latents at this "
                    "size. Larger: more images are pushed, further.",
                ),
                "overcompensation": _float(
                    DEFAULT_OVERCOMPENSATION,
                    forge_args.OVERCOMPENSATION_RANGE,
                    "How far past the shield's edge a push goes: 1 lands on the edge; the paper's 1.6 leaves it "
                    "sooner.",
                ),
                "within_batch": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Push the images of one batch away from each other."},
                ),
                "earlier_runs": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Also push away from the results of earlier queue runs of this node's model (up "
                        "to 64); changing any input of this node forgets them.",
                    },
                ),
            },
            "optional": {
                "protected": (
                    "LATENT",
                    {
                        "tooltip": "Optional: latents (e.g. VAE Encode of images) to keep the results away from. "
                        "Same model family and size as the generation; otherwise SPELL runs without them.",
                    },
                ),
            },
        }

    def patch(
        self,
        model: Any,
        radius: float,
        overcompensation: float,
        within_batch: bool = True,
        earlier_runs: bool = True,
        protected: dict | None = None,
    ) -> tuple[Any]:
        """A clone with SPELL; a protected LATENT that cannot be used is said once and left out."""
        config = SpellConfig(
            relative_radius=float(radius),
            overcompensation=float(overcompensation),
            intra_batch=bool(within_batch),
            cross_batch=bool(earlier_runs),
        )
        references, problem = protected_latents(model, protected)
        if problem:
            logger.warning(problem)
        return (ComfySpell(config, references).patch(model),)


NODE_CLASS_MAPPINGS = {"ContextualRepulsion": ContextualRepulsionNode, "SPELLRepellency": SpellNode}
NODE_DISPLAY_NAME_MAPPINGS = {"ContextualRepulsion": "Contextual Repulsion", "SPELLRepellency": "SPELL"}
