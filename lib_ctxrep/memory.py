"""Cross-batch memory: the contextual features earlier batches of one job had, bounded and compressed.

With batch size 1 intra-batch repulsion has nothing to push against. The memory keeps, per key (block, step, branch),
the post-repulsion rows of earlier batches so later batches are repelled from them too.

Storage per key: an anchor row (the first row stored, in the stream dtype) and, per remembered sample, the residual
(row - anchor) in int8 with one float32 scale per group of 64 values. Samples of one prompt differ from each other
by a small fraction of their norm, so the residual's int8 error is a small fraction of a small difference: about
1 byte per feature, and the kernel and push directions it gives match the full-precision ones closely.

Rows of the running batch are *staged* and only become visible after :meth:`commit` (the start of the next batch),
so a batch is never repelled from itself. The bound holds at all times: at most ``max_rows`` samples per key and
``max_bytes`` in all (oldest batches go first).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

#: Values sharing one float32 scale: small enough that a group's largest value does not swamp the rest, large enough
#: that the scales add only 1/16 byte per value.
_GROUP = 64
#: The int8 range used, symmetric so that a residual and its negation quantise alike.
_INT8_MAX = 127
#: The scale of an all-zero group (a tiny positive number: its values then quantise to 0 without a division by zero).
_MIN_SCALE = 1e-30
#: Bytes of one float32 scale.
_SCALE_BYTES = 4


def sample_bytes(features: int) -> int:
    """Bytes one remembered sample costs in one key holding rows of ``features`` values: the int8 residual, padded to
    whole groups of 64 values, and one float32 scale per group (about 1.06 bytes per value)."""
    groups = -(-int(features) // _GROUP)
    return groups * (_GROUP + _SCALE_BYTES)


def key_bytes(features: int, samples: int, stream_bytes: int) -> int:
    """Bytes one key holds with ``samples`` remembered samples of ``features`` values: the anchor row in the stream
    dtype (``stream_bytes`` per value) and each sample's :func:`sample_bytes`."""
    return int(features) * int(stream_bytes) + int(samples) * sample_bytes(features)


@dataclass
class _Entry:
    seq: int
    q: torch.Tensor  # int8 [P_padded]
    scale: torch.Tensor  # float32 [P_padded / GROUP]

    @property
    def nbytes(self) -> int:
        return self.q.numel() + _SCALE_BYTES * self.scale.numel()


@dataclass
class _Slot:
    anchor: torch.Tensor  # [P] stream dtype
    shapes: list[torch.Size]  # per part, the shape of one row
    entries: deque[_Entry] = field(default_factory=deque)

    @property
    def nbytes(self) -> int:
        return self.anchor.numel() * self.anchor.element_size() + sum(e.nbytes for e in self.entries)


def _quantize(residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = residual.reshape(-1).to(torch.float32)
    pad = (-flat.numel()) % _GROUP
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    groups = flat.view(-1, _GROUP)
    scale = (groups.abs().amax(dim=1) / _INT8_MAX).clamp_min(_MIN_SCALE)
    q = torch.round(groups / scale[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q.reshape(-1), scale


def _dequantize(entry: _Entry, numel: int) -> torch.Tensor:
    groups = entry.q.view(-1, _GROUP).to(torch.float32) * entry.scale[:, None]
    return groups.reshape(-1)[:numel]


class ContextMemory:
    """Bounded, compressed memory of earlier batches' contextual rows, for one job."""

    def __init__(self, max_rows: int = 16, max_bytes: int = 512 * 2**20) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._slots: dict[Hashable, _Slot] = {}
        self._staged: dict[Hashable, list[torch.Tensor]] = {}
        self._seq = 0

    def __len__(self) -> int:
        """Number of remembered samples in the largest slot."""
        return max((len(s.entries) for s in self._slots.values()), default=0)

    @property
    def nbytes(self) -> int:
        """Bytes held by committed rows (anchors included)."""
        return sum(slot.nbytes for slot in self._slots.values())

    def keys(self) -> list[Hashable]:
        """The keys that have remembered (committed) rows, in the order they were first committed."""
        return [key for key, slot in self._slots.items() if slot.entries]

    def rows(self, key: Hashable) -> list[torch.Tensor] | None:
        """Remembered rows for ``key``: one tensor [Mm, *row_shape] per part, in the stream dtype; None if empty."""
        slot = self._slots.get(key)
        if slot is None or not slot.entries:
            return None
        numel = slot.anchor.numel()
        anchor = slot.anchor.to(torch.float32)
        full = torch.stack([anchor + _dequantize(e, numel) for e in slot.entries]).to(slot.anchor.dtype)
        out, start = [], 0
        for shape in slot.shapes:
            size = shape.numel()
            out.append(full[:, start : start + size].reshape(len(slot.entries), *shape))
            start += size
        return out

    def stage(self, key: Hashable, parts: list[torch.Tensor]) -> None:
        """Offer the current batch's rows for ``key`` (each part [B, ...]); replaces what was staged for that key."""
        # A copy: some hosts (Forge Neo's blocks) update the stream in place after this point.
        self._staged[key] = [p.detach().clone() for p in parts]

    def unstage(self, key: Hashable) -> None:
        """Withdraw what the current batch staged for ``key`` (rows whose update turned out not finite)."""
        self._staged.pop(key, None)

    def commit(self) -> bool:
        """Make the staged rows visible (call when a new batch starts), then enforce the bounds.

        Returns False when the bounds left nothing of the batch just committed (``max_bytes`` cannot hold one
        batch's rows), True otherwise (also when nothing was staged)."""
        if not self._staged:
            return True
        self._seq += 1
        for key, parts in self._staged.items():
            rows = torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)
            shapes = [p.shape[1:] for p in parts]
            slot = self._slots.get(key)
            if slot is None or slot.shapes != shapes or slot.anchor.device != rows.device:
                slot = _Slot(anchor=rows[0].clone(), shapes=shapes)
                self._slots[key] = slot
            for row in rows:
                q, scale = _quantize(row.to(torch.float32) - slot.anchor.to(torch.float32))
                slot.entries.append(_Entry(self._seq, q, scale))
            while len(slot.entries) > self.max_rows:
                slot.entries.popleft()
        self._staged.clear()
        self._evict()
        return any(slot.entries and slot.entries[-1].seq == self._seq for slot in self._slots.values())

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes:
            oldest = min((s.entries[0].seq for s in self._slots.values() if s.entries), default=None)
            if oldest is None:
                break
            for key in list(self._slots):
                slot = self._slots[key]
                while slot.entries and slot.entries[0].seq == oldest:
                    slot.entries.popleft()
                if not slot.entries:
                    del self._slots[key]

    def clear(self) -> None:
        """Forget everything (a new job starts)."""
        self._slots.clear()
        self._staged.clear()
