"""Qwen-Image (+ Edit): 60 dual-stream blocks; an edit's reference latents sit in the image stream, never touched."""

from __future__ import annotations

from ..blockmap import Architecture, Blocks
from . import Family
from ._shared import COMFY_TEXT_SECOND, FLUX_DUAL

_EDIT = "Edit: ref_latents appended to the image stream (never touched: no single-stream blocks)"

FAMILY = Family(
    "Qwen-Image",
    order=40,
    diffusers=Architecture(
        ("QwenImageTransformer2DModel",),
        FLUX_DUAL,
        padding="tokens that encoder_hidden_states_mask masks",
        references="Edit: in the image stream (never touched: no single-stream blocks)",
    ),
    # Neo's backend/nn/qwen.py (a port of ComfyUI's): blocks return (encoder_hidden_states, hidden_states)
    forge=Architecture(("QwenImageTransformer2DModel",), Blocks("transformer_blocks"), references=_EDIT),
    comfyui=Architecture(
        ("QwenImageTransformer2DModel",), Blocks("transformer_blocks", **COMFY_TEXT_SECOND), references=_EDIT
    ),
)
