"""Anima (Cosmos Predict 2 based; Forge Neo's backend/nn/anima.py ``Anima``): the text enters every block by
cross-attention only, and the blocks return the image tokens alone."""

from __future__ import annotations

from . import Family

FAMILY = Family(
    "Anima",
    order=900,
    no_text_stream=("Anima",),
    why="its text enters by cross-attention only, so no text stream passes through its blocks",
)
