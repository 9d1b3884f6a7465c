"""Bria 3: Flux's blocks; the pipeline pads T5 with zero rows and batches [uncond; cond]; time on the 0..1000 scale."""

from __future__ import annotations

from ..blockmap import Architecture
from . import Family
from ._shared import FLUX_DUAL, FLUX_SINGLE
from .readers import DiffusersCall, per_mille, zero_padded_tokens

FAMILY = Family(
    "Bria 3",
    order=140,
    diffusers=Architecture(
        ("BriaTransformer2DModel",),
        FLUX_DUAL,
        FLUX_SINGLE,
        cfg_rows=("uncond", "cond"),
        padding="zero rows after the prompt (the pipeline pads T5 with zeros)",
        reads=DiffusersCall(sigma_of_time=per_mille, tokens=zero_padded_tokens),
    ),
)
