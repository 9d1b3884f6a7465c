"""Host-independent step of contextual repulsion.

Hosts (diffusers, Forge) turn their calls into the same few inputs:

- once per model call, :meth:`RepulsionEngine.begin_call` with the call's ``progress`` (see ``schedule``) and its
  row layout (a branch label per equal, contiguous chunk of rows);
- after each selected block, :meth:`RepulsionEngine.process` with the block's name and its contextual tokens
  (one or more parts, each [rows, ...], which together make one sample's feature vector), or
  :meth:`RepulsionEngine.process_runs` with several such runs of one block (e.g. chunks whose text lengths differ):
  all of a block's groups are solved with one device-to-host transfer.

``process`` returns the new parts, or None when nothing changes (outside the window, disabled, a B = 1 chunk without
memory): the host then leaves its output untouched, so an inactive hook costs a Python attribute check.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .config import RepulsionConfig, as_config
from .memory import ContextMemory
from .repulsion import Flow, FlowResult, repel_flows, to_host
from .schedule import is_active

logger = logging.getLogger("lib_ctxrep")

#: Decimals of a call's progress in a memory key, so that the same step of every batch finds the same key even where
#: the host's schedule arithmetic differs in the last bits.
_KEY_DECIMALS = 6
#: How far below the previous call's progress a call must be to start a new batch: calls of one step (CFG branches,
#: low-VRAM chunks) differ at most by rounding.
_BATCH_RESTART_TOLERANCE = 1e-9
#: The warning key of a batch of one without memory (said once per job).
_BATCH_OF_ONE = "batch-of-one"
#: Bytes per MiB (``memory_mb`` is in MiB).
_MIB = 2**20


@dataclass
class BlockStat:
    """What one repulsion did, for demos and benchmarks (recorded only when the engine is asked to). With text-only
    memory, a later batch's single-block stat describes the repulsion of the remembered (text) parts."""

    block: str
    progress: float
    branch: str
    rows: int
    memory_rows: int
    vendi_before: float
    vendi_after: float


class RepulsionEngine:
    """Applies contextual repulsion for one job; holds the window state, the cross-batch memory and warnings."""

    def __init__(self, config: RepulsionConfig | None = None, *, record_stats: bool = False) -> None:
        self.config = as_config(config, "RepulsionEngine")
        self.record_stats = record_stats
        #: How many blocks are repelled per model call; ``config.step_strength`` is shared out over them. Front ends
        #: set it to the number of blocks they hook.
        self.repelled_blocks = 1
        self.stats: list[BlockStat] = []
        self.memory = ContextMemory(self.config.memory_size, int(self.config.memory_mb * _MIB))
        self._active = False
        self._progress = 0.0
        self._chunks: tuple[str, ...] = ("cond",)
        self._last_progress: float | None = None
        self._warned: set[str] = set()
        #: Device flags of updates made by the device inner loop, read (in one transfer) once the window is over: the
        #: block, the flag, and the memory key of the rows staged with that update (None for a second flow).
        self._flags: list[tuple[str, torch.Tensor, tuple | None]] = []

    @property
    def active(self) -> bool:
        """Whether the current model call is inside the window (and the engine is enabled)."""
        return self._active

    @property
    def chunks(self) -> tuple[str, ...]:
        """The current call's row layout: a branch label per equal, contiguous chunk of rows."""
        return self._chunks

    def begin_call(self, progress: float, chunks: tuple[str, ...]) -> bool:
        """Start a model call at ``progress`` with rows laid out as ``chunks``; returns whether it is active.

        A call earlier in the trajectory than the previous one marks a new batch: the memory commits what the previous
        batch staged.
        """
        if self._last_progress is not None and progress < self._last_progress - _BATCH_RESTART_TOLERANCE:
            self._commit()
        self._last_progress = progress
        self._progress = progress
        self._chunks = self.config.chunks or chunks
        self._active = self.config.enabled and is_active(progress, self.config.window)
        if not self._active:
            self._read_flags()
        return self._active

    def end_call(self) -> None:
        """End the current model call (hooks go inert until the next ``begin_call``)."""
        self._active = False

    def new_batch(self) -> None:
        """Mark a batch boundary: rows staged by the finished batch become memory."""
        self._commit()
        self._last_progress = None

    def _read_flags(self) -> None:
        """Warn about the blocks whose update the device inner loop skipped as not finite, and withdraw their rows
        from the memory (as the host loop never stages them): one transfer for all of them (per device, for a model
        split over several), made outside the window, where the host waits for the device at most once per batch."""
        if not self._flags:
            return
        by_device: dict[torch.device, list[tuple[str, torch.Tensor, tuple | None]]] = {}
        for item in self._flags:
            by_device.setdefault(item[1].device, []).append(item)
        self._flags = []
        for flags in by_device.values():
            for (block, _, key), value in zip(flags, to_host([flag for _, flag, _ in flags]), strict=True):
                if not value.all():
                    self._warn_nonfinite(block)
                    if key is not None:
                        self.memory.unstage(key)

    def _commit(self) -> None:
        self._read_flags()
        if not self.memory.commit():
            self.warn_once(
                "memory-budget",
                f"[ctxrep] memory_mb={self.config.memory_mb:g} cannot hold one batch's rows, so the cross-batch "
                "memory stays empty; raise memory_mb (or turn memory_image off)",
            )

    def new_job(self) -> None:
        """Forget the memory and the window state (a new job starts)."""
        self._read_flags()
        self.memory.clear()
        self._warned.discard(_BATCH_OF_ONE)  # said once per job
        self._last_progress = None
        self._active = False

    def warn_once(self, key: str, message: str) -> None:
        """Log ``message`` once per engine for ``key``."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def process(
        self,
        block: str,
        parts: list[torch.Tensor],
        *,
        memory_parts: int | None = None,
        chunk_range: tuple[int, int] | None = None,
    ) -> list[torch.Tensor] | None:
        """Repel the rows of ``parts`` (each [rows, ...]) within their branch groups; None when nothing changes.

        ``memory_parts``: the cross-batch memory holds only the first that many parts (None: all). Used by Flux single
        blocks in "all tokens" mode, whose image tokens are too large to remember at real resolutions: a group then
        repels on all parts within the batch while there is no memory for it (the first batch); once there is, the
        remembered parts are repelled against the batch and the memory, and the other parts within the batch as
        without memory (at batch size 1 they stay as they are).
        With ``config.memory_image`` every part is remembered (``memory_parts`` is ignored).

        ``chunk_range``: ``parts`` hold only the rows of chunks ``[first, stop)`` of the call (for a call whose chunks
        have their tokens in different places, e.g. a negative prompt of another length batched with the prompt).
        """
        (changes,) = self.process_runs(block, [Run(parts, memory_parts, chunk_range)])
        return _put_back(parts, changes)

    def process_runs(self, block: str, runs: list[Run]) -> list[list[tuple[int, list[torch.Tensor]]]]:
        """Repel several runs of one block's rows at once (see :meth:`process` for each run's fields): every group of
        every run is solved with one device-to-host transfer in all. Returns per run the groups that changed, as
        (first row within the run, new parts); an empty list when nothing changes."""
        if not self._active:
            return [[] for _ in runs]
        cfg = self.config
        plans: list[_Plan] = []
        flows: list[Flow] = []
        for index, run in enumerate(runs):
            layout = self._groups(run.parts[0].shape[0], run.chunk_range)
            if layout is None:
                continue
            size, groups = layout
            kept = len(run.parts) if run.memory_parts is None or cfg.memory_image else run.memory_parts
            for group in groups:
                rows = [p[group.start : group.start + size] for p in run.parts]
                key = (block, round(self._progress, _KEY_DECIMALS), group.label, group.occurrence, group.index)
                remembered = self._remembered(block, key, rows[:kept])
                if size < 2 and remembered is None:
                    if cfg.memory:
                        self.memory.stage(key, rows[:kept])
                    else:
                        self.warn_once(
                            _BATCH_OF_ONE,
                            "[ctxrep] a batch of 1 without cross-batch memory: contextual repulsion has nothing to "
                            "push apart, so nothing changes (raise the batch size, or turn memory on for batch count)",
                        )
                    continue
                moving = rows if remembered is None else rows[:kept]
                within = len(moving) < len(rows) and size >= 2  # the parts the memory does not hold, in the batch
                plans.append(_Plan(index, group, key, rows, kept, remembered, len(flows), within))
                flows.append(Flow(moving, remembered, in_place=run.in_place))
                if within:  # the remembered parts come from the first flow
                    flows.append(Flow(rows, combine_from=kept, in_place=run.in_place))
        if not flows:
            return [[] for _ in runs]
        strength = None if cfg.eta is not None else cfg.block_strength(self.repelled_blocks)
        solved = repel_flows(flows, cfg.iterations, eta=cfg.eta, strength=strength, want_entropy=self.record_stats)
        changes: list[list[tuple[int, list[torch.Tensor]]]] = [[] for _ in runs]
        for plan in plans:
            new = self._finish_group(block, plan, solved)
            if new is not None:
                changes[plan.run].append((plan.group.start, new))
        return changes

    def _finish_group(
        self, block: str, plan: _Plan, solved: list[tuple[list[torch.Tensor], FlowResult]]
    ) -> list[torch.Tensor] | None:
        """One group's new rows from its solved flows (staged in the memory, recorded in the stats); None when its
        update is not finite (warned once; the group stays as it is)."""
        new, result = solved[plan.flow]
        self._keep_flag(block, result, plan.key)
        if not result.finite:
            self._warn_nonfinite(block)
            return None
        new = [*new, *plan.rows[len(new) :]]
        if plan.within:
            inner, inner_result = solved[plan.flow + 1]
            self._keep_flag(block, inner_result, None)
            if inner_result.finite:
                new = [*new[: plan.kept], *inner[plan.kept :]]
            else:
                self._warn_nonfinite(block)
        if self.config.memory:
            self.memory.stage(plan.key, new[: plan.kept])
        if self.record_stats:
            memory_rows = 0 if plan.remembered is None else plan.remembered[0].shape[0]
            self.stats.append(
                BlockStat(
                    block,
                    self._progress,
                    plan.group.label,
                    plan.rows[0].shape[0],
                    memory_rows,
                    math.exp(result.entropy_before),
                    math.exp(result.entropy_after),
                )
            )
        return new

    def _groups(self, rows: int, chunk_range: tuple[int, int] | None) -> tuple[int, list[_Group]] | None:
        """The repulsion groups of a call's ``rows`` rows (those of chunks ``chunk_range``): the group size and, for
        each group of a repelled branch, where it starts and what names its memory; None (warned once) when the rows
        do not split into the chunks."""
        cfg = self.config
        first, stop = chunk_range if chunk_range is not None else (0, len(self._chunks))
        chunks = self._chunks[first:stop]
        if rows % len(chunks):
            self.warn_once(
                "layout",
                f"[ctxrep] {rows} rows do not split into the {len(chunks)} chunks {chunks}; repulsion skipped",
            )
            return None
        per_chunk = rows // len(chunks)
        size = cfg.group_size or per_chunk
        if per_chunk % size:
            self.warn_once("group", f"[ctxrep] group_size {size} does not divide {per_chunk} rows; using {per_chunk}")
            size = per_chunk
        groups = []
        for ci, label in enumerate(chunks):
            if label not in cfg.branches:
                continue
            occurrence = self._chunks[: first + ci].count(label)  # the 2nd cond chunk of an AND prompt: own memory
            starts = range(ci * per_chunk, (ci + 1) * per_chunk, size)
            groups += [_Group(start, label, occurrence, gi) for gi, start in enumerate(starts)]
        return size, groups

    def _remembered(self, block: str, key: tuple, rows: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The memory's rows for ``key`` when they have the shapes of ``rows`` (the remembered parts); None when the
        memory is off or empty for it, or holds another shape (warned once: the memory starts again at this shape)."""
        remembered = self.memory.rows(key) if self.config.memory else None
        if remembered is not None and [r.shape[1:] for r in remembered] != [p.shape[1:] for p in rows]:
            # e.g. another resolution in the same job (memory_image): start a new memory for this key
            self.warn_once(
                "memory-shape",
                f"[ctxrep] the remembered rows of block {block} have another shape than this batch's; "
                "they are not used (the memory starts again at this shape)",
            )
            return None
        return remembered

    def _keep_flag(self, block: str, result: FlowResult, key: tuple | None) -> None:
        if result.flag is not None:
            self._flags.append((block, result.flag, key))

    def _warn_nonfinite(self, block: str) -> None:
        self.warn_once(
            f"nonfinite:{block}",
            f"[ctxrep] non-finite values in block {block}: its update was skipped (output unchanged)",
        )


class _Group(NamedTuple):
    """One repulsion group of a call: its first row, its branch, which chunk of that branch it is in (an AND prompt
    has several cond chunks, each with its own memory) and its index within the chunk."""

    start: int
    label: str
    occurrence: int
    index: int


class Run(NamedTuple):
    """One engine call's share of a block: parts of the same rows, and how to read them (see
    :meth:`RepulsionEngine.process`)."""

    parts: list[torch.Tensor]
    memory_parts: int | None = None
    chunk_range: tuple[int, int] | None = None
    #: The new rows may be written into ``parts`` (views of the block's output that nothing else reads).
    in_place: bool = False


class _Plan(NamedTuple):
    """A group's place in a block's batched solve: its run, group, memory key and rows, how many parts the memory
    keeps, the remembered rows, the index of its flow, and whether a second flow repels the other parts within the
    batch."""

    run: int
    group: _Group
    key: tuple
    rows: list[torch.Tensor]
    kept: int
    remembered: list[torch.Tensor] | None
    flow: int
    within: bool


def _put_back(parts: list[torch.Tensor], changes: list[tuple[int, list[torch.Tensor]]]) -> list[torch.Tensor] | None:
    """``parts`` with the changed groups (first row, new rows per part) put in their place; None when no group
    changed."""
    if not changes:
        return None
    rows = parts[0].shape[0]
    if len(changes) == 1 and changes[0][0] == 0 and changes[0][1][0].shape[0] == rows:
        return changes[0][1]
    out = [p.clone() for p in parts]
    for start, new in changes:
        for target, part in zip(out, new, strict=True):
            target[start : start + part.shape[0]] = part
    return out
