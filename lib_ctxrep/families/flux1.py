"""Flux.1 (dev, schnell, Krea, Kontext): 19 dual-stream blocks + 38 single-stream blocks, text first.

Kontext's reference image tokens follow the target's (diffusers: ``img_ids`` whose first coordinate is 1; Forge:
``forge2_flux_kontext`` / Neo's native ``ref_latents`` append them after the target's tokens). ComfyUI's ``Flux``
class also runs Flux.2 (``model_base.Flux2``), whose text it left-pads with zero rows to 512 that are attended.
"""

from __future__ import annotations

from ..blockmap import Architecture, Blocks
from . import Family
from ._shared import COMFY_TEXT_SECOND, FLUX_DUAL, FLUX_SINGLE, K_FLUX_DUAL, K_FLUX_SINGLE

FAMILY = Family(
    "Flux.1",
    order=10,
    diffusers=Architecture(
        ("FluxTransformer2DModel",),
        FLUX_DUAL,
        FLUX_SINGLE,
        references="Kontext: image tokens whose img_ids start with 1, after the target's",
    ),
    forge=Architecture(
        ("IntegratedFluxTransformer2DModel",),
        K_FLUX_DUAL,
        K_FLUX_SINGLE,
        references="Kontext: reference tokens after the target's image tokens",
        duck=("double_blocks", "single_blocks"),
    ),
    comfyui=Architecture(
        ("Flux",),  # comfy/ldm/flux/model.py: Flux.1, Kontext and Flux.2 (model_base.Flux2 runs the same class)
        Blocks("double_blocks", **COMFY_TEXT_SECOND),
        K_FLUX_SINGLE,
        references="Kontext and Flux.2 edits: ref_latents appended after the target's image tokens",
        padding="Flux.2: the zero rows ComfyUI left-pads the text with to 512 are attended, so repelled with it",
    ),
)
