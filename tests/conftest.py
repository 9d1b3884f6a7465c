"""Say, at the end of a run, which tests this environment skipped and the command that runs them; and the fixture
that counts transfers to the host.

The suite runs in two environments (CI runs both): current diffusers (``requirements-test.txt``) and Forge's pins
(``requirements-test-forge.txt``: gradio 4.40, diffusers 0.31). Each skips what only the other can run; nothing is
skipped silently.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's kernels (lib_ctxrep.kernels, tests/test_kernels.py) then run on CPU tensors in its interpreter; it
    # must be set before anything imports Triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

FORGE_ENV = (
    "python3 -m venv .venv-forge && .venv-forge/bin/python -m pip install -r requirements-test-forge.txt -e . "
    "&& .venv-forge/bin/python -m pytest -q"
)
CURRENT_ENV = "python -m pip install -r requirements-test.txt -e . && python -m pytest -q"


@pytest.fixture
def transfers(monkeypatch):
    """Counts calls of :func:`lib_ctxrep.repulsion.to_host`, the one helper that copies results to the host (the
    engine's import of it included)."""
    from lib_ctxrep import engine, repulsion

    count = {"calls": 0}
    original = repulsion.to_host

    def counted(tensors):
        count["calls"] += 1
        return original(tensors)

    monkeypatch.setattr(repulsion, "to_host", counted)
    monkeypatch.setattr(engine, "to_host", counted)
    return count


def _reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 (pytest's hook signature)
    """One line per kind of skip: what needs the other environment, and how to run it."""
    skipped = terminalreporter.stats.get("skipped", [])
    kinds: Counter[str] = Counter()
    for report in skipped:
        reason = _reason(report)
        if "gradio" in reason:
            kinds["forge"] += 1
        elif "has no" in reason and "diffusers" in reason:
            kinds["diffusers"] += 1
        elif "Triton" in reason:
            kinds["triton"] += 1
        elif "numba" in reason:
            kinds["numba"] += 1
        else:
            kinds["other"] += 1
    if kinds["forge"]:
        terminalreporter.write_line(
            "[tests] the Forge script's tests (real gradio 4.40) were skipped: gradio is not installed here. "
            f"They run in Forge's pinned environment: {FORGE_ENV}"
        )
    if kinds["diffusers"]:
        terminalreporter.write_line(
            f"[tests] {kinds['diffusers']} tests of model classes this diffusers lacks were skipped; "
            f"they run with current diffusers: {CURRENT_ENV}"
        )
    if kinds["triton"]:
        terminalreporter.write_line(
            f"[tests] the Triton kernels' tests ({kinds['triton']} files) were skipped (Triton is not installed); "
            f"they run (in Triton's CPU interpreter) with current diffusers' requirements: {CURRENT_ENV}"
        )
    if kinds["numba"]:
        terminalreporter.write_line(
            f"[tests] {kinds['numba']} test file of the compiled inner loop was skipped (numba is not installed; the "
            f"numpy loop ran instead); it runs with current diffusers' requirements: {CURRENT_ENV}"
        )
