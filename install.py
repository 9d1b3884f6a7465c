"""Forge runs this file when the extension is installed or updated.

Everything lib_ctxrep needs (torch, numpy, gradio) ships with Forge, so on a stock Forge this installs
nothing. It only reports, in the console, a missing or too old torch.
"""

import importlib.util

if importlib.util.find_spec("torch") is None:
    print("[Contextual Repulsion] torch is not installed in this webui's environment; the extension cannot run.")
