"""What a family's call readers are made of: the generic readers each host uses unless a family says otherwise.

A reader turns one model call of a host into the facts the block map cannot know (:class:`CallTokens`: the text's
length, which of its tokens are real, the image tokens, the target's span). Two kinds of host call a model:

- diffusers calls a transformer's ``forward`` with named arguments: :class:`DiffusersCall` says which argument holds
  the time (and how it maps to sigma), the rows, the text mask, and which function reads the tokens;
- the k-diffusion hosts (Forge main, Forge Neo, ComfyUI) call ``apply_model(x, sigma, c_crossattn=..., **conds)``
  through a model-function wrapper: a :data:`KReader` reads the tokens from the wrapper's ``args`` and the model.

A reader that cannot read a call raises :class:`CallNotReadable` with the reason; the front end then runs that call
unmodified and says so once, naming the class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..blockmap import CallTokens, leading_valid, target_span

if TYPE_CHECKING:
    from ..blockmap import Architecture

#: Model time per unit of sigma in families trained on 1000 discrete timesteps (SD3, HiDream, ...): t = 1000 sigma.
TIMESTEPS_PER_SIGMA = 1000.0
#: Flux.1's patch size, for a k-diffusion model that does not say (Forge's IntegratedFluxTransformer2DModel patchifies
#: 2 x 2).
FLUX_PATCH = 2


class CallNotReadable(Exception):
    """A call whose token layout cannot be read; the message says why. The front end runs the call unmodified."""


def per_mille(t: float) -> float:
    """Sigma of a model time on the 0..1000 scale."""
    return t / TIMESTEPS_PER_SIGMA


def one_minus(t: float) -> float:
    """Sigma of a model time that runs from 0 (noise) to 1 (data)."""
    return 1.0 - t


def never(*_: Any) -> bool:
    return False


class Args:
    """Reads one ``forward`` call's arguments by name, whether passed by keyword or by position."""

    def __init__(self, forward: Callable) -> None:
        try:
            self._names = list(inspect.signature(forward).parameters)
        except (TypeError, ValueError):
            self._names = []
        self.args: tuple = ()
        self.kwargs: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        index = self._names.index(name) if name in self._names else -1
        return self.args[index] if 0 <= index < len(self.args) else None


def per_chunk(values: torch.Tensor, chunks: int, reduce: Callable[[torch.Tensor], int]) -> tuple[int, ...]:
    """``reduce`` of each chunk's rows of ``values`` ([rows, ...])."""
    size = values.shape[0] // chunks
    return tuple(reduce(values[c * size : (c + 1) * size]) for c in range(chunks))


def padded(tokens: int, multiple: int) -> int:
    """``tokens`` rounded up to a multiple of ``multiple``."""
    return tokens + (-tokens) % multiple


def text_stream_tokens(
    arch: Architecture, call: Args, chunks: int, model: Any, mask: torch.Tensor | None = None, tail: int = 0
) -> CallTokens | None:
    """The usual diffusers call: the text in ``encoder_hidden_states`` ([rows, text, width]), its padding marked by
    the mask argument (nonzero = real; ``mask`` overrides it, e.g. a mask read off zero rows), the last ``tail`` text
    tokens never repelled, and the target's image tokens from ``img_ids`` when the family has single-stream blocks."""
    text = call.get("encoder_hidden_states")
    if not isinstance(text, torch.Tensor):
        return None
    text_len = text.shape[1]
    if mask is None:
        mask = call.get(diffusers_reads(arch).mask_arg)
    valid: tuple[int, ...] = ()
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        valid = per_chunk(mask, chunks, lambda rows: leading_valid(rows, text_len))
    if tail:
        valid = tuple(min(v, text_len - tail) for v in valid or (text_len,))
    image = call.get("hidden_states")
    target = None
    if isinstance(image, torch.Tensor) and image.ndim == 3 and arch.single is not None:
        target = target_span(call.get("img_ids"), image.shape[1], arch.target_id)
    return CallTokens(text_len, valid, target=target)


def zero_padded_tokens(arch: Architecture, call: Args, chunks: int, model: Any) -> CallTokens | None:
    """A pipeline that pads the text with zero rows and passes no mask: the zero rows are the padding."""
    text = call.get("encoder_hidden_states")
    if not isinstance(text, torch.Tensor):
        return None
    return text_stream_tokens(arch, call, chunks, model, mask=(text != 0).any(-1))


@dataclass(frozen=True)
class DiffusersCall:
    """How diffusers calls a family's transformer: which ``forward`` argument holds what.

    ``tokens(arch, call, chunks, model)`` reads the token layout (None when the call holds no text it can read);
    ``cfg_off(call, pipeline, time)`` says that a call of a pipeline with CFG on holds the prompt's rows alone (SD3's
    skip-layer guidance, Z-Image past its CFG truncation)."""

    time_arg: str = "timestep"
    sigma_of_time: Callable[[float], float] = float
    #: The model time is not a sigma of the scheduler's (CogView4 passes unshifted timesteps while its scheduler
    #: steps shifted sigmas; CogView3-Plus is a DDPM): the step is found in ``scheduler.timesteps``.
    step_by_timesteps: bool = False
    rows_arg: str = "hidden_states"
    mask_arg: str = "encoder_hidden_states_mask"
    tokens: Callable[..., CallTokens | None] = text_stream_tokens
    cfg_off: Callable[[Args, Any, float], bool] = never


def diffusers_reads(arch: Architecture) -> DiffusersCall:
    """How diffusers calls ``arch``'s transformer (the usual call unless the family says otherwise)."""
    return arch.reads if arch.reads is not None else _USUAL_CALL


_USUAL_CALL = DiffusersCall()

#: A k-diffusion host's reader: ``(arch, diffusion_model, args) -> CallTokens``, ``args`` being the model-function
#: wrapper's ``{"input", "timestep", "c", "cond_or_uncond"}``.
KReader = Callable[["Architecture", Any, dict], CallTokens]


def crossattn_tokens(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    """The usual k-diffusion call: the text length from ``c_crossattn``; the target's image tokens from the latent
    (``patch_size`` of the model, Flux.1's 2 x 2 when it does not say); reference tokens (Kontext) follow them and
    are not repelled."""
    text = args["c"].get("c_crossattn")
    text_len = text.shape[1] if isinstance(text, torch.Tensor) else 0
    latent = args["input"]
    target = None
    if latent.ndim == 4:
        patch = int(getattr(diffusion_model, "patch_size", FLUX_PATCH) or FLUX_PATCH)
        target = (0, ((latent.shape[-2] + patch - 1) // patch) * ((latent.shape[-1] + patch - 1) // patch))
    return CallTokens(text_len, target=target)


def read_k_call(arch: Architecture, diffusion_model: Any, args: dict) -> CallTokens:
    """The token layout of one k-diffusion call, through the family's reader (the usual one by default)."""
    reader: KReader = arch.reads if arch.reads is not None else crossattn_tokens
    return reader(arch, diffusion_model, args)
