"""Flux.2 (dev 8 + 48 blocks, Klein 5 + 20, and edits). Forge Neo runs Klein with its Flux.1 class (patch size 1)
and ComfyUI with its ``Flux`` class: both are Flux.1's entries there."""

from __future__ import annotations

from ..blockmap import Architecture
from . import Family
from ._shared import FLUX_DUAL, FLUX_SINGLE

FAMILY = Family(
    "Flux.2",
    order=30,
    diffusers=Architecture(
        ("Flux2Transformer2DModel",),
        FLUX_DUAL,
        FLUX_SINGLE,
        references="edits: image tokens whose img_ids have a time coordinate other than 0",
    ),
)
