"""ComfyUI's entry point to this repository (``ComfyUI/custom_nodes/<this folder>``): the node mappings.

ComfyUI imports this folder as a package and reads ``NODE_CLASS_MAPPINGS``; nothing else does (Forge loads
``scripts/``, diffusers users and the tests import ``lib_ctxrep``). Importing it imports no ``comfy`` module.
"""

from .lib_ctxrep.integrations.comfyui_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
