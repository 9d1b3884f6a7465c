"""CogView3-Plus: a DDPM with dual-stream blocks returning (image, text); the pipeline batches [uncond; cond] and the
step is found in ``scheduler.timesteps``."""

from __future__ import annotations

from ..blockmap import Architecture, Blocks
from . import Family
from .readers import DiffusersCall, per_mille

FAMILY = Family(
    "CogView3-Plus",
    order=170,
    diffusers=Architecture(
        ("CogView3PlusTransformer2DModel",),
        Blocks("transformer_blocks", text_at=1, image_at=0),
        cfg_rows=("uncond", "cond"),
        reads=DiffusersCall(sigma_of_time=per_mille, step_by_timesteps=True),
    ),
)
