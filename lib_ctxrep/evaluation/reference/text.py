"""A tiny fixed-embedding text encoder, standing in for T5 (token embeddings) and CLIP (pooled vector) of Flux.

What it is for: the reference model is conditioned like a real Flux model (``encoder_hidden_states`` of shape
``[B, seq, text_dim]`` into the dual-stream blocks, ``pooled_projections`` ``[B, pooled_dim]`` into the modulation),
so that methods acting on the text stream (contextual repulsion) or on the conditioning (CADS) run unchanged on it.
Nothing is learned: each known prompt has fixed pseudo-random embeddings drawn from a seed. The empty prompt ``""``
is the unconditional (null) prompt of classifier-free guidance.
"""

from __future__ import annotations

import torch

from .data import CLASSES

SEQ_LEN = 4
"""Text tokens per prompt."""
TEXT_DIM = 32
"""Width of each token embedding (the transformer's ``joint_attention_dim``)."""
POOLED_DIM = 32
"""Width of the pooled vector (the transformer's ``pooled_projection_dim``)."""
EMBEDDING_SEED = 20240611
NULL_PROMPT = ""
PROMPTS: tuple[str, ...] = (NULL_PROMPT, *CLASSES)
"""The vocabulary: the null prompt, then one prompt per class, in class order."""


def _table() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(EMBEDDING_SEED)
    tokens = torch.randn(len(PROMPTS), SEQ_LEN, TEXT_DIM, generator=g)
    pooled = torch.randn(len(PROMPTS), POOLED_DIM, generator=g)
    return tokens, pooled


_TOKENS, _POOLED = _table()


def normalize(prompt: str) -> str:
    """Canonical form of a prompt: lower case, surrounding blanks and an article ("a"/"an") stripped."""
    words = prompt.strip().lower().split()
    if words and words[0] in ("a", "an"):
        words = words[1:]
    return " ".join(words)


def prompt_index(prompt: str) -> int:
    """Index of ``prompt`` in :data:`PROMPTS`; raises ``ValueError`` listing the known prompts if it is unknown."""
    key = normalize(prompt)
    if key not in PROMPTS:
        known = ", ".join(repr(p) for p in PROMPTS)
        raise ValueError(f"unknown prompt {prompt!r}: the reference text encoder knows only {known}")
    return PROMPTS.index(key)


def class_prompt(class_id: int) -> str:
    """The prompt that names class ``class_id``."""
    return CLASSES[int(class_id)]


def encode(prompts: list[str] | tuple[str, ...] | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of prompts: ``(prompt_embeds [B, SEQ_LEN, TEXT_DIM], pooled [B, POOLED_DIM])``, float32.

    ``""`` is the null prompt. Case and a leading "a"/"an" are ignored ("A square" = "square").
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    index = torch.tensor([prompt_index(p) for p in prompts], dtype=torch.long)
    return _TOKENS[index].clone(), _POOLED[index].clone()


def encode_classes(
    class_ids: torch.Tensor | list[int], drop: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of class ids ``[B]``; where ``drop`` (bool ``[B]``) is true, the null prompt's instead."""
    index = torch.as_tensor(class_ids).long().reshape(-1) + 1
    if drop is not None:
        index = torch.where(drop, torch.zeros_like(index), index)
    return _TOKENS[index].clone(), _POOLED[index].clone()


def shared_pooled(batch: int) -> torch.Tensor:
    """The null prompt's pooled vector for every row ``[batch, POOLED_DIM]``: for models trained with
    ``--pooled shared``, whose prompts reach the model only through the token embeddings."""
    return _POOLED[:1].expand(batch, -1).clone()
