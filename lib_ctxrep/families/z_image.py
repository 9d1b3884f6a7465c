"""Z-Image (and, in the k-diffusion hosts, Lumina 2 through the same ``NextDiT``): 30 single-stream layers over one
sequence of image and caption tokens, each padded with a learned token to a multiple of 32. Its layers play the
dual blocks' role, chosen by ``blocks``, and only the real caption tokens are repelled.

diffusers (transformer_z_image.py): lists per sample, ``x`` (images) and ``cap_feats`` (captions), ``t`` = 1 - sigma;
the unified sequence is [image (padded); caption (padded)]; ZImagePipeline batches [cond; uncond] and drops CFG once
``t`` passes its ``_cfg_truncation``. Forge Neo's and ComfyUI's ``NextDiT`` (backend/nn/lumina.py,
comfy/ldm/lumina/model.py): [caption (padded to ``pad_tokens_multiple``); image]; ComfyUI reaches its layers through
the post-block ``patches["double_block"]`` only, and its edit (omni) calls hold the references in the caption slice.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from ..blockmap import IMAGE_FIRST, Architecture, Blocks, CallTokens
from . import Family
from ._shared import COMFY_TEXT_SECOND
from .readers import Args, CallNotReadable, DiffusersCall, crossattn_tokens, one_minus, padded

#: Z-Image's forward defaults when the call leaves them out: 2 x 2 spatial patches, one frame per patch.
_PATCH = 2
_FRAME_PATCH = 1
#: Z-Image pads captions and images to a multiple of this many tokens (transformer_z_image.SEQ_MULTI_OF).
_SEQ_MULTIPLE = 32


def _diffusers_tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    """The unified sequence per row: [image (padded), caption (padded)], each padded to a multiple of 32."""
    images, captions = call.get("x"), call.get("cap_feats")
    if not isinstance(images, (list, tuple)) or not isinstance(captions, (list, tuple)) or not images:
        return None
    if isinstance(images[0], (list, tuple)):
        raise CallNotReadable("an omni call ([caption, images, siglip]) holds reference images in its caption")
    multiple = int(getattr(sys.modules.get(type(model).__module__), "SEQ_MULTI_OF", _SEQ_MULTIPLE))
    patch = int(call.get("patch_size") or _PATCH)
    frames = int(call.get("f_patch_size") or _FRAME_PATCH)
    image_lens = {padded(math.prod(x.shape[-3:]) // (frames * patch * patch), multiple) for x in images}
    if len(image_lens) != 1:
        raise CallNotReadable("images of different sizes in one call put the caption at different places")
    lengths = [int(c.shape[0]) for c in captions]
    size = len(lengths) // chunks
    valid = tuple(min(lengths[c * size : (c + 1) * size]) for c in range(chunks))
    text_len = max(padded(n, multiple) for n in lengths)
    return CallTokens(text_len, valid, image_len=image_lens.pop())


def _past_cfg_truncation(call: Args, pipeline: Any, time: float) -> bool:
    """ZImagePipeline drops CFG (the prompt's rows alone) once its t = 1 - sigma passes ``_cfg_truncation``."""
    truncation = getattr(pipeline, "_cfg_truncation", None)
    return isinstance(truncation, (int, float)) and truncation <= 1 and time > truncation


def _k_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    """NextDiT pads the caption to a multiple of its ``pad_tokens_multiple``; the padding is not repelled."""
    tokens = crossattn_tokens(arch, diffusion_model, args)
    multiple = getattr(diffusion_model, "pad_tokens_multiple", None)
    if isinstance(multiple, int) and multiple > 1:
        return CallTokens(padded(tokens.text_len, multiple), (tokens.text_len,))
    return CallTokens(tokens.text_len)


def _comfy_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    if args["c"].get("ref_latents"):
        raise CallNotReadable(
            "Z-Image edit (reference images) is not supported yet: its caption slice also holds the references"
        )
    return _k_tokens(arch, diffusion_model, args)


_PADDING = "caption padding to pad_tokens_multiple (the model's cap_pad_token)"

FAMILY = Family(
    "Z-Image",
    order=50,
    diffusers=Architecture(
        ("ZImageTransformer2DModel",),
        single=Blocks("layers", order=IMAGE_FIRST),
        cfg_rows=("cond", "uncond"),
        padding="caption padding to a multiple of 32 (the model's cap_pad_token)",
        reads=DiffusersCall(
            time_arg="t",
            sigma_of_time=one_minus,
            rows_arg="x",
            tokens=_diffusers_tokens,
            cfg_off=_past_cfg_truncation,
        ),
    ),
    # backend/nn/lumina.py: [caption; image] in one sequence (Z-Image and Lumina 2)
    forge=Architecture(("NextDiT",), single=Blocks("layers"), padding=_PADDING, reads=_k_tokens),
    comfyui=Architecture(
        ("NextDiT",),  # comfy/ldm/lumina/model.py: Z-Image and Lumina 2, [caption; image] in one sequence
        single=Blocks("layers", **COMFY_TEXT_SECOND),
        padding=_PADDING,
        references="edit (omni) calls, whose caption slice holds the references, run unrepelled",
        comfy_patch="post",
        reads=_comfy_tokens,
    ),
)
