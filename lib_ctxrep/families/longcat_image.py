"""LongCat-Image (+ Edit): Flux's blocks; image position ids say 0 for text, 1 for the target, 2 for references."""

from __future__ import annotations

from ..blockmap import Architecture
from . import Family
from ._shared import FLUX_DUAL, FLUX_SINGLE

FAMILY = Family(
    "LongCat-Image",
    order=130,
    diffusers=Architecture(
        ("LongCatImageTransformer2DModel",),
        FLUX_DUAL,
        FLUX_SINGLE,
        references="Edit: image tokens whose img_ids start with 2, after the target's (1)",
        target_id=1,
    ),
)
