"""Small diffusers Flux / SD3 models and pipelines built from config, for the demo, the benchmark and the tests.

Nothing is downloaded: weights are random (seeded) and prompts are given as embeddings, so no text encoder or
tokenizer is needed. diffusers is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import torch


def tiny_flux_transformer(
    *, layers: int = 2, single_layers: int = 2, heads: int = 2, head_dim: int = 16, text_dim: int = 32, seed: int = 0
) -> Any:
    """A FluxTransformer2DModel with the given depth and width (hidden size = heads * head_dim), random weights."""
    from diffusers import FluxTransformer2DModel

    quarter = head_dim // 4
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=32,
        axes_dims_rope=[quarter, quarter, head_dim - 2 * quarter],
    ).eval()


def tiny_sd3_transformer(*, layers: int = 3, seed: int = 0) -> Any:
    """An SD3Transformer2DModel (hidden size 32) with ``layers`` joint blocks; the last emits no text stream."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=layers,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    ).eval()


def tiny_vae(latent_channels: int, seed: int = 0) -> Any:
    """The tiny AutoencoderKL of diffusers' own pipeline tests (1 latent channel for Flux, 4 for SD3)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def tiny_flux_pipeline(transformer: Any = None, *, kontext: bool = False) -> Any:
    """A FluxPipeline (or FluxKontextPipeline) without text encoders: call it with ``prompt_embeds``."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    cls = diffusers.FluxKontextPipeline if kontext else diffusers.FluxPipeline
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(1),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer if transformer is not None else tiny_flux_transformer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(transformer: Any = None) -> Any:
    """A StableDiffusion3Pipeline without text encoders: call it with prompt (and negative) embeddings."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(4),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        transformer=transformer if transformer is not None else tiny_sd3_transformer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeddings(batch: int, tokens: int, dim: int, pooled_dim: int, seed: int = 1) -> tuple:
    """One random prompt's (embeddings [batch, tokens, dim], pooled [batch, pooled_dim]), repeated over the batch."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, tokens, dim, generator=g).expand(batch, -1, -1).contiguous()
    pooled = torch.randn(1, pooled_dim, generator=g).expand(batch, -1).contiguous()
    return embeds, pooled
