"""The reference model: a small diffusers ``FluxTransformer2DModel`` trained on :mod:`.data`.

What it is for: a real Flux architecture (dual-stream and single-stream blocks, RoPE ids, pooled projections) whose
output distribution is known, so batch-diversity methods can be measured against ground truth on a CPU. It is
trained with rectified flow and prompt dropout (see :mod:`lib_ctxrep.evaluation.reference.train`); sampling uses true
classifier-free guidance (a conditional and an unconditional pass).

Latent space: the 16x16 RGB image itself, packed like Flux packs its VAE latents: 2x2 patches become 64 tokens of 12
channels (``patch_size=1, in_channels=12``). ``img_ids`` carry the (row, column) of each patch, ``txt_ids`` are zero.

Time convention (that of diffusers' Flux pipelines): ``x_t = (1 - t) * x0 + t * noise``, ``t`` runs from 1 (noise) to
0 (image), the model predicts the velocity ``v = noise - x0`` and receives ``timestep=t`` in [0, 1] (the transformer
multiplies it by 1000 itself).

diffusers is imported inside the functions, so importing this module needs only torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import text
from .data import SIZE

REFERENCE_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 12,
    "num_layers": 6,
    "num_single_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "joint_attention_dim": text.TEXT_DIM,
    "pooled_projection_dim": text.POOLED_DIM,
    "guidance_embeds": False,
    "axes_dims_rope": [4, 14, 14],
}
"""Constructor arguments of the reference ``FluxTransformer2DModel`` (all exist in diffusers 0.31): 6 dual-stream
and 6 single-stream blocks, so that block presets (dual only, the first or last single blocks) mean something, at
hidden size 64 (2 heads of 32), which keeps a training step and the benchmark affordable on 2 CPU cores. The heads are
32 wide so that RoPE has 7 frequencies per image axis: with Flux's theta of 10000, narrower heads leave one usable
frequency on an 8x8 patch grid and the model cannot learn the shapes' geometry."""

WEIGHTS_PATH = Path(__file__).with_name("weights.safetensors")
"""The committed weights."""
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
"""Default true-CFG scale of :func:`sample`, at which guided samples show typicality bias."""
DEFAULT_SHIFT = 1.0
REPULSION_STEP_STRENGTH = 2.85
REPULSION_WINDOW = 0.3
"""Contextual repulsion's recommended setting for this model (``python -m lib_ctxrep demo``'s default, and the
benchmark's memory runs): see docs/benchmark.md."""
REPULSION_WHY = (
    "this model commits to a sample's mode over the first quarter of its steps, and in one step (the default window) "
    "repulsion moves a sample by a twentieth of its push; window 0.3 covers those steps (docs/benchmark.md)"
)
"""Why the demo runs in a longer window than the library's default, in one line."""
PATCH_GRID = SIZE // 2
"""Patches per side (8): 64 image tokens."""

X0Fn = Callable[[torch.Tensor, float, int], torch.Tensor]
CondFn = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def build_model(config: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """A freshly initialised ``FluxTransformer2DModel`` (seeded, float32, train mode) of ``REFERENCE_CONFIG``."""
    from diffusers import FluxTransformer2DModel

    config = dict(REFERENCE_CONFIG if config is None else config)
    config["axes_dims_rope"] = tuple(config["axes_dims_rope"])
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = FluxTransformer2DModel(**config)
    finally:
        torch.random.set_rng_state(state)
    return model.float()


def read_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """The metadata stored with the weights (config, seed, steps, data version, ...), JSON fields decoded."""
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_PATH if path is None else path), framework="pt") as f:
        raw = f.metadata() or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def load_reference_model(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """The trained reference model from ``path`` (default: the committed :data:`WEIGHTS_PATH`), in eval mode.

    Deterministic: the model is built from the config stored with the weights and every parameter is loaded.
    """
    from safetensors.torch import load_file

    path = WEIGHTS_PATH if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"reference weights not found at {path}; train them with python -m lib_ctxrep.evaluation.reference.train"
        )
    meta = read_metadata(path)
    model = build_model(meta.get("config", REFERENCE_CONFIG))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)
    if dtype != torch.float32:
        model = model.to(dtype)
    model = model.eval().requires_grad_(False)
    return model


def pack(images: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, 16, 16]`` -> tokens ``[B, 64, 12]`` (2x2 patches, Flux's latent packing)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Inverse of :func:`pack`: tokens ``[B, 64, 12]`` -> images ``[B, 3, 16, 16]``."""
    b, _, d = tokens.shape
    c, g = d // 4, size // 2
    x = tokens.reshape(b, g, g, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, size, size)


def image_ids(grid: int = PATCH_GRID) -> torch.Tensor:
    """RoPE ids ``[64, 3]`` of the image tokens, as Flux builds them: (0, row, column)."""
    ids = torch.zeros(grid, grid, 3)
    ids[..., 1] = torch.arange(grid)[:, None]
    ids[..., 2] = torch.arange(grid)[None, :]
    return ids.reshape(grid * grid, 3)


def text_ids(seq_len: int = text.SEQ_LEN) -> torch.Tensor:
    """RoPE ids ``[seq_len, 3]`` of the text tokens: zeros, as in Flux."""
    return torch.zeros(seq_len, 3)


def velocity(
    model: Any, x: torch.Tensor, t: float | torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor
) -> torch.Tensor:
    """The model's velocity prediction ``[B, 3, 16, 16]`` at images ``x`` ``[B, 3, 16, 16]`` and time(s) ``t``."""
    b = x.shape[0]
    dtype = next(model.parameters()).dtype
    t = torch.as_tensor(t, dtype=dtype).reshape(-1).expand(b)
    out = model(
        hidden_states=pack(x).to(dtype),
        encoder_hidden_states=prompt_embeds.to(dtype),
        pooled_projections=pooled.to(dtype),
        timestep=t,
        img_ids=image_ids().to(dtype),
        txt_ids=text_ids(prompt_embeds.shape[1]).to(dtype),
        return_dict=False,
    )[0]
    return unpack(out.float())


def timesteps(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT) -> list[float]:
    """The ``steps + 1`` times ``t`` of the sampler, from 1.0 to 0.0.

    Evenly spaced, then shifted like Flux's scheduler: ``t' = shift * t / (1 + (shift - 1) * t)`` (``shift > 1``
    spends more steps at high noise). Step ``i`` goes from ``timesteps[i]`` to ``timesteps[i + 1]``.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    out = []
    for i in range(steps + 1):
        s = 1.0 - i / steps
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out


def initial_noise(seeds: Sequence[int]) -> torch.Tensor:
    """Noise ``[B, 3, 16, 16]``: sample ``i``'s from ``torch.Generator().manual_seed(seeds[i])`` alone."""
    return torch.stack([torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def _prompts(prompts: Sequence[str | int] | torch.Tensor) -> list[str]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.reshape(-1).tolist()
    if isinstance(prompts, str | int):
        raise TypeError("prompts must be a sequence (one prompt or class id per sample)")
    return [text.class_prompt(p) if isinstance(p, int) else p for p in prompts]


@torch.no_grad()
def sample(
    model: Any,
    prompts: Sequence[str | int] | torch.Tensor,
    seeds: Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    shift: float = DEFAULT_SHIFT,
    x0_fn: X0Fn | None = None,
    cond_fn: CondFn | None = None,
    callback: Callback | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate images ``[B, 3, 16, 16]`` in [-1, 1] with a plain Euler rectified-flow sampler and true CFG.

    - ``prompts``: one per sample, a prompt string (see :mod:`lib_ctxrep.evaluation.reference.text`) or a class id.
    - ``seeds``: one per sample; sample ``i``'s initial noise is drawn from its own seed (:func:`initial_noise`),
      so a sample is the same whether it is generated alone or in a batch (up to float rounding). ``noise``
      ``[B, 3, 16, 16]`` overrides the seeds' noise.
    - ``guidance``: true CFG scale, ``v = v_uncond + guidance * (v_cond - v_uncond)``. Both passes run as one batch
      of ``2B``, **unconditional first** (rows ``0..B-1`` use the null prompt ``""``, rows ``B..2B-1`` the
      prompts). ``guidance == 1`` runs the conditional pass only.
    - ``steps``, ``shift``: the schedule, :func:`timesteps` ``(steps, shift)``.
    - ``cond_fn(prompt_embeds, pooled, t) -> (prompt_embeds, pooled)``: called every step with the conditional
      prompts' embeddings ``[B, 4, 32]``, ``[B, 32]`` (fresh copies) and may return modified ones (e.g. CADS); the
      null prompt is not passed through it.
    - ``x0_fn(x0, t, step) -> x0``: called every step with the guided prediction of the clean images ``x0``
      ``[B, 3, 16, 16]`` and may return a modified one (e.g. SPELL, particle guidance). The step then moves to
      ``x_next = (1 - t_next) * x0 + t_next * noise_hat``, with ``noise_hat = x + (1 - t) * v`` the guided noise
      prediction; with an unmodified ``x0`` this equals the Euler step ``x + (t_next - t) * v``.
    - ``callback(step, t, x, x0)``: called after each step with the step index, its start time, the new state
      ``x`` and the (possibly modified) ``x0``.
    """
    names = _prompts(prompts)
    b = len(names)
    if len(seeds) != b and noise is None:
        raise ValueError(f"{b} prompts but {len(seeds)} seeds: give one seed per sample")
    x = initial_noise(seeds) if noise is None else noise.float().clone()
    cond_embeds, cond_pooled = text.encode(names)
    null_embeds, null_pooled = text.encode([text.NULL_PROMPT] * b)
    ts = timesteps(steps, shift)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        embeds, pooled = cond_embeds.clone(), cond_pooled.clone()
        if cond_fn is not None:
            embeds, pooled = cond_fn(embeds, pooled, t)
        if guidance == 1.0:
            v = velocity(model, x, t, embeds, pooled)
        else:
            both = velocity(
                model, torch.cat([x, x]), t, torch.cat([null_embeds, embeds]), torch.cat([null_pooled, pooled])
            )
            v_uncond, v_cond = both[:b], both[b:]
            v = v_uncond + guidance * (v_cond - v_uncond)
        x0 = x - t * v
        noise_hat = x + (1.0 - t) * v
        if x0_fn is not None:
            x0 = x0_fn(x0, t, i)
        x = (1.0 - t_next) * x0 + t_next * noise_hat
        if callback is not None:
            callback(i, t, x, x0)
    return x.clamp(-1, 1)
