"""Record every time a host reaches the library's repulsion code, through its public entry points.

Every hook the front ends install goes through :class:`lib_ctxrep.engine.RepulsionEngine` (the diffusers pre-hook
starts or ends a call; every block hook reads ``engine.active`` first) and hands a block's output to
:func:`lib_ctxrep.blockmap.repel_block`. So "a forward reaches no library code" (nothing left attached, nothing run) is
"this records nothing", whatever torch keeps internally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from lib_ctxrep import blockmap
from lib_ctxrep.engine import RepulsionEngine


@contextlib.contextmanager
def library_calls() -> Iterator[list[str]]:
    """Inside the block, the names of the library entry points reached, in order ("begin_call", "end_call",
    "active", "repel_block")."""
    calls: list[str] = []
    active = RepulsionEngine.active
    begin_call, end_call, repel_block = RepulsionEngine.begin_call, RepulsionEngine.end_call, blockmap.repel_block

    def recording(name, function):
        def record(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)

        return record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RepulsionEngine, "active", property(recording("active", active.fget)))
        patch.setattr(RepulsionEngine, "begin_call", recording("begin_call", begin_call))
        patch.setattr(RepulsionEngine, "end_call", recording("end_call", end_call))
        patch.setattr(blockmap, "repel_block", recording("repel_block", repel_block))
        yield calls
