"""UNets (SD 1.5, SD 2, SDXL and their fine-tunes) in every host: the text enters by cross-attention only."""

from __future__ import annotations

from . import Family

FAMILY = Family(
    "SD 1.5 / SDXL UNet",
    order=910,
    # Forge: backend/nn/unet.py; diffusers: models/unets/unet_2d_condition.py; ComfyUI: ldm/modules/diffusionmodules
    no_text_stream=("IntegratedUNet2DConditionModel", "UNet2DConditionModel", "UNetModel"),
    why="a UNet takes its text by cross-attention only, so no text stream passes through its blocks",
)
