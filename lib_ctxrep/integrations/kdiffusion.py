"""What the hosts that call their models the k-diffusion way share: Forge main, Forge Neo and ComfyUI.

Nothing here imports a host. All three call a diffusion model through a *model-function wrapper*
(``wrapper(apply_model, {"input", "timestep", "c", "cond_or_uncond"})``: ``timestep`` is sigma, the rows are
``len(cond_or_uncond)`` whole chunks of B rows, 0 = cond and 1 = uncond, chunks may come in separate calls under low
memory), tabulate a flow model's sigmas in its predictor / ``model_sampling``, and run post-CFG functions
(``fn(args) -> denoised``). Mirrors Forge main ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch``
and ``backend/patcher/base.py`` (``model_function_wrapper``, ``set_model_sampler_post_cfg_function``), Neo's ports
of them, and ComfyUI ``comfy/samplers.py`` ``calc_cond_batch`` / ``comfy/model_patcher.py``.

- :class:`PredictorWindow`: a call's progress from its sigma, through the predictor's own table;
- :class:`KRepulsion`: the engine of one job, the chained model-function wrapper that brackets each in-window call,
  the call's token layout (through the family's reader), and forward hooks on the blocks for the duration of a call
  (the host's front end decides whether it hooks or patches the blocks);
- :class:`PostCfgSpell`: SPELL's post-CFG step and the bookkeeping of each sampling's last prediction.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import torch

from .. import blockmap
from ..blockmap import Architecture, Blocks, CallTokens
from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..families.readers import CallNotReadable, read_k_call
from ..schedule import progress_from_sigma
from ..spell import ReferenceSet, SpellConfig, SpellEngine, SpellStats

_LABELS = {0: "cond", 1: "uncond"}
#: Relative tolerance when a call's sigma is placed in the predictor's table: the sampler's sigmas come from that
#: table through float32 tensors, so they match an entry only up to rounding.
_SIGMA_TOLERANCE = 1e-6


class PredictorWindow:
    """Progress of a call from its sigma, through the predictor's own sigma table.

    The hosts' flow predictors tabulate sigma over evenly spaced model time (with the model's shift applied), and
    their schedulers pick steps from that table; so the table position of a sigma is the fraction of the trajectory,
    and ``window`` = 0.05 is the first step of 20 with the "simple" schedule, as in the diffusers front end.
    Predictors without a table fall back to ``1 - sigma`` (= Forge's ``percent_to_sigma`` inverse for flow models).
    """

    def __init__(self, predictor: Any) -> None:
        table = getattr(predictor, "sigmas", None)
        self._table: list[float] | None = None
        if isinstance(table, torch.Tensor) and table.numel() > 1:
            values = [float(v) for v in table.detach().float().cpu().flatten()]
            if all(a <= b for a, b in zip(values, values[1:], strict=False)):
                self._table = values
        self._cache: dict[float, float] = {}

    def progress(self, sigma: float) -> float:
        """Fraction of the trajectory (0 = pure noise) at which a call at ``sigma`` is."""
        cached = self._cache.get(sigma)
        if cached is not None:
            return cached
        if self._table is None:
            value = progress_from_sigma(sigma)
        else:
            table = self._table
            index = bisect.bisect_left(table, sigma - _SIGMA_TOLERANCE * max(1.0, abs(sigma)))
            value = 1.0 - min(index + 1, len(table)) / len(table)
        self._cache[sigma] = value = max(0.0, min(1.0, value))
        return value


def model_call_wrapper(
    engine: RepulsionEngine,
    window: PredictorWindow,
    previous: Callable | None,
    enter: Callable[[dict], None],
    leave: Callable[[], None],
) -> Callable:
    """A ``model_function_wrapper`` that brackets each in-window model call with ``engine.begin_call`` /
    ``end_call``, calling ``enter(args)`` before the model (the call's tokens, hooks) and ``leave()`` after it, even
    when the model raises. Chains ``previous`` (the wrapper another extension installed), never drops it."""

    def ctxrep_model_function_wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        def call() -> torch.Tensor:
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

        if not engine.config.enabled:
            return call()
        sigma = float(args["timestep"].reshape(-1)[0])
        chunks = tuple(_LABELS.get(int(c), "cond") for c in args["cond_or_uncond"])
        if not engine.begin_call(window.progress(sigma), chunks):
            return call()
        try:
            enter(args)
            return call()
        finally:
            leave()
            engine.end_call()

    return ctxrep_model_function_wrapper


class KRepulsion:
    """Contextual repulsion for one job of a k-diffusion host: the engine (with its cross-batch memory), the call's
    token layout, and the blocks' forward hooks while a call is in the window. A host's front end subclasses it and
    installs :meth:`wrapper` on its patcher."""

    def __init__(self, config: RepulsionConfig, *, record_stats: bool = False) -> None:
        self.engine = RepulsionEngine(config, record_stats=record_stats)
        self.architecture: Architecture | None = None
        self.tokens: CallTokens | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def config(self) -> RepulsionConfig:
        """The job's settings."""
        return self.engine.config

    @property
    def attached_hooks(self) -> int:
        """Number of block hooks currently attached (non-zero only during an in-window model call)."""
        return len(self._hooks)

    def wrapper(self, diffusion_model: Any, predictor: Any, previous: Callable | None, hooks: bool) -> Callable:
        """The model-function wrapper for ``diffusion_model``: each in-window call reads its tokens and, with
        ``hooks``, hooks the selected blocks for the duration of the call (removed even when the model raises)."""

        def enter(args: dict) -> None:
            self.tokens = self.read_tokens(diffusion_model, args)
            if hooks:
                self._attach(diffusion_model)

        return model_call_wrapper(self.engine, PredictorWindow(predictor), previous, enter, self._detach)

    def read_tokens(self, diffusion_model: Any, args: dict) -> CallTokens | None:
        """The call's token layout through the family's reader; None (the call runs unmodified, said once, naming
        the class) when it cannot be read."""
        try:
            return read_k_call(self.architecture, diffusion_model, args)
        except CallNotReadable as error:
            reason = str(error)
        except Exception as error:  # a call of an unexpected form: the generation must go on
            reason = f"{type(error).__name__}: {error}"
        self.engine.warn_once(
            "layout",
            f"[ctxrep] Contextual Repulsion: {type(diffusion_model).__name__}: this call's token layout could not be "
            f"read ({reason}); such calls run unrepelled",
        )
        return None

    @property
    def in_call(self) -> bool:
        """Whether a model call inside the window, with a readable token layout, is under way: the only time a block
        is repelled (one attribute check per block otherwise)."""
        return self.engine.active and self.tokens is not None

    def repel(self, name: str, where: Blocks, output: Any, mode: str, inputs: Any = None) -> Any:
        """A block's output repelled inside the window (None: unchanged)."""
        if not self.in_call:
            return None
        return blockmap.repel_block(self.engine, name, where, output, self.tokens, mode, inputs=inputs)

    def _attach(self, diffusion_model: torch.nn.Module) -> None:
        self._detach()
        for name, block, where, mode in blockmap.select_blocks(self.architecture, diffusion_model, self.engine):
            self._hooks.append(block.register_forward_hook(self._hook(name, where, mode), with_kwargs=True))

    def _hook(self, name: str, where: Blocks, mode: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            return self.repel(name, where, output, mode, inputs=(args, kwargs))

        return hook

    def _detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def close(self) -> None:
        """End the job: remove any hook (normally none is left) and clear the memory."""
        self._detach()
        self.engine.new_job()


class PostCfgSpell:
    """SPELL for one job of a k-diffusion host, on any model: a post-CFG function replaces the denoised prediction
    by ``denoised + delta``, and the host's samplers step towards it, so the final latents land outside the shields.
    Keeps each sampling's last corrected prediction (detached) for the host to hand to :meth:`end_batch`."""

    def __init__(self, config: SpellConfig, protected: ReferenceSet | None = None) -> None:
        self.engine = SpellEngine(config, protected)
        self.last_x0: torch.Tensor | None = None

    def post_cfg(self) -> Callable[[dict], torch.Tensor]:
        """The post-CFG function (``fn(args) -> denoised``)."""
        engine = self.engine

        def ctxrep_spell_post_cfg(args: dict) -> torch.Tensor:
            corrected = engine.correct(args["denoised"])
            self.last_x0 = corrected.detach()
            return corrected

        return ctxrep_spell_post_cfg

    def take_last(self) -> torch.Tensor | None:
        """The last corrected prediction of the sampling that just ended (None if none), forgotten here."""
        last, self.last_x0 = self.last_x0, None
        return last

    def end_batch(self, samples: torch.Tensor) -> SpellStats:
        """Remember a finished batch's final latents for the next batches of the job; the batch's sparsity."""
        return self.engine.end_batch(samples)

    def close(self) -> None:
        """End the job: forget the cross-batch memory."""
        self.last_x0 = None
        self.engine.new_job()
