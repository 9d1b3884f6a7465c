"""Flux 3: joint blocks that return (text, [image; image_cond]); only text is repelled, so image_cond references are
never touched."""

from __future__ import annotations

from ..blockmap import Architecture, Blocks
from . import Family

FAMILY = Family(
    "Flux 3",
    order=100,
    diffusers=Architecture(
        ("Flux3Transformer2DModel",),
        single=Blocks("single_transformer_blocks"),  # joint blocks returning (text, [image; refs])
        references="image_cond tokens after the target's in the content stream (never touched: text mode only)",
    ),
)
