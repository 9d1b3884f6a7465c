"""ComfyUI nodes: "Contextual Repulsion" and "SPELL", each MODEL -> MODEL, under ``model_patches``.

UI and wiring only: the inputs are the settings of :mod:`lib_ctxrep.settings` (the same names, ranges, tooltips and
validation as the Forge accordion and API), the patching is :mod:`lib_ctxrep.integrations.comfyui`. Classic (V1)
node classes, which every ComfyUI since 2023 loads: ``INPUT_TYPES`` with a tooltip on every input and ranges that
ComfyUI checks at queue time, ``VALIDATE_INPUTS`` for the block range (also at queue time), so that no setting can
fail mid-sampling. Importing this module imports no ``comfy`` module.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import families
from .. import settings as S
from ..spell import SpellConfig
from .comfyui import ComfyRepulsion, ComfySpell, protected_latents, unsupported_message

logger = logging.getLogger("lib_ctxrep")

CATEGORY = "model_patches"
#: Wider than the Forge slider (which the Forge API may exceed): a widget is the only way in here.
SPELL_RADIUS_BOUNDS = (S.SETTINGS["spell_radius"].bounds[0], 4.0, S.SETTINGS["spell_radius"].bounds[2])
#: What differs from the shared definition in a node: the memory spans queue runs, and a widget cannot be empty, so
#: a per-block strength of 0 means "use the step strength".
_TOOLTIPS = {
    "memory": "Cross-batch memory: each queue run of this workflow is also pushed away from the earlier runs (up to "
    "16 images), so batch size 1 gets diverse too. Changing any input of this node starts an empty memory.",
    "block_strength": S.SETTINGS["block_strength"].tooltip.replace("Empty:", "0:"),
}


def _input(name: str, kind: str | None = None, bounds: tuple | None = None, default: Any = None) -> tuple:
    """A node input for setting ``name``: its type, default, range or choices and tooltip from the settings."""
    setting = S.SETTINGS[name]
    options: dict[str, Any] = {"default": setting.default if default is None else default}
    options["tooltip"] = _TOOLTIPS.get(name, setting.tooltip)
    if setting.choices is not None:
        return (list(setting.choices), options)
    low, high, step = bounds or setting.bounds or (None, None, None)
    if low is not None:
        options.update(min=low, max=high, step=step)
    kind = kind or {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}[type(options["default"])]
    return (kind, options)


def _settings(**inputs: Any) -> S.Settings:
    """The node's inputs as validated settings (raises ``SettingError`` naming a bad one)."""
    values = {"enabled": True, **inputs}
    if not values.get("block_strength"):
        values["block_strength"] = ""  # 0: use the step strength
    return S.parse(values)


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
        f"style. {', '.join(families.families('comfyui'))}; other models pass through unpatched."
    )
    OUTPUT_TOOLTIPS = ("The model, patched; connect it to the KSampler (batch size 2 or more).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        required = ("step_strength", "window", "blocks", "custom_blocks", "single_blocks", "memory")
        return {
            "required": {"model": cls.MODEL_INPUT, **{name: _input(name) for name in required}},
            "optional": {
                "block_strength": _input("block_strength", "FLOAT", default=0.0),
                "eta": _input("eta", "FLOAT"),
                "iterations": _input("iterations", "INT"),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, blocks: str, custom_blocks: str) -> bool | str:  # noqa: N802 (ComfyUI's name)
        """At queue time: the block preset and, with "custom", the range."""
        try:
            _settings(blocks=blocks, custom_blocks=custom_blocks)
        except S.SettingError as error:
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
                "radius": _input("spell_radius", "FLOAT", SPELL_RADIUS_BOUNDS),
                "overcompensation": _input("spell_overcompensation", "FLOAT"),
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
