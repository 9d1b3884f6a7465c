"""A tiny fixed text encoder standing in for T5 (padded token embeddings) and CLIP (pooled vector) of Flux.

What it is for: the reference model is conditioned like a real Flux model (``encoder_hidden_states`` of shape
``[B, SEQ_LEN, TEXT_DIM]`` into the dual-stream blocks, ``pooled_projections`` ``[B, POOLED_DIM]`` into the
modulation), so that methods acting on the text stream (contextual repulsion) or on the conditioning (CADS) run
unchanged on it, on a text stream shaped like T5's:

- a prompt is split into words of a small vocabulary and ends with an end-of-sequence token (T5's ``</s>``), then is
  padded to :data:`SEQ_LEN` tokens (Flux pads T5 to 512); :func:`token_mask` marks the real tokens;
- one fixed (untrained, seeded) self-attention layer mixes the tokens, the padding masked out of the keys as T5's
  encoder does: the real tokens never see the padding, while every padding position attends to the prompt, so its
  output differs from prompt to prompt (as T5's padding outputs do, which Flux attends to without a mask);
- the transformer receives all :data:`SEQ_LEN` tokens and no mask, like Flux.

Nothing is learned. The empty prompt ``""`` (end-of-sequence and padding alone) is the unconditional (null) prompt of
classifier-free guidance. Prompts name a class (``"square"``, ``"a square"``, ``"a picture of a square"``, ...): the
training data draws one of :data:`TEMPLATES` per sample, so the class word sits at different positions.
"""

from __future__ import annotations

import math

import torch

from .data import CLASSES

SEQ_LEN = 16
"""Text tokens per prompt, padding included (the shrunken counterpart of Flux's 512 T5 tokens)."""
TEXT_DIM = 64
"""Width of each token embedding (the transformer's ``joint_attention_dim``)."""
POOLED_DIM = 32
"""Width of the pooled vector (the transformer's ``pooled_projection_dim``)."""
EMBEDDING_SEED = 20261208
NULL_PROMPT = ""
PAD, EOS = "<pad>", "</s>"
TEMPLATES: tuple[str, ...] = (
    "{}",
    "a {}",
    "a picture of a {}",
    "an image of a {}",
    "a simple drawing of a {}",
    "one {} on a plain background",
)
"""Prompt templates of the training data (the class word at different positions and lengths)."""
VOCABULARY: tuple[str, ...] = (
    PAD,
    EOS,
    *CLASSES,
    *sorted({w for t in TEMPLATES for w in t.split() if w != "{}"}),
)
"""Known words: padding, end of sequence, the class words, the templates' words."""
PROMPTS: tuple[str, ...] = (NULL_PROMPT, *CLASSES)
"""The null prompt, then one prompt per class, in class order (:func:`class_prompt`)."""


def _tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(EMBEDDING_SEED)
    words = torch.randn(len(VOCABULARY), TEXT_DIM, generator=g)
    positions = 0.3 * torch.randn(SEQ_LEN, TEXT_DIM, generator=g)
    pooled = torch.randn(POOLED_DIM, generator=g)
    mixing = tuple(torch.randn(TEXT_DIM, TEXT_DIM, generator=g) / math.sqrt(TEXT_DIM) for _ in range(3))
    return words, positions, pooled, mixing


_WORDS, _POSITIONS, _POOLED, _MIXING = _tables()


def tokenize(prompt: str) -> list[int]:
    """Vocabulary indices of ``prompt``'s words followed by the end-of-sequence token (case and blanks ignored);
    raises ``ValueError`` naming an unknown word or a prompt longer than :data:`SEQ_LEN` tokens."""
    words = prompt.strip().lower().split()
    unknown = [w for w in words if w not in VOCABULARY or w in (PAD, EOS)]
    if unknown:
        known = ", ".join(w for w in VOCABULARY if w not in (PAD, EOS))
        raise ValueError(f"unknown word {unknown[0]!r} in prompt {prompt!r}: the reference text encoder knows {known}")
    if len(words) + 1 > SEQ_LEN:
        raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most {SEQ_LEN - 1} fit")
    return [VOCABULARY.index(w) for w in words] + [VOCABULARY.index(EOS)]


def _ids(prompts: list[str] | tuple[str, ...] | str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = torch.zeros(len(prompts), SEQ_LEN, dtype=torch.long)  # PAD is index 0
    mask = torch.zeros(len(prompts), SEQ_LEN, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens = tokenize(prompt)
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = True
    return ids, mask


def token_mask(prompts: list[str] | tuple[str, ...] | str) -> torch.Tensor:
    """Bool ``[B, SEQ_LEN]``: True at each prompt's real tokens (its words and the end-of-sequence token), False at
    its padding, like the attention mask of T5's tokenizer."""
    return _ids(prompts)[1]


def _encode_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = _WORDS[ids] + _POSITIONS  # [B, L, D]
    wq, wk, wv = _MIXING
    scores = (x @ wq) @ (x @ wk).transpose(1, 2) / math.sqrt(TEXT_DIM)  # [B, L, L]
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))  # keys: real tokens only
    mixed = x + torch.softmax(scores, dim=-1) @ (x @ wv)
    return torch.nn.functional.layer_norm(mixed, (TEXT_DIM,))


def encode(prompts: list[str] | tuple[str, ...] | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of prompts: ``(prompt_embeds [B, SEQ_LEN, TEXT_DIM], pooled [B, POOLED_DIM])``, float32.

    ``""`` is the null prompt. The pooled vector is the same for every prompt: the prompt reaches the model only
    through the token embeddings, as T5's do in Flux. :func:`token_mask` says which tokens are padding.
    """
    ids, mask = _ids(prompts)
    return _encode_ids(ids, mask), shared_pooled(ids.shape[0])


def class_prompt(class_id: int, template: int = 0) -> str:
    """The prompt that names class ``class_id`` in template ``template`` of :data:`TEMPLATES` (0: the bare word)."""
    return TEMPLATES[int(template)].format(CLASSES[int(class_id)])


def encode_classes(
    class_ids: torch.Tensor | list[int], drop: torch.Tensor | None = None, templates: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of class ids ``[B]`` in ``templates`` ``[B]`` (default: the bare class word); where ``drop`` (bool
    ``[B]``) is true, the null prompt's instead."""
    class_ids = torch.as_tensor(class_ids).long().reshape(-1)
    chosen = torch.zeros_like(class_ids) if templates is None else torch.as_tensor(templates).long().reshape(-1)
    prompts = [class_prompt(int(k), int(t)) for k, t in zip(class_ids, chosen, strict=True)]
    if drop is not None:
        prompts = [NULL_PROMPT if bool(d) else p for p, d in zip(prompts, drop, strict=True)]
    return encode(prompts)


def shared_pooled(batch: int) -> torch.Tensor:
    """The pooled vector of every prompt, ``[batch, POOLED_DIM]``."""
    return _POOLED.expand(batch, -1).clone()
