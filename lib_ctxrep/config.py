"""Configuration of contextual repulsion: a dataclass, validated on construction with messages naming the field."""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Default push per denoising step, summed over the repelled blocks: 0.05 per block on Flux-dev's 57 blocks, and about
#: reference model v1's best per-block strength on its 4 (docs/benchmark.md, "Default strength and window (v1)").
DEFAULT_STEP_STRENGTH = 2.85
#: The per-block strength that DEFAULT_STEP_STRENGTH gives on Flux-dev (19 + 38 repelled blocks), for comparing a
#: per-block ``strength`` setting with the default.
DEFAULT_STRENGTH = 0.05
#: Default window: the first 5 % of the sampling trajectory = the paper's tau = 1 step at 20 steps.
DEFAULT_WINDOW = 0.05
#: Upper bounds of the validated fields: far above any useful setting (the paper's M is 50), low enough that a typo
#: (a step count or a byte count typed into the wrong field) is refused instead of stalling or exhausting memory.
MAX_ITERATIONS = 10_000
MAX_MEMORY_SIZE = 1024
MAX_MEMORY_MB = 65536

BLOCK_PRESETS = ("all", "first", "middle", "last")
SINGLE_BLOCK_MODES = ("off", "text", "all")
BRANCHES = ("cond", "uncond")


def _fail(name: str, accepted: str, value: Any) -> ValueError:
    return ValueError(f"RepulsionConfig.{name} must be {accepted}, got {value!r}")


def unknown_fields(cls: type, names: Any) -> str:
    """A message naming each of ``names`` that is not a field of the dataclass ``cls``, with the closest field; ""
    when all are fields."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(str(name) for name in names if name not in known)
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, 1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return f"{cls.__name__}: unknown field(s) {', '.join(hints)}; its fields are {known}" if unknown else ""


def named_fields(cls: type) -> type:
    """Make the dataclass ``cls`` refuse a mistyped keyword with the closest field's name (a TypeError, as Python's
    own, but saying which field was meant)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        message = unknown_fields(cls, kwargs)
        if message:
            raise TypeError(message)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@named_fields
@dataclass
class RepulsionConfig:
    """Settings of contextual repulsion (arXiv 2603.28762) for one job.

    Args:
        enabled: master switch; when False the hooks do nothing and outputs are bit-identical to no hooks.
        step_strength: the push per denoising step, summed over the repelled blocks (>= 0): each repelled block
            gets ``step_strength / number of repelled blocks`` as its strength, so the same value means the same
            total push on every architecture (12 blocks on the reference model, 30 on Z-Image, 57 on Flux-dev, 60 on
            Qwen-Image) and every block selection. Ignored when ``strength`` or ``eta`` is set.
        strength: the per-block scale-free (angular) strength gamma >= 0, for experts and per-block settings: each
            inner step uses eta_i = gamma * ||c_i||^2, the same rotation of the contextual vectors on every model,
            resolution and prompt length, in each repelled block. None = derived from ``step_strength``. Ignored
            when ``eta`` is set.
        eta: the paper's raw eta (> 0), e.g. 5e6 .. 8e9 for Flux-dev, 5e2 .. 5e6 for SD3.5-Large. None = use strength.
        iterations: M, inner (Euler) gradient steps per block (>= 1). Costs only B x B host work, never [B, N, D]
            work. 8 follows the continuous flow closely at the default strength (the paper used 50).
        window: fraction of the sampling trajectory, from pure noise, during which repulsion acts, in (0, 1].
            A step at position i of N is inside when i / N < window: 0.05 is tau = 1 step at 20 steps, 3 at 50,
            and always at least the first step.
        blocks: dual-stream blocks to act after: "all", a third ("first", "middle", "last", also as the Forge
            accordion names them: "middle third", ...), or a range "start:stop" / (start, stop) of block indices
            (stop exclusive; a list is refused, as it reads like a list of blocks).
        single_blocks: Flux single-stream blocks: "off", "text" (their text tokens only) or "all" (all tokens,
            text and image: the paper's choice for Flux).
        branches: which CFG branches are repelled ("cond", "uncond"). Each branch is only ever repelled within
            itself.
        chunks: explicit row layout of one model call: a label per equal, contiguous chunk of rows, e.g.
            ("uncond", "cond") for a [negative; positive] batch. None = taken from the host (pipeline or Forge).
        group_size: rows per repulsion group inside a chunk (e.g. images per prompt when one call holds several
            prompts). None = the whole chunk is one group.
        memory: cross-batch memory: also repel from the contextual features that earlier batches of the same job
            had at the same block and step, so batch size 1 gains diversity over a batch count.
        memory_image: Flux single blocks in "all" mode: also remember their image tokens, so that every batch is
            repelled on all tokens, against its own rows and the memory alike. Off, they remember their text tokens
            only: later batches repel those against the memory and their image tokens within the batch alone (at
            batch size 1, not at all). Needs ``memory``. Costs (image tokens x width) bytes per single block, step in
            the window and remembered sample, plus one anchor row per key in the stream dtype: at Flux 1024 x 1024
            about 485 MiB per sample and step over the 38 single blocks, and 912 MiB of bf16 anchors per step, so
            raise ``memory_mb`` with it.
        memory_size: at most this many remembered samples per (block, step, branch).
        memory_mb: upper bound of the memory's size in MiB (it stores int8 residuals, about 1 byte per feature).
    """

    enabled: bool = True
    strength: float | None = None
    eta: float | None = None
    iterations: int = 8
    window: float = DEFAULT_WINDOW
    blocks: str | tuple[int, int] = "all"
    single_blocks: str = "all"
    branches: tuple[str, ...] = BRANCHES
    chunks: tuple[str, ...] | None = None
    group_size: int | None = None
    memory: bool = False
    memory_image: bool = False
    memory_size: int = 16
    memory_mb: float = 512.0
    step_strength: float = DEFAULT_STEP_STRENGTH

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise _fail("enabled", "True or False", self.enabled)
        if self.strength is not None and (
            not _is_real(self.strength) or not math.isfinite(self.strength) or self.strength < 0
        ):
            raise _fail("strength", "None or a finite number >= 0", self.strength)
        if not _is_real(self.step_strength) or not math.isfinite(self.step_strength) or self.step_strength < 0:
            raise _fail("step_strength", "a finite number >= 0", self.step_strength)
        if self.eta is not None and (not _is_real(self.eta) or not math.isfinite(self.eta) or self.eta <= 0):
            raise _fail("eta", "None or a finite number > 0", self.eta)
        if (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or not 1 <= self.iterations <= MAX_ITERATIONS
        ):
            raise _fail("iterations", f"an integer in [1, {MAX_ITERATIONS}]", self.iterations)
        if not _is_real(self.window) or not 0 < self.window <= 1:
            raise _fail("window", "a number in (0, 1]", self.window)
        self.blocks = _parse_blocks(self.blocks)
        if self.single_blocks not in SINGLE_BLOCK_MODES:
            raise _fail("single_blocks", f"one of {SINGLE_BLOCK_MODES}", self.single_blocks)
        branches = tuple(self.branches) if isinstance(self.branches, (list, tuple)) else self.branches
        if not isinstance(branches, tuple) or any(b not in BRANCHES for b in branches):
            raise _fail("branches", f"a tuple of labels from {BRANCHES}", self.branches)
        self.branches = branches
        if self.chunks is not None:
            chunks = tuple(self.chunks) if isinstance(self.chunks, (list, tuple)) else self.chunks
            if not isinstance(chunks, tuple) or not chunks or any(c not in BRANCHES for c in chunks):
                raise _fail("chunks", f"None or a non-empty tuple of labels from {BRANCHES}", self.chunks)
            self.chunks = chunks
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise _fail("group_size", "None or an integer >= 1", self.group_size)
        if not isinstance(self.memory, bool):
            raise _fail("memory", "True or False", self.memory)
        if not isinstance(self.memory_image, bool):
            raise _fail("memory_image", "True or False", self.memory_image)
        if self.memory_image and not self.memory:
            raise _fail("memory_image", "False unless memory=True (it says what the memory keeps)", self.memory_image)
        if (
            isinstance(self.memory_size, bool)
            or not isinstance(self.memory_size, int)
            or not 1 <= self.memory_size <= MAX_MEMORY_SIZE
        ):
            raise _fail("memory_size", f"an integer in [1, {MAX_MEMORY_SIZE}]", self.memory_size)
        if not _is_real(self.memory_mb) or not 1 <= self.memory_mb <= MAX_MEMORY_MB:
            raise _fail("memory_mb", f"a number of MiB in [1, {MAX_MEMORY_MB}]", self.memory_mb)

    def block_indices(self, num_blocks: int) -> list[int]:
        """Indices of the dual-stream blocks (out of ``num_blocks``) that repulsion acts after."""
        if isinstance(self.blocks, tuple):
            start, stop = self.blocks
            return list(range(max(0, start), min(num_blocks, stop)))
        first, second = round(num_blocks / 3), round(2 * num_blocks / 3)
        spans = {"all": (0, num_blocks), "first": (0, first), "middle": (first, second), "last": (second, num_blocks)}
        start, stop = spans[self.blocks]
        return list(range(start, stop))

    def block_strength(self, repelled_blocks: int) -> float:
        """The per-block strength gamma when ``repelled_blocks`` blocks are repelled per step: ``strength`` if set,
        else ``step_strength`` shared out over the blocks."""
        if self.strength is not None:
            return self.strength
        return self.step_strength / max(1, repelled_blocks)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable), the inverse of :meth:`from_dict`."""
        data = asdict(self)
        for key in ("blocks", "branches", "chunks"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepulsionConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ValueError naming them."""
        message = unknown_fields(cls, data)
        if message:
            raise ValueError(message)
        data = dict(data)
        for key in ("blocks", "branches", "chunks"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)


def as_config(config: Any, who: str) -> RepulsionConfig:
    """``config`` if it is a RepulsionConfig (None: the defaults); otherwise a TypeError naming what was passed to
    ``who`` and how to build one."""
    if config is None:
        return RepulsionConfig()
    if isinstance(config, RepulsionConfig):
        return config
    if config is RepulsionConfig:
        raise TypeError(f"{who}: got the class RepulsionConfig itself; pass an instance: RepulsionConfig(...)")
    if isinstance(config, dict):
        raise TypeError(
            f"{who}: config must be a RepulsionConfig, got a dict; build one with RepulsionConfig(**settings) or "
            "RepulsionConfig.from_dict(settings)"
        )
    raise TypeError(f"{who}: config must be a RepulsionConfig, got {type(config).__name__}; use RepulsionConfig(...)")


#: The Forge accordion's names of the block presets (also accepted here).
_PRESET_LABELS = {"first third": "first", "middle third": "middle", "last third": "last"}


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_blocks(value: Any) -> str | tuple[int, int]:
    if isinstance(value, str) and value.strip() in _PRESET_LABELS:
        return _PRESET_LABELS[value.strip()]
    if isinstance(value, str) and value in BLOCK_PRESETS:
        return value
    if isinstance(value, list):
        raise _fail(
            "blocks",
            "a preset, 'start:stop' or a (start, stop) tuple (stop exclusive); a list is not read as a range: for "
            "blocks 0 to 2 write (0, 3) or '0:3'",
            value,
        )
    if isinstance(value, str) and ":" in value:
        left, _, right = value.partition(":")
        try:
            value = (int(left), int(right))
        except ValueError:
            raise _fail("blocks", f"one of {BLOCK_PRESETS} or a range 'start:stop'", value) from None
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    ):
        return (int(value[0]), int(value[1]))
    raise _fail("blocks", f"one of {BLOCK_PRESETS} or a range 'start:stop' with 0 <= start < stop", value)
