"""AuraFlow: joint + single-stream blocks; the text stream is 8 learned register tokens, then T5 with its padding
zeroed by the pipeline. The pipeline batches [uncond; cond] (with no ``do_classifier_free_guidance``: its
``guidance_scale`` > 1, or duplicated latents, says CFG is on)."""

from __future__ import annotations

from typing import Any

import torch

from ..blockmap import Architecture, Blocks, CallTokens, leading_valid
from . import Family
from .readers import Args, DiffusersCall, per_chunk


def _tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    text = call.get("encoder_hidden_states")
    if not isinstance(text, torch.Tensor):
        return None
    registers = int(model.register_tokens.shape[1])
    mask = (text != 0).any(-1)
    mask = torch.cat([mask.new_ones(mask.shape[0], registers), mask], dim=1)
    text_len = text.shape[1] + registers
    return CallTokens(text_len, per_chunk(mask, chunks, lambda rows: leading_valid(rows, text_len)))


FAMILY = Family(
    "AuraFlow",
    order=150,
    diffusers=Architecture(
        ("AuraFlowTransformer2DModel",),
        Blocks("joint_transformer_blocks"),
        Blocks("single_transformer_blocks"),
        cfg_rows=("uncond", "cond"),
        padding="zero rows after the prompt (the pipeline zeroes T5 padding); text = 8 register tokens + T5",
        reads=DiffusersCall(tokens=_tokens),
    ),
)
