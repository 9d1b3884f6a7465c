"""Ovis-Image: Flux's blocks; the pipeline zeroes the text rows after the prompt and passes no mask."""

from __future__ import annotations

from ..blockmap import Architecture
from . import Family
from ._shared import FLUX_DUAL, FLUX_SINGLE
from .readers import DiffusersCall, zero_padded_tokens

FAMILY = Family(
    "Ovis-Image",
    order=120,
    diffusers=Architecture(
        ("OvisImageTransformer2DModel",),
        FLUX_DUAL,
        FLUX_SINGLE,
        padding="text rows the pipeline zeroes (after the prompt)",
        reads=DiffusersCall(tokens=zero_padded_tokens),
    ),
)
