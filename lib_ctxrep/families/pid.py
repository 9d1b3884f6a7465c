"""PiD (Forge Neo's pixel-space refiner, backend/nn/pixeldit/): ``PidNet`` (a ``PixDiT_T2I``) runs dual-stream
``patch_blocks`` returning (image, text) and text-free ``pixel_blocks``. The model keeps the first
``txt_max_length`` (300) text tokens; their padding is attended, so all of them are repelled. Neo runs PiD in img2img
only (its own script runs it at batch size 1, without other scripts)."""

from __future__ import annotations

from typing import Any

from ..blockmap import Architecture, Blocks, CallTokens
from . import Family
from .readers import CallNotReadable

#: PixDiT's text length when the model does not say (``txt_max_length``).
_TEXT_MAX = 300


def _k_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    text = args["c"].get("c_crossattn")
    if not hasattr(text, "shape") or text.ndim != 3:
        raise CallNotReadable("no text [B, L, D] in c_crossattn")
    return CallTokens(min(int(text.shape[1]), int(getattr(diffusion_model, "txt_max_length", _TEXT_MAX))))


FAMILY = Family(
    "PiD",
    order=200,
    forge=Architecture(
        ("PidNet", "PixDiT_T2I"),
        Blocks("patch_blocks", text_at=1, image_at=0),
        padding="Gemma padding up to 300 tokens, attended (so repelled with the text)",
        reads=_k_tokens,
    ),
)
