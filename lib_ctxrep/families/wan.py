"""Wan 2.1 / 2.2 (Forge Neo's backend/nn/wan.py, ComfyUI's comfy/ldm/wan): text by cross-attention only."""

from __future__ import annotations

from . import Family

FAMILY = Family(
    "Wan",
    order=920,
    no_text_stream=("WanModel",),
    why="its text enters by cross-attention only, so no text stream passes through its blocks",
)
