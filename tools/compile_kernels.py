"""Compile lib_ctxrep's Triton kernels for NVIDIA GPUs without a GPU: every kernel, stream dtype and tile height the
library launches, for the T4 and RTX 20 series (sm_75), the A100 (sm_80), the RTX 30 series (sm_86), the RTX 40
series and L40 (sm_89), the H100/H200 (sm_90), the B200 (sm_100) and the RTX 50 series (sm_120), with Triton's own
compiler and ptxas. Fails when a kernel does not compile or needs more shared memory than the GPU has (the library
would then fall back to its torch versions, with a warning).

    python tools/compile_kernels.py [--targets 75 80 86 89 90 100 120]
    (needs Triton 3; tests/test_kernels.py runs 86 and 90)
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lib_ctxrep import kernels  # noqa: E402

#: Shared memory a block may use, per compute capability (CUDA's programming guide, "maximum shared memory per block").
SHARED_LIMIT = {
    75: 64 * 1024,
    80: 163 * 1024,
    86: 99 * 1024,
    89: 99 * 1024,
    90: 227 * 1024,
    100: 227 * 1024,
    120: 99 * 1024,
}
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
STREAM_POINTERS = {"x_ptr", "m_ptr", "out_ptr"}
TYPED = {"part_ptr": "*fp32", "d_ptr": "*fp32", "ok_ptr": "*i32", "c_ptr": "*fp64"}
FLOATS = {"step_hi", "step_lo", "null"}


def signature(kernel, dtype: torch.dtype) -> dict[str, str]:
    """The kernel's parameters typed as the library launches them."""
    types = {}
    for name in kernel.arg_names:
        if name in STREAM_POINTERS:
            types[name] = "*" + TRITON_TYPES[dtype]
        elif name in TYPED:
            types[name] = TYPED[name]
        elif name.isupper():
            types[name] = "constexpr"
        else:
            types[name] = "fp32" if name in FLOATS else "i32"
    return types


def compile_one(kernel, dtype: torch.dtype, constexprs: dict, capability: int, num_warps: int = 4) -> int:
    """Compile ``kernel`` for sm_``capability``; returns the shared memory it needs (bytes)."""
    source = ASTSource(kernel, signature(kernel, dtype), constexprs=constexprs)
    target = GPUTarget("cuda", capability, 32)
    return triton.compile(source, target=target, options={"num_warps": num_warps}).metadata.shared


def launches() -> list[tuple[str, object, torch.dtype, dict, int]]:
    """Every (label, kernel, stream dtype, constexprs, warps) the library launches."""
    out = []
    for dtype in kernels._DTYPES:
        for rows in (16, 32):
            pad = kernels._padded(rows)
            block = kernels._block(pad, dtype)
            label = f"{TRITON_TYPES[dtype]} rows<={pad} block {block}"
            out.append((label, kernels._gram_kernel, dtype, {"R_PAD": pad, "BLOCK": block}, 4))
            for has_ok in (False, True):
                constexprs = {"R_PAD": pad, "BLOCK": block, "HAS_OK": has_ok}
                out.append((f"{label}{' flag' if has_ok else ''}", kernels._combine_kernel, dtype, constexprs, 4))
    for pad in (4, 8, 16, 32):
        constexprs = {
            "R_PAD": pad, "D_PAD": kernels._padded(pad), "SWEEPS": kernels.FLOW_SWEEPS, "TINY": kernels.FLOW_TINY,
            "RELATIVE": kernels.FLOW_RELATIVE, "BIG": kernels._FLOAT64_MAX,
        }  # fmt: skip
        out.append((f"rows<={pad}", kernels._flow_kernel, torch.float32, constexprs, kernels.flow_warps(pad)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", choices=sorted(SHARED_LIMIT), default=sorted(SHARED_LIMIT))
    targets = parser.parse_args().targets
    failures = 0
    for capability in targets:
        limit = SHARED_LIMIT[capability]
        for label, kernel, dtype, constexprs, warps in launches():
            name = kernel.fn.__name__
            try:
                shared = compile_one(kernel, dtype, constexprs, capability, warps)
            except Exception as error:  # noqa: BLE001 (reported, then the run fails)
                print(f"FAIL sm_{capability} {name} {label}: {error}")
                failures += 1
                continue
            ok = shared <= limit
            failures += not ok
            print(
                f"{'ok  ' if ok else 'FAIL'} sm_{capability} {name} {label}: {shared / 1024:.0f} KiB shared "
                f"(limit {limit / 1024:.0f})"
            )
    print(f"compile_kernels: {'all compiled' if not failures else f'{failures} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
