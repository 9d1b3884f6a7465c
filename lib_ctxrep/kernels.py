"""Triton kernels for the two passes of a hooked block over its repelled rows, at the bandwidth floor.

:func:`centred_gram` reads the rows once (in the stream dtype, float32 accumulation) and :func:`combine_rows` reads
them once and writes the new rows once; the torch versions in :mod:`lib_ctxrep.repulsion` move several times more
bytes (a float32 working copy, its centring, a product that reads the rows twice). Both kernels handle up to
:data:`MAX_ROWS` rows (current + memory) with the last dimension contiguous, and give the same results as the torch
versions within float32 rounding.

Used on CUDA tensors when Triton 3 is importable (Linux builds of torch ship it) and ``CTXREP_KERNELS`` is not
``torch``; :func:`available` says whether they run for given rows. Import this module only where Triton is wanted:
with ``TRITON_INTERPRET=1`` set before the import, the kernels run on CPU tensors in Triton's interpreter (the tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Rows (current + memory) the kernels hold in one tile; larger groups use the torch versions.
MAX_ROWS = 32
#: Columns of a tile. Each program of the Gram kernel loops over several tiles, so its float32 accumulator sums at
#: most a few hundred thousand products before the float64 sum over programs.
BLOCK = 256
#: Programs of the Gram kernel at most (a few per streaming multiprocessor of a large GPU), each summing at least
#: ``GRAM_TILES`` tiles, so that the partial Gram matrices stay a small fraction of the rows' bytes.
GRAM_PROGRAMS = 528
GRAM_TILES = 8
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def available(rows: list[torch.Tensor], memory: list[torch.Tensor] | None = None) -> bool:
    """Whether the kernels handle these rows ([B, P] each, and memory rows [Mm, P]): CUDA tensors (or any tensors
    under Triton's interpreter), fp16/bf16/fp32, at most :data:`MAX_ROWS` rows, last dimension contiguous."""
    if os.environ.get("CTXREP_KERNELS", "").lower() == "torch":
        return False
    tensors = rows + (memory or [])
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    count = rows[0].shape[0] + (memory[0].shape[0] if memory else 0)
    return (
        count <= MAX_ROWS
        and all((t.is_cuda or interpreted) and t.dtype in _DTYPES and t.stride(-1) == 1 for t in tensors)
        and all(t.device == rows[0].device for t in tensors)
    )


def _padded(count: int) -> int:
    return 16 if count <= 16 else 32  # tl.dot needs tiles of at least 16 rows


def _block(pad: int, dtype: torch.dtype) -> int:
    """Columns of a tile: half of :data:`BLOCK` for 32 float32 rows, whose tiles would otherwise need 160 KiB of
    shared memory (more than GPUs before the A100 have)."""
    return BLOCK // 2 if pad * torch.finfo(dtype).bits > 16 * 32 else BLOCK


@triton.jit
def _gram_kernel(
    x_ptr, m_ptr, part_ptr, b, r, cols, stride_x, stride_m, tiles_per_program,
    R_PAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = tl.arange(0, R_PAD)
    current = rows < b
    fixed = (rows >= b) & (rows < r)
    acc = tl.zeros((R_PAD, R_PAD), dtype=tl.float32)
    for i in range(tiles_per_program):
        offs = (pid * tiles_per_program + i) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < cols
        z = tl.load(
            x_ptr + rows[:, None] * stride_x + offs[None, :], mask=current[:, None] & inside[None, :], other=0.0
        ).to(tl.float32)
        z += tl.load(
            m_ptr + (rows[:, None] - b) * stride_m + offs[None, :], mask=fixed[:, None] & inside[None, :], other=0.0
        ).to(tl.float32)
        first = tl.sum(tl.where(rows[:, None] == 0, z, 0.0), axis=0)
        z = tl.where((rows[:, None] > 0) & (rows[:, None] < r), z - first[None, :], z)  # exact for fp16/bf16 rows
        acc += tl.dot(z, tl.trans(z), input_precision="ieee")
    tl.store(part_ptr + pid * R_PAD * R_PAD + rows[:, None] * R_PAD + rows[None, :], acc)


@triton.jit
def _combine_kernel(
    x_ptr, m_ptr, d_ptr, out_ptr, b, r, cols, stride_x, stride_m, stride_o,
    R_PAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = tl.arange(0, R_PAD)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < cols
    current = rows < b
    fixed = (rows >= b) & (rows < r)
    x = tl.load(x_ptr + rows[:, None] * stride_x + offs[None, :], mask=current[:, None] & inside[None, :], other=0.0)
    z = x.to(tl.float32) + tl.load(
        m_ptr + (rows[:, None] - b) * stride_m + offs[None, :], mask=fixed[:, None] & inside[None, :], other=0.0
    ).to(tl.float32)
    delta = tl.load(d_ptr + rows[:, None] * R_PAD + rows[None, :])
    new = x.to(tl.float32) + tl.dot(delta, z, input_precision="ieee")
    tl.store(
        out_ptr + rows[:, None] * stride_o + offs[None, :],
        new.to(out_ptr.dtype.element_ty),
        mask=current[:, None] & inside[None, :],
    )


def centred_gram(rows: list[torch.Tensor], memory: list[torch.Tensor] | None = None) -> torch.Tensor:
    """:func:`lib_ctxrep.repulsion.centred_gram` in one read of the rows: float64 [R, R] on the rows' device."""
    b = rows[0].shape[0]
    r = b + (memory[0].shape[0] if memory is not None else 0)
    pad = _padded(r)
    partials = []
    for k, x in enumerate(rows):
        fixed = memory[k] if memory is not None else x
        cols = x.shape[1]
        block = _block(pad, x.dtype)
        tiles = triton.cdiv(cols, block)
        programs = min(triton.cdiv(tiles, GRAM_TILES), GRAM_PROGRAMS)
        per_program = triton.cdiv(tiles, programs)
        programs = triton.cdiv(tiles, per_program)
        part = torch.empty((programs, pad, pad), dtype=torch.float32, device=x.device)
        _gram_kernel[(programs,)](
            x, fixed, part, b, r, cols, x.stride(0), fixed.stride(0), per_program, R_PAD=pad, BLOCK=block
        )
        partials.append(part.sum(dim=0, dtype=torch.float64))
    total = partials[0] if len(partials) == 1 else torch.stack(partials).sum(dim=0)
    return total[:r, :r]


def combine_rows(
    delta: torch.Tensor, current: torch.Tensor, memory: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`lib_ctxrep.repulsion.combine_rows` in one read and one write of the rows, with the coefficients
    ``delta`` [B, R] kept in float32. ``out`` ([B, P], last dimension contiguous; may be ``current`` itself) receives
    the new rows; a new tensor when None."""
    b, cols = current.shape
    r = delta.shape[1]
    pad = _padded(r)
    padded = torch.zeros((pad, pad), dtype=torch.float32, device=current.device)
    padded[:b, :r] = delta
    out = torch.empty_like(current, memory_format=torch.contiguous_format) if out is None else out
    fixed = memory if memory is not None else current
    block = _block(pad, current.dtype)
    _combine_kernel[(triton.cdiv(cols, block),)](
        current, fixed, padded, out, b, r, cols, current.stride(0), fixed.stride(0), out.stride(0),
        R_PAD=pad, BLOCK=block,
    )  # fmt: skip
    return out
