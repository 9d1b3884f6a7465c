"""Chroma: Flux.1's blocks, with T5 padding masked in attention (all but one pad token)."""

from __future__ import annotations

from ..blockmap import Architecture, Blocks
from . import Family
from ._shared import COMFY_TEXT_SECOND, FLUX_DUAL, FLUX_SINGLE, K_FLUX_DUAL, K_FLUX_SINGLE
from .readers import DiffusersCall

FAMILY = Family(
    "Chroma",
    order=20,
    diffusers=Architecture(
        ("ChromaTransformer2DModel",),
        FLUX_DUAL,
        FLUX_SINGLE,
        padding="T5 padding that attention_mask masks (all but one pad token)",
        reads=DiffusersCall(mask_arg="attention_mask"),
    ),
    forge=Architecture(("IntegratedChromaTransformer2DModel",), K_FLUX_DUAL, K_FLUX_SINGLE),
    # comfy/ldm/chroma/model.py (ChromaRadiance subclasses it)
    comfyui=Architecture(("Chroma",), Blocks("double_blocks", **COMFY_TEXT_SECOND), K_FLUX_SINGLE),
)
