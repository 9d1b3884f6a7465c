"""The block map: how a block's output holds its tokens, and the only code that edits a block's output.

Each model family is described once, as data, in its module of :mod:`lib_ctxrep.families` (an :class:`Architecture`
per host, with the small functions that read that host's calls beside it). Every front end (diffusers, Forge main,
Forge Neo, ComfyUI) recognises its model there, learns on each call the few facts an entry cannot know
(:class:`CallTokens`: text length and padding, the target's image tokens, through the entry's reader) and hooks the
blocks :func:`select_blocks` names; :func:`repel_block` then finds the contextual tokens in a block's output, has the
engine repel them and puts them back. Nothing else touches a block's output.

Conventions that hold for every entry:

- A dual-stream block returns a tuple; ``text_at`` / ``image_at`` index its text and image streams. The image stream
  is never changed. A text stream of ``None`` (SD3's last block) is left alone.
- A single-stream block returns either one sequence holding text and image tokens (in ``order``), or, like a dual
  block, a tuple (diffusers' Flux from 0.35).
- Text padding is never repelled: only the ``text_valid`` tokens of the text are (padding that the model masks out of
  attention, or pads with a learned token, sits after them, or before them where ``text_start`` says so).
- Image tokens outside the target's span (reference images of edit models: Kontext, Flux.2, LongCat-Image and
  Qwen-Image edits, Flux 3's image_cond) are never repelled; only single-stream blocks in "all" mode repel image
  tokens at all.
- A block list's text stream may end in tokens the model discards after the block (HiDream appends one Llama layer's
  tokens per block): the front end leaves them out of ``text_valid``, so they are never repelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .engine import Run

TEXT_FIRST = "text-image"
IMAGE_FIRST = "image-text"

Span = tuple[int, int]


@dataclass(frozen=True)
class Blocks:
    """One list of transformer blocks of a model and where the tokens sit in each block's output."""

    attr: str  # the model attribute holding the blocks (an nn.ModuleList)
    text_at: int = 0  # in a tuple output: the text stream's index
    image_at: int = 1  # in a tuple output: the image stream's index
    order: str = (
        TEXT_FIRST  # in one sequence: text first (Flux, Chroma, Flux.2, Lumina) or image first (Z-Image, HiDream)
    )
    last_has_text: bool = True  # False: the last block outputs no text stream (SD3), so it is not hooked
    seq_first: bool = False  # the block returns [tokens, rows, width] (diffusers' Ernie-Image) instead of [rows, ...]


@dataclass(frozen=True)
class Architecture:
    """One model family in one host: its classes, its blocks, what the host does with CFG rows, and how the host's
    calls of it are read. Written in the family's module of :mod:`lib_ctxrep.families`, which fills in ``family``
    and ``host``."""

    classes: tuple[str, ...]  # class names (matched anywhere in the model's MRO)
    dual: Blocks | None = None
    single: Blocks | None = None
    #: Row layout of a call that batches the CFG branches (diffusers pipelines), or None when each branch is its own
    #: call, the prompt first (Forge and Neo pass the layout on every call).
    cfg_rows: tuple[str, ...] | None = None
    padding: str = "none"  # which text tokens are padding, for the README and messages
    references: str = "none"  # where an edit model's reference-image tokens are
    #: The first image position id coordinate of the target's tokens (:func:`target_span`): 0 in Flux Kontext's and
    #: Flux.2's convention, 1 in LongCat-Image's (text 0, target 1, references 2).
    target_id: int = 0
    #: ComfyUI only: the patch point the blocks are reached through. "replace": ``patches_replace["dit"]
    #: [("double_block" | "single_block", i)]``, whose ``{"img", "txt"}`` output is read as the tuple (img, txt) and
    #: a single block's ``{"img"}`` as its one sequence; "post": the ``patches["double_block"]`` list run after each
    #: block with ``{"img", "txt", "block_index"}`` (Lumina / Z-Image, which has no replace point); "hooks": forward
    #: hooks on the blocks for the duration of each in-window call (a model with no block patch point).
    comfy_patch: str = "replace"
    #: Attributes that together identify a copy of this model under another class name (a fork's renamed class);
    #: tried only when no class name matches.
    duck: tuple[str, ...] = ()
    #: How the host's calls of this family are read (:mod:`lib_ctxrep.families.readers`): a ``DiffusersCall`` in
    #: diffusers, a ``KCall`` in the k-diffusion hosts (Forge main, Neo, ComfyUI); None: the host's default reader.
    reads: Any = None
    family: str = ""  # what users call it (the infotext, messages, the README); set from the family's module
    host: str = ""  # "diffusers", "forge" (Forge main and Forge Neo) or "comfyui"; set from the family's module


class HookedBlock(NamedTuple):
    """One block to hook: its name ("double.3", "single.0"), the module, its block list, and what it repels ("text"
    or "all")."""

    name: str
    module: Any
    where: Blocks
    mode: str


def select_blocks(arch: Architecture, model: Any, engine: Any) -> list[HookedBlock]:
    """The blocks of ``model`` to hook for ``engine``'s settings, and the engine's step strength shared out over them
    (``engine.repelled_blocks``): every front end takes its blocks from here, so none can forget to share it.

    The selected dual-stream blocks (``config.blocks``) repel their text stream; every single-stream block repels in
    ``config.single_blocks`` mode unless it is "off". A model with single-stream blocks only (Z-Image, Lumina 2) has
    no text stream apart from its caption slice: its blocks play the dual blocks' role, chosen by ``config.blocks``,
    and repel the caption only (``single_blocks`` has no effect there).
    """
    config = engine.config
    out: list[HookedBlock] = []
    if arch.dual is not None:
        blocks = getattr(model, arch.dual.attr)
        _check_range(engine, model, len(blocks), "dual-stream")
        selected = config.block_indices(len(blocks))
        if not arch.dual.last_has_text:
            selected = [i for i in selected if i != len(blocks) - 1]
        out += [HookedBlock(f"double.{i}", blocks[i], arch.dual, "text") for i in selected]
        if arch.single is not None and config.single_blocks != "off":
            singles = getattr(model, arch.single.attr)
            out += [HookedBlock(f"single.{i}", b, arch.single, config.single_blocks) for i, b in enumerate(singles)]
    elif arch.single is not None:
        blocks = getattr(model, arch.single.attr)
        _check_range(engine, model, len(blocks), "single-stream")
        out += [HookedBlock(f"single.{i}", blocks[i], arch.single, "text") for i in config.block_indices(len(blocks))]
    engine.repelled_blocks = max(1, len(out))
    return out


def _check_range(engine: Any, model: Any, count: int, kind: str) -> None:
    """Say once when a block range (``config.blocks = (start, stop)``) reaches past the model's ``count`` blocks."""
    blocks = engine.config.blocks
    if not isinstance(blocks, tuple) or blocks[1] <= count:
        return
    start, stop = blocks
    kept = "none of them is repelled" if start >= count else f"only blocks {start} to {count - 1} are repelled"
    engine.warn_once(
        f"range:{start}:{stop}:{count}",
        f"[ctxrep] blocks {start}:{stop} reach past {type(model).__name__}'s {count} {kind} blocks (0 to "
        f"{count - 1}): {kept}",
    )


@dataclass(frozen=True)
class CallTokens:
    """What one model call's token layout is, as the front end learns it from the call's inputs.

    text_len: tokens in the text stream (padding included); text_valid: per chunk of rows (one value for all
    chunks, or one per chunk), how many text tokens are real (the leading ones, or the last ones when
    ``left_padded``; the rest is padding, never repelled); image_len:
    image tokens in a single-stream sequence, padding and references included (None: the rest of the sequence);
    target: the target image's tokens among the image tokens (None: all of them).
    """

    text_len: int
    text_valid: tuple[int, ...] = ()
    image_len: int | None = None
    target: Span | None = None
    #: The text is left-padded: its real tokens are the last ``valid`` of it (Ideogram 4 packs [padding; text; image]).
    left_padded: bool = False

    def valid(self, chunk: int) -> int:
        if not self.text_valid:
            return self.text_len
        return min(self.text_valid[chunk] if len(self.text_valid) > 1 else self.text_valid[0], self.text_len)


def leading_valid(mask: torch.Tensor | None, length: int) -> int:
    """Leading text positions that every row of ``mask`` ([rows, >= length], nonzero = real token) marks real."""
    if mask is None:
        return length
    real = mask[:, :length] != 0
    if bool(real.all()):  # the common case: no padding at all
        return length
    return int(real.all(dim=0).to(torch.int8).cumprod(0).sum())


def target_span(ids: torch.Tensor | None, tokens: int, target_id: int = 0) -> Span:
    """The target's span among ``tokens`` image tokens from image position ids ([tokens, axes] or
    [rows, tokens, axes]) whose first coordinate is ``target_id`` for the target and another value for reference
    images (0 in Flux Kontext's and Flux.2's convention, 1 in LongCat-Image's: ``Architecture.target_id``). Without
    ids, or with only a ragged target, every token is the target's."""
    if not isinstance(ids, torch.Tensor) or ids.shape[-2] != tokens:
        return (0, tokens)
    ids = ids[0] if ids.ndim == 3 else ids
    target = (ids[:, 0] == target_id).nonzero().flatten()
    if target.numel() == 0:
        return (0, tokens)
    start, stop = int(target[0]), int(target[-1]) + 1
    return (start, stop) if stop - start == target.numel() else (0, tokens)


def _spans(where: Blocks, call: CallTokens, chunk: int, joint: bool, image_tokens: int, mode: str) -> tuple[Span, ...]:
    """The spans repelled for one chunk: the text span, plus the target's image span in "all" mode, in the
    coordinates of the text and image streams (``joint`` False) or of the one sequence (``joint`` True)."""
    valid = call.valid(chunk)
    lead = call.text_len - valid if call.left_padded else 0
    if not joint:
        text, image_offset = (lead, lead + valid), 0
    elif where.order == TEXT_FIRST:
        text, image_offset = (lead, lead + valid), call.text_len
    else:
        text, image_offset = (image_tokens + lead, image_tokens + lead + valid), 0
    if mode != "all":
        return (text,)
    start, stop = call.target if call.target is not None else (0, image_tokens)
    return text, (image_offset + start, image_offset + min(stop, image_tokens))


def _runs(spans: list[tuple[Span, ...]]) -> Iterable[tuple[int, int, tuple[Span, ...]]]:
    """Consecutive chunks that share their spans, as (first chunk, stop chunk, spans)."""
    first = 0
    for c in range(1, len(spans) + 1):
        if c == len(spans) or spans[c] != spans[first]:
            yield first, c, spans[first]
            first = c


def repel_block(
    engine: Any, name: str, where: Blocks, output: Any, call: CallTokens, mode: str = "text", inputs: Any = None
) -> Any:
    """Repel the contextual tokens of one block's ``output`` through ``engine`` (a RepulsionEngine inside an active
    call); returns the output to use instead, or None when nothing changes. ``mode``: "text" (the text tokens) or
    "all" (text and the target's image tokens; single-stream blocks only).

    ``inputs``: the block call's arguments (tensors, or tuples, lists and dicts of them), when the front end has
    them. The repelled tokens are then written into the output's own tensors unless one of them shares memory with
    an input (a block that returns its input, or updates it in place) or needs gradients; otherwise, and without
    ``inputs``, into one copy of each changed tensor. A group that covers a whole tensor replaces it (no copy)."""
    tensors = _streams(where, output, mode)
    if tensors is None:
        return None
    if where.seq_first:
        originals, tensors = tensors, [t.transpose(0, 1) for t in tensors]
    rows, chunks = tensors[0].shape[0], len(engine.chunks)
    if rows % chunks:
        return engine.process(name, [tensors[0]])  # the engine reports the layout mismatch (once) and skips
    joint = isinstance(output, torch.Tensor)
    length = tensors[0].shape[1]
    if not _layout_fits(engine, name, call, length, joint):
        return None
    image_tokens = tensors[1].shape[1] if len(tensors) > 1 else 0
    if joint:
        image_tokens = call.image_len if call.image_len is not None else length - call.text_len
    spans = [_spans(where, call, c, joint, image_tokens, mode) for c in range(chunks)]
    writable = inputs is not None and _writable(tensors, inputs)
    new_tensors = _repel_runs(engine, name, tensors, spans, joint, rows // chunks, writable)
    if new_tensors is None:
        return None
    if where.seq_first:  # back to [tokens, rows, width], in the layout the block gave it
        new_tensors = [_like(new.transpose(0, 1), old) for new, old in zip(new_tensors, originals, strict=True)]
    return _with_streams(output, where, new_tensors)


def _like(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` in ``old``'s memory layout (itself when it already is)."""
    if new.stride() == old.stride():
        return new
    return torch.empty_strided(old.shape, old.stride(), dtype=new.dtype, device=new.device).copy_(new)


def _streams(where: Blocks, output: Any, mode: str) -> list[torch.Tensor] | None:
    """The tensors of a block's ``output`` that hold contextual tokens: the one sequence, or the text stream (and
    the image stream in "all" mode) of a tuple; None when there is no text stream to repel."""
    if isinstance(output, tuple):
        text = output[where.text_at] if where.text_at < len(output) else None
        if not isinstance(text, torch.Tensor):
            return None
        image = output[where.image_at] if mode == "all" else None
        return [text] if image is None else [text, image]
    if isinstance(output, torch.Tensor):
        return [output]
    return None


def _layout_fits(engine: Any, name: str, call: CallTokens, length: int, joint: bool) -> bool:
    """Whether a block's ``length`` tokens (of its one sequence when ``joint``, else of its text stream) fit the
    call's token layout; when not, the block is left alone, said once."""
    expected = call.text_len + (call.image_len or 0) if joint else call.text_len
    if (joint and expected > length) or (not joint and length != expected):
        engine.warn_once(
            f"lengths:{name}",
            f"[ctxrep] block {name} output {length} {'tokens' if joint else 'text tokens'} where this call's layout "
            f"says {'at least ' if joint else ''}{expected} (text {call.text_len}"
            f"{f', image {call.image_len}' if call.image_len is not None else ''}); this block is left unmodified",
        )
        return False
    return True


def _repel_runs(
    engine: Any,
    name: str,
    tensors: list[torch.Tensor],
    spans: list[tuple[Span, ...]],
    joint: bool,
    per_chunk: int,
    writable: bool,
) -> list[torch.Tensor] | None:
    """Repel the spans of each run of chunks that share them (one engine call for all runs) and write the changed
    groups into ``tensors`` (``writable``) or into copies of them; None when the engine changed nothing."""
    chunks = len(spans)
    runs, places = [], []
    for first, stop, run in _runs(spans):
        pieces = [(0 if joint else k, a, b) for k, (a, b) in enumerate(run) if b > a]
        if not pieces:
            continue
        r0, r1 = first * per_chunk, stop * per_chunk
        whole = (first, stop) == (0, chunks)
        parts = [tensors[t][r0:r1, a:b] for t, a, b in pieces]
        runs.append(Run(parts, 1 if len(parts) > 1 else None, None if whole else (first, stop), writable))
        places.append((r0, pieces))
    changes = engine.process_runs(name, runs) if runs else []
    new_tensors = list(tensors)
    changed = False
    for (r0, pieces), groups in zip(places, changes, strict=True):
        for start, new in groups:
            rows = new[0].shape[0]
            for (t, a, b), part in zip(pieces, new, strict=True):
                target = tensors[t]
                if r0 + start == 0 and rows == target.shape[0] and (a, b) == (0, target.shape[1]):
                    # the group is the whole tensor: its new rows are the new tensor (or were written into it)
                    new_tensors[t] = target if _same_view(target, part) else part
                    continue
                place = new_tensors[t][r0 + start : r0 + start + rows, a:b]
                if _same_view(place, part):
                    continue  # the engine wrote the new rows in place
                if new_tensors[t] is target and not writable:
                    new_tensors[t] = target.clone()
                    place = new_tensors[t][r0 + start : r0 + start + rows, a:b]
                place.copy_(part)
            changed = True
    return new_tensors if changed else None


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same elements of the same memory."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _writable(tensors: list[torch.Tensor], inputs: Any) -> bool:
    """Whether the block's output ``tensors`` may be written in place: none needs gradients, none has overlapping
    elements (an expanded view), and none shares memory with a tensor among ``inputs``."""
    if any(t.requires_grad or not _non_overlapping(t) for t in tensors):
        return False
    taken = {t.untyped_storage().data_ptr() for t in _input_tensors(inputs)}
    return not any(t.untyped_storage().data_ptr() in taken for t in tensors)


def _input_tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _input_tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _input_tensors(item)


def _non_overlapping(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` has its own memory (no stride-0 or otherwise overlapping dimension)."""
    reach = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride(), strict=True) if s > 1):
        if stride < reach:
            return False
        reach = stride * size
    return True


def _with_streams(output: Any, where: Blocks, new_tensors: list[torch.Tensor]) -> Any:
    """A block's ``output`` with its repelled tensors (from :func:`_streams`) put back in their places."""
    if isinstance(output, torch.Tensor):
        return new_tensors[0]
    out = list(output)
    out[where.text_at] = new_tensors[0]
    if len(new_tensors) > 1:
        out[where.image_at] = new_tensors[1]
    return tuple(out)
