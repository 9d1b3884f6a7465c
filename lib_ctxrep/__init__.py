"""lib_ctxrep: batch diversity for diffusion transformers by contextual repulsion (arXiv 2603.28762).

Pure torch: nothing here imports a host (diffusers, Forge, gradio). Host front ends live in
``lib_ctxrep.integrations`` and are imported on demand, e.g.
``from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import RepulsionConfig
from .engine import RepulsionEngine
from .memory import ContextMemory
from .repulsion import eta_for_strength, repel, repel_angular
from .vendi import log_vendi_score, vendi_score

if TYPE_CHECKING:
    from .integrations.diffusers import ContextualRepulsionHandle

__all__ = [
    "ContextMemory",
    "RepulsionConfig",
    "RepulsionEngine",
    "apply_contextual_repulsion",
    "eta_for_strength",
    "log_vendi_score",
    "repel",
    "repel_angular",
    "vendi_score",
]
__version__ = "0.2.0"


def apply_contextual_repulsion(*args: Any, **kwargs: Any) -> ContextualRepulsionHandle:
    """Lazy alias of :func:`lib_ctxrep.integrations.diffusers.apply_contextual_repulsion`."""
    from .integrations.diffusers import apply_contextual_repulsion as apply

    return apply(*args, **kwargs)
