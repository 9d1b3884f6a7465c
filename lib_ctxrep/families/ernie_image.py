"""Ernie-Image (and Turbo): single-stream layers over one [image; text] sequence; the text is ``<s>`` and the prompt
(Ministral 3B), with no template.

diffusers (transformer_ernie_image.py, ``ErnieImageTransformer2DModel``): ``layers`` return the sequence
sequence-first, [image + text, rows, width]; the text ``text_bth`` is right-padded with zeros after each row's
``text_lens`` (masked in attention); ``timestep`` is 1000 sigma; ErnieImagePipeline batches [uncond; cond].
Forge Neo 2.26 (backend/nn/ernie.py, ``ErnieImageModel``: ``self.layers``, each returning the sequence, batch-first):
no padding, no mask, no references; image tokens = (H / p) (W / p) of the [B, 128, H, W] latent, ``patch_size`` p = 1.
ComfyUI (comfy/ldm/ernie/model.py, the same ``ErnieImageModel``): the same call, and no patch point inside the model
(not even its DIFFUSION_MODEL wrapper), so its layers are hooked for the duration of each in-window call.
"""

from __future__ import annotations

from typing import Any

from ..blockmap import IMAGE_FIRST, Architecture, Blocks, CallTokens
from . import Family
from .readers import Args, CallNotReadable, DiffusersCall, per_chunk, per_mille


def _diffusers_tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    text, lengths, latent = call.get("text_bth"), call.get("text_lens"), call.get("hidden_states")
    if not all(hasattr(x, "shape") for x in (text, lengths, latent)) or latent.ndim != 4:
        return None
    patch = int(getattr(model.config, "patch_size", 1) or 1)
    image_len = (latent.shape[-2] // patch) * (latent.shape[-1] // patch)
    return CallTokens(int(text.shape[1]), per_chunk(lengths, chunks, lambda n: int(n.min())), image_len=image_len)


def _k_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    text, latent = args["c"].get("c_crossattn"), args["input"]
    if not hasattr(text, "shape") or text.ndim != 3 or latent.ndim != 4:
        raise CallNotReadable("expected text [B, L, D] and a latent [B, C, H, W]")
    patch = int(getattr(diffusion_model, "patch_size", 1) or 1)
    return CallTokens(int(text.shape[1]), image_len=(latent.shape[-2] // patch) * (latent.shape[-1] // patch))


FAMILY = Family(
    "Ernie-Image",
    order=95,
    diffusers=Architecture(
        ("ErnieImageTransformer2DModel",),
        single=Blocks("layers", order=IMAGE_FIRST, seq_first=True),
        cfg_rows=("uncond", "cond"),
        padding="zero rows after each row's text_lens (masked in attention)",
        reads=DiffusersCall(sigma_of_time=per_mille, tokens=_diffusers_tokens),
    ),
    forge=Architecture(("ErnieImageModel",), single=Blocks("layers", order=IMAGE_FIRST), reads=_k_tokens),
    comfyui=Architecture(
        ("ErnieImageModel",), single=Blocks("layers", order=IMAGE_FIRST), comfy_patch="hooks", reads=_k_tokens
    ),
)
