"""Lumina 2 (diffusers): 26 single-stream layers; each row's joint sequence holds its real caption tokens only (the
Gemma padding that ``encoder_attention_mask`` marks is dropped), then the image. In Forge Neo and ComfyUI it runs
through ``NextDiT``: Z-Image's entries there."""

from __future__ import annotations

from typing import Any

from ..blockmap import Architecture, Blocks, CallTokens
from . import Family
from .readers import Args, DiffusersCall, one_minus, per_chunk


def _tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    mask = call.get("encoder_attention_mask")
    if not hasattr(mask, "bool"):
        return None
    lengths = mask.bool().sum(1)
    return CallTokens(int(lengths.max()), per_chunk(lengths, chunks, lambda n: int(n.min())))


FAMILY = Family(
    "Lumina 2",
    order=80,
    diffusers=Architecture(
        ("Lumina2Transformer2DModel",),
        single=Blocks("layers"),
        padding="Gemma padding (encoder_attention_mask), dropped from each row's joint sequence",
        reads=DiffusersCall(sigma_of_time=one_minus, tokens=_tokens),
    ),
)
