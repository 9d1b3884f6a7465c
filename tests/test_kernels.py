"""The Triton kernels (lib_ctxrep.kernels) against the torch versions: same Gram matrix and combination within
float32 rounding, one read of the rows (no working copy), in place, and the same repulsion through the engine.
Without a GPU they run in Triton's CPU interpreter (skipped where Triton is not installed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (pip install triton)", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # conftest.py sets it first
    pytest.skip("Triton's interpreter was not turned on before Triton was imported", allow_module_level=True)

from lib_ctxrep import kernels, repulsion  # noqa: E402
from lib_ctxrep.config import RepulsionConfig  # noqa: E402
from lib_ctxrep.engine import RepulsionEngine  # noqa: E402
from tests.test_block_cost import Recorder, one_minus_cosine  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rows_of(count: int, cols: int, seed: int, dtype: torch.dtype, spread: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, cols, generator=g) + 1.0
    return (base + spread * torch.randn(count, cols, generator=g)).to(device=DEVICE, dtype=dtype)


@pytest.fixture
def use_kernels(monkeypatch):
    """The library routes its Gram matrices and combinations through the kernels (also on CPU tensors)."""
    monkeypatch.setenv("CTXREP_KERNELS", "triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("current", "memory"), [(4, 0), (3, 5), (17, 0), (24, 8)])
def test_gram_kernel_matches_torch(dtype, current, memory):
    x = rows_of(current, 1000, seed=current, dtype=dtype)
    m = rows_of(memory, 1000, seed=99, dtype=dtype) if memory else None
    parts = [x[:, :389], x[:, 389:]]  # two parts, the first of a width that is no multiple of the tile
    fixed = None if m is None else [m[:, :389], m[:, 389:]]
    got = kernels.centred_gram(parts, fixed)
    want = repulsion.centred_gram(parts, fixed)
    assert got.dtype == torch.float64 and got.shape == (current + memory,) * 2
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * want.abs().max().item())


def test_gram_kernel_of_near_identical_bf16_samples_matches_float64():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 2**18, generator=g) + 3.0
    spread = (1e-3 * base.pow(2).mean()).sqrt()
    rows = (base + spread * torch.randn(4, 2**18, generator=g)).to(torch.bfloat16)
    exact = rows.double() @ rows.double().T
    (centred,) = repulsion.to_host([kernels.centred_gram([rows.to(DEVICE)])])
    got = torch.from_numpy(repulsion.uncentre_gram(centred))
    off = ~torch.eye(4, dtype=torch.bool)
    want = one_minus_cosine(exact)[off]
    assert ((one_minus_cosine(got)[off] - want).abs() / want).max().item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("memory", [0, 3])
def test_combine_kernel_matches_torch_within_one_rounding_of_the_output(dtype, memory):
    x = rows_of(4, 777, seed=1, dtype=dtype)
    m = rows_of(memory, 777, seed=2, dtype=dtype) if memory else None
    delta = 1e-2 * torch.randn(4, 4 + memory, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    got = kernels.combine_rows(delta, x, m)
    exact = x.double() + delta.double() @ (x.double() if m is None else torch.cat([x, m]).double())
    ulp = torch.finfo(dtype).eps * exact.abs().max().item()
    assert got.dtype == dtype and (got.double() - exact).abs().max().item() <= ulp
    assert (got.double() - repulsion.combine_rows(delta, x, m).double()).abs().max().item() <= 2 * ulp


def test_combine_kernel_writes_in_place_what_it_would_write_elsewhere():
    x = rows_of(5, 600, seed=4, dtype=torch.bfloat16)
    delta = 1e-2 * torch.randn(5, 5, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    elsewhere = kernels.combine_rows(delta, x)
    kernels.combine_rows(delta, x, out=x)
    assert torch.equal(x, elsewhere)


def test_kernels_read_the_rows_without_a_working_copy():
    x = rows_of(4, 50_000, seed=6, dtype=torch.bfloat16)
    with Recorder() as recorder:
        kernels.centred_gram([x])
        kernels.combine_rows(torch.zeros(4, 4, device=DEVICE), x)
    sizes = sorted(size for _, size in recorder.allocations)
    assert sizes[-1] == x.untyped_storage().nbytes()  # the combination's output, and nothing else of that size
    assert sum(sizes[:-1]) < x.untyped_storage().nbytes() // 10  # per-program partial Gram matrices, coefficients


def test_more_rows_than_a_tile_holds_use_the_torch_versions(use_kernels):
    assert kernels.available([rows_of(32, 10, seed=7, dtype=torch.float32)])
    assert not kernels.available([rows_of(30, 10, seed=7, dtype=torch.float32)], [rows_of(3, 10, 8, torch.float32)])
    assert not kernels.available([rows_of(4, 10, seed=7, dtype=torch.float64)])  # float64 stays exact in torch


def test_engine_repels_the_same_with_kernels_and_with_torch(monkeypatch):
    parts = [rows_of(4, 3 * 40, seed=8, dtype=torch.bfloat16).reshape(4, 3, 40)]
    results = {}
    for choice in ("torch", "triton"):
        monkeypatch.setenv("CTXREP_KERNELS", choice)
        calls = {"kernels": 0}
        original = kernels.centred_gram

        def counted(*args, original=original, calls=calls):
            calls["kernels"] += 1
            return original(*args)

        monkeypatch.setattr(kernels, "centred_gram", counted)
        engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=6))
        engine.begin_call(0.0, ("cond",))
        results[choice] = engine.process("b0", parts)[0]
        assert calls["kernels"] == (choice == "triton")
    ulp = torch.finfo(torch.bfloat16).eps * results["torch"].abs().max().item()  # the kernel rounds once, torch twice
    torch.testing.assert_close(results["triton"], results["torch"], rtol=0, atol=ulp)
    assert not torch.equal(results["triton"], parts[0])


def test_a_kernel_that_fails_leaves_the_torch_versions_running_and_says_so(use_kernels, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(kernels, "centred_gram", broken)
    monkeypatch.setattr(repulsion, "_KERNELS", [])  # a fresh process: the kernels are loaded again
    x = rows_of(4, 64, seed=9, dtype=torch.float32).reshape(4, 4, 16)
    monkeypatch.setenv("CTXREP_KERNELS", "torch")
    want = repulsion.repel_angular(x, 0.3, 5)
    monkeypatch.setenv("CTXREP_KERNELS", "triton")
    with caplog.at_level("WARNING", logger="lib_ctxrep"):
        got = repulsion.repel_angular(x, 0.3, 5)
        again = repulsion.repel_angular(x, 0.3, 5)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "the Triton kernels failed (RuntimeError: cannot compile)" in caplog.records[0].message


def test_kernels_compile_for_the_a100_to_rtx_40_and_the_h100_without_a_gpu():
    # Triton's own compiler and ptxas, for sm_86 (the least shared memory) and sm_90 (Hopper code generation)
    tool = Path(__file__).parent.parent / "tools" / "compile_kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(tool), "--targets", "86", "90"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compile_kernels: all compiled" in done.stdout
