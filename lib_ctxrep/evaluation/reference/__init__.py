"""The reference model: a small Flux-architecture model whose output distribution is known, for measuring diversity.

What it is for: batch-diversity methods (contextual repulsion, SPELL, CADS, ...) claim to recover modes that guided
sampling drops. On a real model nobody knows the modes; here they are known exactly:

- :mod:`.data`: procedural 16x16 images of one shape per prompt-named class, with unevenly frequent modes
  (position, colour, size variant, background), and an analytic classifier mapping any image back to its mode.
- :mod:`.text`: a fixed-embedding text encoder standing in for T5 (token embeddings) and CLIP (pooled vector).
- :mod:`.model`: the diffusers ``FluxTransformer2DModel`` config, loading of the committed weights and a
  rectified-flow Euler sampler with true CFG and hook points (``x0_fn``, ``cond_fn``, ``callback``).
- :mod:`.train`: the deterministic training script that produced ``weights.safetensors``.
- :mod:`.metrics` and :mod:`.evaluate`: fidelity, class accuracy, mode recall and typicality bias.

Importing this package needs only torch; diffusers and safetensors are imported when a model is built or loaded.
"""

from .data import CLASSES, MODE_PROBS, classify, make_dataset, render, sample_modes
from .model import REFERENCE_CONFIG, build_model, load_reference_model, sample, timesteps
from .text import encode

__all__ = [
    "CLASSES",
    "MODE_PROBS",
    "REFERENCE_CONFIG",
    "build_model",
    "classify",
    "encode",
    "load_reference_model",
    "make_dataset",
    "render",
    "sample",
    "sample_modes",
    "timesteps",
]
