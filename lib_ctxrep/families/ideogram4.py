"""Ideogram 4 (diffusers' transformer_ideogram4.py, ``Ideogram4Transformer2DModel``): single-stream ``layers`` over
one packed row per sample, [padding; text; image], the text left-padded to ``max_sequence_length`` so that it ends
where the image starts. ``indicator`` marks text (3) and image (2) tokens, padding 0; ``segment_ids`` say which
tokens attend to each other (one sample per row: 1, padding -1). The model time is 1 - sigma. Ideogram4Pipeline runs
its unconditional branch through a second, text-free transformer (``unconditional_transformer``), so every call of
the hooked transformer is the prompt's.
"""

from __future__ import annotations

from typing import Any

import torch

from ..blockmap import Architecture, Blocks, CallTokens
from . import Family
from .readers import Args, CallNotReadable, DiffusersCall, one_minus, per_chunk

_TEXT, _IMAGE = 3, 2  # transformer_ideogram4.LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR


def _tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    indicator, segments = call.get("indicator"), call.get("segment_ids")
    if not isinstance(indicator, torch.Tensor) or indicator.ndim != 2:
        return None
    image, text = indicator == _IMAGE, indicator == _TEXT
    starts = image.int().argmax(1)
    start = int(starts[0])
    lengths = text.sum(1)
    positions = torch.arange(indicator.shape[1], device=indicator.device)
    expected = (positions[None] >= start - lengths[:, None]) & (positions[None] < start)
    if not bool((starts == start).all()) or not torch.equal(expected, text):
        raise CallNotReadable("the rows' text does not end where a common image span starts")
    if isinstance(segments, torch.Tensor) and int(segments.max()) > 1:
        raise CallNotReadable("several samples are packed into one row (segment_ids above 1)")
    valid = per_chunk(lengths, chunks, lambda n: int(n.min()))
    return CallTokens(start, valid, image_len=indicator.shape[1] - start, left_padded=True)


FAMILY = Family(
    "Ideogram 4",
    order=97,
    diffusers=Architecture(
        ("Ideogram4Transformer2DModel",),
        single=Blocks("layers"),
        padding="left padding before each row's text (indicator 0); the text ends where the image starts",
        reads=DiffusersCall(sigma_of_time=one_minus, tokens=_tokens),
    ),
)
