"""Small diffusers models and pipelines built from config (Flux.1, SD3, Chroma, Flux.2, Qwen-Image, Z-Image, HiDream,
Lumina 2, Krea 2, Flux 3, HunyuanImage 2.1, Ovis-Image, LongCat-Image, Bria 3, AuraFlow, CogView4, CogView3-Plus,
Ernie-Image, Ideogram 4), for the demo, the benchmark and the tests.

Nothing is downloaded: weights are random (seeded) and prompts are given as embeddings, so no text encoder or
tokenizer is needed. diffusers is imported inside the functions, so this module imports with any diffusers (or none);
the constructors of classes that a diffusers release lacks (of these, 0.31 has only Flux.1, SD3, AuraFlow and
CogView3-Plus) raise ImportError there.
"""

from __future__ import annotations

from typing import Any

import torch


def _seeded(cls_name: str, seed: int, **config: Any) -> Any:
    """``diffusers.<cls_name>(**config)`` with random weights from ``seed``, in eval mode."""
    import diffusers

    torch.manual_seed(seed)
    return getattr(diffusers, cls_name)(**config).eval()


def _pipeline(cls_name: str, **components: Any) -> Any:
    """``diffusers.<cls_name>`` built from ``components`` (text encoders and tokenizers None), progress bar off."""
    import diffusers

    pipe = getattr(diffusers, cls_name)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_like(cls_name: str, layers: int, single_layers: int, heads: int, head_dim: int, text_dim: int, seed: int,
               **extra: Any) -> Any:  # fmt: skip
    """A Flux-shaped diffusers transformer (dual + single blocks, 4 input channels, 3 rope axes), random weights."""
    quarter = head_dim // 4
    return _seeded(
        cls_name,
        seed,
        patch_size=1,
        in_channels=4,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        axes_dims_rope=(quarter, quarter, head_dim - 2 * quarter),
        **extra,
    )


def tiny_flux_transformer(
    *, layers: int = 2, single_layers: int = 2, heads: int = 2, head_dim: int = 16, text_dim: int = 32, seed: int = 0
) -> Any:
    """A FluxTransformer2DModel with the given depth and width (hidden size = heads * head_dim), random weights."""
    return _flux_like(
        "FluxTransformer2DModel", layers, single_layers, heads, head_dim, text_dim, seed, pooled_projection_dim=32
    )


def tiny_sd3_transformer(*, layers: int = 3, seed: int = 0) -> Any:
    """An SD3Transformer2DModel (hidden size 32) with ``layers`` joint blocks; the last emits no text stream."""
    return _seeded(
        "SD3Transformer2DModel",
        seed,
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
    )


def tiny_vae(latent_channels: int, seed: int = 0) -> Any:
    """The tiny AutoencoderKL of diffusers' own pipeline tests (latent channels: 1 for Flux and Chroma, 4 for SD3,
    16 for Z-Image)."""
    return _seeded(
        "AutoencoderKL",
        seed,
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
    )


def tiny_flux_pipeline(transformer: Any = None, *, kontext: bool = False) -> Any:
    """A FluxPipeline (or FluxKontextPipeline) without text encoders: call it with ``prompt_embeds``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "FluxKontextPipeline" if kontext else "FluxPipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(1),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer if transformer is not None else tiny_flux_transformer(),
    )


def tiny_sd3_pipeline(transformer: Any = None) -> Any:
    """A StableDiffusion3Pipeline without text encoders: call it with prompt (and negative) embeddings."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "StableDiffusion3Pipeline",
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


def prompt_embeddings(batch: int, tokens: int, dim: int, pooled_dim: int, seed: int = 1) -> tuple:
    """One random prompt's (embeddings [batch, tokens, dim], pooled [batch, pooled_dim]), repeated over the batch."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, tokens, dim, generator=g).expand(batch, -1, -1).contiguous()
    pooled = torch.randn(1, pooled_dim, generator=g).expand(batch, -1).contiguous()
    return embeds, pooled


def tiny_chroma_transformer(
    *, layers: int = 2, single_layers: int = 2, heads: int = 2, head_dim: int = 16, text_dim: int = 32, seed: int = 0
) -> Any:
    """A ChromaTransformer2DModel (hidden size = heads * head_dim, 4 input channels), random weights."""
    return _flux_like(
        "ChromaTransformer2DModel", layers, single_layers, heads, head_dim, text_dim, seed,
        approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1,
    )  # fmt: skip


def tiny_chroma_pipeline(transformer: Any = None) -> Any:
    """A ChromaPipeline without a text encoder: call it with ``prompt_embeds`` and ``prompt_attention_mask`` (and the
    negative ones when ``guidance_scale`` > 1: Chroma calls the transformer once per CFG branch)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "ChromaPipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(1),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_chroma_transformer(),
    )


def tiny_flux2_transformer(
    *, layers: int = 2, single_layers: int = 2, heads: int = 2, head_dim: int = 16, text_dim: int = 32, seed: int = 0
) -> Any:
    """A Flux2Transformer2DModel (hidden size = heads * head_dim, 4 input channels, 4-axis RoPE), random weights."""
    return _seeded(
        "Flux2Transformer2DModel",
        seed,
        patch_size=1,
        in_channels=4,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        timestep_guidance_channels=256,
        axes_dims_rope=(head_dim // 4,) * 4,
    )


def tiny_flux2_vae(seed: int = 0) -> Any:
    """A tiny AutoencoderKLFlux2: 1 latent channel, 4 x downsampling (the pipeline's vae_scale_factor), so the
    smallest edit input Flux2Pipeline accepts (64 x 64) packs into 8 x 8 = 64 reference tokens."""
    return _seeded(
        "AutoencoderKLFlux2",
        seed,
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(4, 4, 4),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_flux2_pipeline(transformer: Any = None) -> Any:
    """A Flux2Pipeline without a text encoder: call it with ``prompt_embeds`` (and ``image=`` for an edit, whose
    reference tokens are appended after the target's image tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "Flux2Pipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_flux2_vae(),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_flux2_transformer(),
    )


def tiny_qwen_image_transformer(*, layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> Any:
    """A QwenImageTransformer2DModel (dual-stream blocks only; 16 input channels = 4 latent channels x 2 x 2
    patches, text embeddings of width 16), random weights."""
    return _seeded(
        "QwenImageTransformer2DModel",
        seed,
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(head_dim // 2, head_dim // 4, head_dim // 4),
    )


def tiny_qwen_image_vae(downsamples: int = 2, seed: int = 0) -> Any:
    """A tiny AutoencoderKLQwenImage with 4 latent channels and ``downsamples`` spatial halvings (the pipelines'
    vae_scale_factor is 2 ** downsamples) and no residual blocks. The Edit pipeline resizes its input image to about
    1024 x 1024 whatever the output size; 5 halvings keep its reference latents at 32 x 32 (256 tokens once
    packed)."""
    z_dim = 4
    return _seeded(
        "AutoencoderKLQwenImage",
        seed,
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1] * (downsamples + 1),
        num_res_blocks=0,  # the encoder's full-resolution 3D convolutions dominate its cost on CPU
        temperal_downsample=[False] * downsamples,
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )


def tiny_qwen_image_pipeline(transformer: Any = None, *, edit: bool = False) -> Any:
    """A QwenImagePipeline (or QwenImageEditPipeline) without a text encoder: call it with ``prompt_embeds`` and
    ``prompt_embeds_mask``; true CFG (``true_cfg_scale`` > 1 with negative embeddings) is a second transformer call
    per step. The Edit pipeline appends the input image's latents to the image stream."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "QwenImageEditPipeline" if edit else "QwenImagePipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_qwen_image_vae(5 if edit else 2),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_qwen_image_transformer(),
        **({"processor": None} if edit else {}),
    )


def tiny_z_image_transformer(*, layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> Any:
    """A ZImageTransformer2DModel (single-stream ``layers`` only, 16 latent channels, caption embeddings of width
    16), random weights; its image and caption pad tokens are set to seeded random values (diffusers leaves them at
    zero until a checkpoint is loaded)."""
    model = _seeded(
        "ZImageTransformer2DModel",
        seed,
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=heads * head_dim,
        n_layers=layers,
        n_refiner_layers=1,
        n_heads=heads,
        n_kv_heads=heads,
        qk_norm=True,
        cap_feat_dim=16,
        axes_dims=[head_dim // 2, head_dim // 4, head_dim // 4],
        axes_lens=[256, 32, 32],
    )
    with torch.no_grad():
        model.x_pad_token.copy_(torch.randn_like(model.x_pad_token))
        model.cap_pad_token.copy_(torch.randn_like(model.cap_pad_token))
    return model


def tiny_z_image_pipeline(transformer: Any = None) -> Any:
    """A ZImagePipeline without a text encoder: call it with ``prompt_embeds`` (a list of [tokens, 16] tensors, one
    per prompt) and, when ``guidance_scale`` > 0, ``negative_prompt_embeds``: the pipeline then batches
    [prompts; negatives] in one transformer call."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "ZImagePipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(16),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_z_image_transformer(),
    )


def tiny_hidream_transformer(*, layers: int = 2, single_layers: int = 2, seed: int = 0) -> Any:
    """A HiDreamImageTransformer2DModel (hidden size 32, 4 latent channels in 2 x 2 patches, T5 and Llama embeddings
    of width 16, pooled 32; one Llama layer per block; images up to 8 x 8 latents, so a non-square latent pads to
    16 image tokens), random weights, plain feed-forward (no MoE)."""
    return _seeded(
        "HiDreamImageTransformer2DModel",
        seed,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[16, 16],
        text_emb_dim=32,
        num_routed_experts=0,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(8, 8),
        llama_layers=list(range(layers + single_layers)),
    )


def tiny_hidream_pipeline(transformer: Any = None) -> Any:
    """A HiDreamImagePipeline without text encoders: call it with ``prompt_embeds_t5``, ``prompt_embeds_llama3``
    ([layers, batch, tokens, 16]) and ``pooled_prompt_embeds`` (and the negative ones: with CFG it batches
    [negatives; prompts]). Its images are 8 x 8 pixels (the pipeline rescales every request to its default area)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = _pipeline(
        "HiDreamImagePipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        text_encoder_4=None,
        tokenizer_4=None,
        transformer=transformer if transformer is not None else tiny_hidream_transformer(),
    )
    pipe.default_sample_size = 8
    return pipe


def tiny_lumina2_transformer(*, layers: int = 2, seed: int = 0) -> Any:
    """A Lumina2Transformer2DModel (hidden size 32, 4 latent channels, caption embeddings of width 16), random
    weights."""
    return _seeded(
        "Lumina2Transformer2DModel",
        seed,
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=layers,
        num_refiner_layers=1,
        num_attention_heads=4,
        num_kv_heads=2,
        multiple_of=16,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(64, 16, 16),
        cap_feat_dim=16,
    )


def tiny_lumina2_pipeline(transformer: Any = None) -> Any:
    """A Lumina2Pipeline without a text encoder: call it with ``prompt_embeds``, ``prompt_attention_mask`` and the
    negative ones (one transformer call per CFG branch, the prompt's first)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "Lumina2Pipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_lumina2_transformer(),
    )


def tiny_krea2_transformer(*, layers: int = 2, seed: int = 0) -> Any:
    """A Krea2Transformer2DModel (hidden size 32, packed latents of 16 channels, text of 2 tapped layers of width
    16), random weights."""
    return _seeded(
        "Krea2Transformer2DModel",
        seed,
        in_channels=16,
        num_layers=layers,
        attention_head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        timestep_embed_dim=32,
        text_hidden_dim=16,
        num_text_layers=2,
        text_num_attention_heads=2,
        text_num_key_value_heads=2,
        text_intermediate_size=32,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(2, 2, 4),
    )


def tiny_ernie_image_transformer(*, layers: int = 2, seed: int = 0) -> Any:
    """An ErnieImageTransformer2DModel (hidden size 32, latents of 8 channels, text of width 24), random weights. The
    class starts its adaLN and output layers at zero (every block would hand on its input): those are drawn too."""
    model = _seeded(
        "ErnieImageTransformer2DModel",
        seed,
        hidden_size=32,
        num_attention_heads=2,
        num_layers=layers,
        ffn_hidden_size=64,
        in_channels=8,
        out_channels=8,
        patch_size=1,
        text_in_dim=24,
        rope_axes_dim=(4, 6, 6),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.2)
    return model


def tiny_ernie_image_pipeline(transformer: Any = None) -> Any:
    """ErnieImagePipeline with a tiny transformer and no VAE (call it with ``output_type="latent"``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "ErnieImagePipeline",
        transformer=transformer or tiny_ernie_image_transformer(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def tiny_ideogram4_transformer(*, layers: int = 2, seed: int = 0) -> Any:
    """An Ideogram4Transformer2DModel (hidden size 32, packed latents of 8 channels, text features of width 24),
    random weights."""
    return _seeded(
        "Ideogram4Transformer2DModel",
        seed,
        in_channels=8,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=2,
        intermediate_size=64,
        adaln_dim=16,
        llm_features_dim=24,
        mrope_section=(4, 2, 2),
    )


def tiny_flux3_transformer(*, layers: int = 1, single_layers: int = 2, seed: int = 0) -> Any:
    """A Flux3Transformer2DModel (hidden size 32, 4 image and 4 reference channels, text of width 32, 4-axis RoPE),
    random weights."""
    return _seeded(
        "Flux3Transformer2DModel",
        seed,
        in_channels=4,
        cond_in_channels=4,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        timestep_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
    )


def tiny_hunyuan_image_transformer(*, layers: int = 2, single_layers: int = 2, seed: int = 0) -> Any:
    """A HunyuanImageTransformer2DModel (hidden size 32, 4 latent channels, MLLM text of width 16 and byT5 text of
    width 8), random weights."""
    return _seeded(
        "HunyuanImageTransformer2DModel",
        seed,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=layers,
        num_single_layers=single_layers,
        num_refiner_layers=1,
        patch_size=(1, 1),
        text_embed_dim=16,
        text_embed_2_dim=8,
        rope_axes_dim=(8, 8),
    )


def tiny_ovis_image_transformer(*, seed: int = 0) -> Any:
    """An OvisImageTransformer2DModel (Flux-like, hidden size 32, 4 packed channels, text of width 32)."""
    return _flux_like("OvisImageTransformer2DModel", 2, 2, 2, 16, 32, seed, out_channels=4)


def tiny_longcat_image_transformer(*, seed: int = 0) -> Any:
    """A LongCatImageTransformer2DModel (Flux-like, hidden size 32, 4 packed channels, text of width 32)."""
    return _flux_like("LongCatImageTransformer2DModel", 2, 2, 2, 16, 32, seed, pooled_projection_dim=32)


def tiny_bria_transformer(*, seed: int = 0) -> Any:
    """A BriaTransformer2DModel (Flux-like, hidden size 32, 4 packed channels, text of width 32)."""
    return _flux_like("BriaTransformer2DModel", 2, 2, 2, 16, 32, seed)


def tiny_auraflow_transformer(*, layers: int = 2, single_layers: int = 2, seed: int = 0) -> Any:
    """An AuraFlowTransformer2DModel (hidden size 32, 4 latent channels, T5 text of width 32; 8 register tokens
    lead its text stream), random weights; in diffusers 0.31 too."""
    return _seeded(
        "AuraFlowTransformer2DModel",
        seed,
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=layers,
        num_single_dit_layers=single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=64,
    )


def tiny_auraflow_pipeline(transformer: Any = None) -> Any:
    """An AuraFlowPipeline without a text encoder: call it with ``prompt_embeds`` (and the negative ones); with
    ``guidance_scale`` > 1 it batches [negatives; prompts] (it has no ``do_classifier_free_guidance`` property)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "AuraFlowPipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_auraflow_transformer(),
    )


def _cogview_config(layers: int) -> dict[str, Any]:
    return dict(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=8,
        num_attention_heads=4,
        text_embed_dim=32,
        time_embed_dim=16,
        condition_dim=8,
        pos_embed_max_size=16,
        sample_size=8,
    )


def tiny_cogview4_transformer(*, layers: int = 2, seed: int = 0) -> Any:
    """A CogView4Transformer2DModel (hidden size 32, 4 latent channels, text of width 32), random weights."""
    return _seeded("CogView4Transformer2DModel", seed, **_cogview_config(layers), rope_axes_dim=(4, 4))


def tiny_cogview4_pipeline(transformer: Any = None) -> Any:
    """A CogView4Pipeline without a text encoder: call it with ``prompt_embeds`` and ``negative_prompt_embeds`` (one
    transformer call per CFG branch, the prompt's first; its timesteps are unshifted, its sigmas shifted)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _pipeline(
        "CogView4Pipeline",
        scheduler=FlowMatchEulerDiscreteScheduler(  # CogView4-6B's: dynamic, linear time shift
            base_shift=0.25,
            max_shift=0.75,
            base_image_seq_len=256,
            use_dynamic_shifting=True,
            time_shift_type="linear",
        ),
        vae=tiny_vae(4),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_cogview4_transformer(),
    )


def tiny_cogview3plus_transformer(*, layers: int = 2, seed: int = 0) -> Any:
    """A CogView3PlusTransformer2DModel (hidden size 32, 4 latent channels, T5 text of width 32), random weights; in
    diffusers 0.31 too."""
    return _seeded("CogView3PlusTransformer2DModel", seed, **_cogview_config(layers))


def tiny_cogview3plus_pipeline(transformer: Any = None) -> Any:
    """A CogView3PlusPipeline without a text encoder (a DDIM sampler): call it with ``prompt_embeds`` and
    ``negative_prompt_embeds``; with CFG it batches [negatives; prompts]."""
    from diffusers import CogVideoXDDIMScheduler

    return _pipeline(
        "CogView3PlusPipeline",
        scheduler=CogVideoXDDIMScheduler(),
        vae=tiny_vae(4),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_cogview3plus_transformer(),
    )
