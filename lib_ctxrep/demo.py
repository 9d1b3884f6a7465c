"""Interim demo (until the reference model lands): a small diffusers Flux model built from config, with random weights.

Generates one batch with and without contextual repulsion from the same seeds and prints, per hooked block at the
first step, the batch's contextual Vendi score before and after the update, the Vendi score of the final latents,
and the wall-time ratio of the two runs. Then compares one batch of 8 with 8 batches of 1 with cross-batch memory,
by the contextual Vendi score of the 8 samples at the last double block.
"""

from __future__ import annotations

import argparse
import time

import torch

from .config import RepulsionConfig
from .vendi import vendi_score


def run(args: argparse.Namespace) -> dict:
    """Run the demo and print its report; returns the numbers."""
    from .integrations.diffusers import apply_contextual_repulsion
    from .integrations.diffusers_tiny import prompt_embeddings, tiny_flux_pipeline, tiny_flux_transformer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    transformer = tiny_flux_transformer(
        layers=args.layers, single_layers=args.single_layers, heads=args.heads, head_dim=32, text_dim=64
    )
    pipe = tiny_flux_pipeline(transformer)
    embeds, pooled = prompt_embeddings(args.batch, args.text_tokens, 64, 32)
    config = RepulsionConfig(strength=args.strength, iterations=args.iterations, window=args.window)

    def stop_after_first_step(pipe_, step, timestep, kwargs):
        pipe_._interrupt = True  # the remaining steps are skipped (FluxPipeline checks .interrupt)
        return {}

    def generate(batch: int = args.batch, seed: int = args.seed, first_step_only: bool = False) -> torch.Tensor:
        return pipe(
            prompt_embeds=embeds[:1].expand(batch, -1, -1),
            pooled_prompt_embeds=pooled[:1].expand(batch, -1),
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=stop_after_first_step if first_step_only else None,
        ).images

    def first_step_context(runs: list[tuple[int, int]], config: RepulsionConfig | None) -> float:
        """Vendi of the last double block's text stream at the first step, pooled over runs (batch, seed)."""
        captured: list[torch.Tensor] = []
        seen = {"first": False}

        def capture(module, args_, output):
            if not seen["first"]:
                seen["first"] = True
                captured.append(output[0].detach().clone())

        handle = apply_contextual_repulsion(pipe, config) if config is not None else None
        hook = transformer.transformer_blocks[-1].register_forward_hook(capture)
        try:
            for batch, seed in runs:
                seen["first"] = False
                generate(batch, seed, first_step_only=True)
                if handle is not None:
                    handle.new_batch()  # the host knows where batches end
        finally:
            hook.remove()
            if handle is not None:
                handle.remove()
        return float(vendi_score(torch.cat(captured)))

    with torch.inference_mode():
        generate()  # warm-up
        start = time.perf_counter()
        base = generate()
        plain_time = time.perf_counter() - start
        with apply_contextual_repulsion(pipe, config, record_stats=True) as handle:
            start = time.perf_counter()
            repelled = generate()
            hooked_time = time.perf_counter() - start
    print(
        f"[demo] tiny Flux (random weights): {args.layers} double + {args.single_layers} single blocks, "
        f"D={args.heads * 32}, batch {args.batch}, {args.steps} steps, strength {args.strength}, M={args.iterations}, "
        f"window {args.window}"
    )
    print("[demo] contextual Vendi per hooked block at the first step (before -> after the update):")
    for stat in handle.stats:
        if stat.progress == 0.0:
            print(f"  {stat.block:>10}  {stat.vendi_before:6.3f} -> {stat.vendi_after:6.3f}")
    v_base, v_rep = float(vendi_score(base)), float(vendi_score(repelled))
    ratio = hooked_time / plain_time
    print(f"[demo] Vendi of the final latents: {v_base:.3f} without, {v_rep:.3f} with repulsion (max {args.batch})")
    print(f"[demo] wall time: {plain_time:.2f} s without, {hooked_time:.2f} s with -> ratio {ratio:.3f}")

    n = args.memory_batches
    with torch.inference_mode():
        one_batch = [(n, args.seed)]
        singles = [(1, args.seed + i) for i in range(n)]
        base_batch = first_step_context(one_batch, None)
        rep_batch = first_step_context(one_batch, config)
        base_single = first_step_context(singles, None)
        mem_single = first_step_context(singles, RepulsionConfig(**{**config.to_dict(), "memory": True}))
    share = (mem_single - base_single) / (rep_batch - base_batch) if rep_batch > base_batch else float("nan")
    print(f"[demo] cross-batch memory: contextual Vendi of {n} samples at the last double block, first step")
    print(f"  one batch of {n}:   {base_batch:.4f} without -> {rep_batch:.4f} with repulsion")
    print(f"  {n} batches of 1:   {base_single:.4f} without -> {mem_single:.4f} with memory")
    print(f"  memory reaches {share * 100:.0f} % of the batch's gain")
    return dict(stats=handle.stats, vendi=(v_base, v_rep), ratio=ratio, memory_share=share)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m lib_ctxrep demo``."""
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32, help="latent image side in pixels / 8 * 2 (tiny VAE)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--single-layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--strength", type=float, default=RepulsionConfig.strength)
    parser.add_argument("--iterations", type=int, default=RepulsionConfig.iterations)
    parser.add_argument("--window", type=float, default=RepulsionConfig.window)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-batches", type=int, default=8, help="batch count for the cross-batch memory check")
