"""ComfyUI's entry point to this repository (``ComfyUI/custom_nodes/<this folder>``): the node mappings.

ComfyUI imports this folder as a package and reads ``NODE_CLASS_MAPPINGS``; nothing else needs it (Forge loads
``scripts/``, diffusers users and the tests import ``lib_ctxrep``). The mappings are looked up lazily, so importing the
package (pytest may, as the folder holds this file) loads nothing; reading them imports no ``comfy`` module.
"""

from typing import Any

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from .lib_ctxrep.integrations import comfyui_nodes

        return getattr(comfyui_nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
