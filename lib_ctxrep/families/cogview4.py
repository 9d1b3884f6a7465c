"""CogView4: dual-stream blocks returning (image, text); it is passed unshifted timesteps while its scheduler steps
shifted sigmas, so the step is found in ``scheduler.timesteps``."""

from __future__ import annotations

from ..blockmap import Architecture, Blocks
from . import Family
from .readers import DiffusersCall, per_mille

FAMILY = Family(
    "CogView4",
    order=160,
    diffusers=Architecture(
        ("CogView4Transformer2DModel",),
        Blocks("transformer_blocks", text_at=1, image_at=0),
        reads=DiffusersCall(sigma_of_time=per_mille, step_by_timesteps=True),
    ),
)
