"""Block lists that several families share (Flux's layout, in diffusers and in the k-diffusion hosts' ports)."""

from __future__ import annotations

from ..blockmap import Blocks

#: diffusers' Flux-like transformers: dual blocks return (text, image); single blocks one [text; image] sequence or,
#: from diffusers 0.35, the pair.
FLUX_DUAL = Blocks("transformer_blocks")
FLUX_SINGLE = Blocks("single_transformer_blocks")
#: Forge's and Neo's Flux-like models (backend/nn/flux.py, chroma.py): dual blocks return (img, txt); single blocks
#: one cat((txt, img), 1) sequence.
K_FLUX_DUAL = Blocks("double_blocks", text_at=1, image_at=0)
K_FLUX_SINGLE = Blocks("single_blocks")
#: ComfyUI (comfy/ldm/*): a dual block patch's {"img", "txt"} is read as (img, txt), as Forge's ports return it.
COMFY_TEXT_SECOND = {"text_at": 1, "image_at": 0}
