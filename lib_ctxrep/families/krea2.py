"""Krea 2 (Turbo, Raw): single-stream blocks over one [text; image] sequence. The text is the prompt, its padding,
then 5 chat-template suffix tokens (``<|im_end|>\\n<|im_start|>assistant\\n``), none of which after the prompt is
repelled.

diffusers (transformer_krea2.py): padding marked by ``encoder_attention_mask``. Forge Neo 2.26 (backend/nn/krea.py,
``SingleStreamDiT``: ``self.blocks``, each returning the [text; image] sequence): each prompt is encoded alone, so
there is no padding, only the suffix; ``c_crossattn`` is [B, L, D] or, in some 2.26 trees, [B, 1, L, D] (the model
squeezes it); the latent is [B, 16, 1, h, w] (Wan's layout), patchified 2 x 2 (``self.patch``). Calls with reference
latents (an edit path that bypasses the blocks' ``forward``) are not read. ComfyUI (comfy/ldm/krea2/model.py, also
``SingleStreamDiT``, since June 2026): the same sequence, [text; target; references], and no block patch point (only
model wrappers), so its blocks are hooked for the duration of each in-window call; references follow the target's
tokens and are never repelled (text tokens only).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ..blockmap import Architecture, Blocks, CallTokens
from . import Family
from .readers import CallNotReadable, DiffusersCall, text_stream_tokens

#: Krea 2's chat template ends in this many tokens after the prompt's padding.
TEMPLATE_SUFFIX = 5


#: Forge Neo batches a prompt and a negative prompt of different lengths in one call when one length is at most this
#: many times the other, tiling each text to a common length (backend/sampling/condition.py ConditionCrossAttn).
_MAX_TILES = 4


def _own_length(text: torch.Tensor) -> int:
    """The length of one chunk's text before Neo tiled it ([rows, L, D]): its shortest period that divides L at most
    ``_MAX_TILES`` times (L itself when it is not a repetition)."""
    length = text.shape[1]
    for tiles in range(_MAX_TILES, 1, -1):
        if length % tiles == 0:
            period = length // tiles
            if torch.equal(text, text[:, :period].repeat(1, tiles, 1)):
                return period
    return length


def _text_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    """The prompt and the suffix from ``c_crossattn`` ([B, L, D] or [B, 1, L, D]); the suffix is never repelled. A
    text tiled to a longer one's length (Neo) is repelled on its first copy's prompt tokens only: each copy ends in its
    own suffix."""
    text = args["c"].get("c_crossattn")
    if not hasattr(text, "shape") or text.ndim not in (3, 4):
        raise CallNotReadable("no text ([B, L, D] or [B, 1, L, D]) in c_crossattn")
    text = text.reshape(text.shape[0], text.shape[-2], text.shape[-1])
    chunks = max(1, len(args.get("cond_or_uncond") or ()))
    rows = text.shape[0] // chunks
    own = [_own_length(text[c * rows : (c + 1) * rows]) for c in range(chunks)]
    return CallTokens(int(text.shape[1]), tuple(max(0, n - TEMPLATE_SUFFIX) for n in own))


def _neo_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    if args["c"].get("ref_latents"):
        raise CallNotReadable("a call with reference latents runs its blocks outside their forward")
    return _text_tokens(arch, diffusion_model, args)


_PADDING = "the 5 chat-template suffix tokens after the prompt (and diffusers' encoder_attention_mask padding)"

FAMILY = Family(
    "Krea 2",
    order=90,
    diffusers=Architecture(
        ("Krea2Transformer2DModel",),
        single=Blocks("transformer_blocks"),
        padding=_PADDING,
        reads=DiffusersCall(
            mask_arg="encoder_attention_mask", tokens=partial(text_stream_tokens, tail=TEMPLATE_SUFFIX)
        ),
    ),
    forge=Architecture(("SingleStreamDiT",), single=Blocks("blocks"), padding=_PADDING, reads=_neo_tokens),
    comfyui=Architecture(
        ("SingleStreamDiT",),
        single=Blocks("blocks"),
        padding=_PADDING,
        references="reference latents after the target's tokens (never touched: text tokens only)",
        comfy_patch="hooks",
        reads=_text_tokens,
    ),
)
