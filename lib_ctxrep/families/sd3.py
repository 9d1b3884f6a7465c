"""SD3 / SD3.5 (Large, Medium, Turbo): MMDiT joint blocks; the last one outputs no text stream, so it is not hooked.
diffusers' pipeline batches [uncond; cond]; its skip-layer guidance adds a call on the prompt's rows alone."""

from __future__ import annotations

from typing import Any

from ..blockmap import Architecture, Blocks
from . import Family
from ._shared import COMFY_TEXT_SECOND
from .readers import Args, DiffusersCall, per_mille


def _skip_layer_call(call: Args, pipeline: Any, time: float) -> bool:
    return call.get("skip_layers") is not None


FAMILY = Family(
    "SD3",
    order=60,
    diffusers=Architecture(
        ("SD3Transformer2DModel",),
        Blocks("transformer_blocks", last_has_text=False),
        cfg_rows=("uncond", "cond"),
        reads=DiffusersCall(sigma_of_time=per_mille, cfg_off=_skip_layer_call),
    ),
    # Forge main's backend/nn/mmditx.py: JointBlock -> (context, x); Neo has no SD3
    forge=Architecture(("MMDiTX",), Blocks("joint_blocks", last_has_text=False), duck=("joint_blocks",)),
    comfyui=Architecture(
        # comfy/ldm/modules/diffusionmodules/mmdit.py; not the bare name MMDiT, which AuraFlow's class also has
        ("OpenAISignatureMMDITWrapper",),
        Blocks("joint_blocks", last_has_text=False, **COMFY_TEXT_SECOND),
    ),
)
