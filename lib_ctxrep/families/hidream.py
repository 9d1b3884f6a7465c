"""HiDream-I1: 16 dual-stream + 32 single-stream blocks. Each block's text stream is [T5; last Llama layer; this
block's Llama layer], the last part discarded after the block (never repelled); the single-stream sequence is
[image (padded to ``max_seq`` when not square); that text]. The pipeline batches [uncond; cond]."""

from __future__ import annotations

from typing import Any

from ..blockmap import IMAGE_FIRST, Architecture, Blocks, CallTokens, leading_valid
from . import Family
from .readers import Args, DiffusersCall, per_mille


def _tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    names = ("encoder_hidden_states_t5", "encoder_hidden_states_llama3", "hidden_states")
    t5, llama, image = (call.get(n) for n in names)
    if not all(hasattr(x, "shape") for x in (t5, llama, image)):
        return None
    kept = t5.shape[1] + llama.shape[-2]
    if image.ndim == 4:  # latents [rows, channels, height, width]: patchified in the model
        patch = int(model.config.patch_size)
        target = (image.shape[-2] // patch) * (image.shape[-1] // patch)
        image_len = target if image.shape[-2] == image.shape[-1] else int(model.max_seq)
    else:  # already patchified, with hidden_states_masks marking the real image tokens
        image_len = image.shape[1]
        target = leading_valid(call.get("hidden_states_masks"), image_len)
    return CallTokens(kept + llama.shape[-2], (kept,), image_len=image_len, target=(0, target))


FAMILY = Family(
    "HiDream",
    order=70,
    diffusers=Architecture(
        ("HiDreamImageTransformer2DModel",),
        Blocks("double_stream_blocks", text_at=1, image_at=0),
        Blocks("single_stream_blocks", order=IMAGE_FIRST),
        cfg_rows=("uncond", "cond"),
        padding="each block's own Llama-layer tokens, appended and discarded after it (T5/Llama padding is attended)",
        reads=DiffusersCall(time_arg="timesteps", sigma_of_time=per_mille, tokens=_tokens),
    ),
)
