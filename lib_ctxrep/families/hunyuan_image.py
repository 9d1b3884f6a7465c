"""HunyuanImage 2.1: dual- and single-stream blocks returning (image, text). With its second text encoder (byT5) the
model moves each row's valid byT5 and MLLM tokens first, the padding after them."""

from __future__ import annotations

from typing import Any

from ..blockmap import Architecture, Blocks, CallTokens
from . import Family
from .readers import Args, DiffusersCall, per_chunk, per_mille, text_stream_tokens


def _tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    text, text_2 = call.get("encoder_hidden_states"), call.get("encoder_hidden_states_2")
    mask, mask_2 = call.get("encoder_attention_mask"), call.get("encoder_attention_mask_2")
    both = all(hasattr(x, "shape") for x in (text, text_2, mask, mask_2))
    if both and getattr(model, "context_embedder_2", None) is not None:
        lengths = mask.bool().sum(1) + mask_2.bool().sum(1)
        return CallTokens(text.shape[1] + text_2.shape[1], per_chunk(lengths, chunks, lambda n: int(n.min())))
    return text_stream_tokens(arch, call, chunks, model)


FAMILY = Family(
    "HunyuanImage 2.1",
    order=110,
    diffusers=Architecture(
        ("HunyuanImageTransformer2DModel",),
        Blocks("transformer_blocks", text_at=1, image_at=0),
        Blocks("single_transformer_blocks", text_at=1, image_at=0),
        padding="encoder_attention_mask (+ _2): the model moves the valid tokens first",
        reads=DiffusersCall(sigma_of_time=per_mille, mask_arg="encoder_attention_mask", tokens=_tokens),
    ),
)
