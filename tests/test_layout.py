"""The layers stay apart: the runtime and the front ends never import the evaluation code."""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys

import lib_ctxrep


def runtime_and_front_ends() -> list[str]:
    """Every module of the package outside ``lib_ctxrep.evaluation`` (new modules are covered as they come)."""
    names = [m.name for m in pkgutil.walk_packages(lib_ctxrep.__path__, "lib_ctxrep.")]
    for module, needs in (("lib_ctxrep.kernels", "triton"), ("lib_ctxrep.hostloop", "numba")):
        if importlib.util.find_spec(needs) is None:  # an optional dependency of that module is not installed
            names.remove(module)
    return ["lib_ctxrep"] + sorted(n for n in names if not n.startswith("lib_ctxrep.evaluation"))


RUNTIME_AND_FRONT_ENDS = runtime_and_front_ends()


def test_the_layout_check_sees_every_front_end():
    assert {"lib_ctxrep.integrations.comfyui_nodes", "lib_ctxrep.integrations.forge"} <= set(RUNTIME_AND_FRONT_ENDS)


def test_runtime_and_front_ends_import_no_evaluation_code():
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME_AND_FRONT_ENDS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('lib_ctxrep.evaluation')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"evaluation modules imported by the runtime: {out.strip()}"
