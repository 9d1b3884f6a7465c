"""Forge runs this file when the extension is installed or updated (ComfyUI-Manager runs it too, for the nodes).

Everything lib_ctxrep needs (torch, numpy; gradio for Forge's UI) ships with Forge and with ComfyUI, so this installs
nothing. It only reports, in the console, a missing torch.
"""

import importlib.util

if importlib.util.find_spec("torch") is None:
    print("[Contextual Repulsion] torch is not installed in this webui's environment; the extension cannot run.")
