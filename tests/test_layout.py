"""The layers stay apart: the runtime and the front ends never import the evaluation code."""

from __future__ import annotations

import subprocess
import sys

RUNTIME_AND_FRONT_ENDS = [
    "lib_ctxrep",
    "lib_ctxrep.blockmap",
    "lib_ctxrep.config",
    "lib_ctxrep.engine",
    "lib_ctxrep.memory",
    "lib_ctxrep.protected",
    "lib_ctxrep.repulsion",
    "lib_ctxrep.schedule",
    "lib_ctxrep.spell",
    "lib_ctxrep.vendi",
    "lib_ctxrep.integrations.diffusers",
    "lib_ctxrep.integrations.diffusers_spell",
    "lib_ctxrep.integrations.diffusers_reproduce",
    "lib_ctxrep.integrations.forge",
    "lib_ctxrep.integrations.forge_args",
    "lib_ctxrep.integrations.forge_reproduce",
]


def test_runtime_and_front_ends_import_no_evaluation_code():
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME_AND_FRONT_ENDS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('lib_ctxrep.evaluation')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"evaluation modules imported by the runtime: {out.strip()}"
