"""Triton kernels for a hooked block: its two passes over the repelled rows, at the bandwidth floor, and the inner
loop between them, on the device.

:func:`centred_gram` reads the rows once (in the stream dtype, float32 accumulation) and :func:`combine_rows` reads
them once and writes the new rows once (into the rows themselves, if asked); the torch versions in
:mod:`lib_ctxrep.repulsion` move several times more bytes (a float32 working copy, its centring, a product that reads
the rows twice). Both kernels handle up to :data:`MAX_ROWS` rows (current + memory) with the last dimension
contiguous, and give the same results as the torch versions within float32 rounding. :func:`flow` runs the M inner
steps of every group of a block (float64, one program per group), so that nothing goes back to the host.

Used on CUDA tensors when Triton 3 is importable (Linux builds of torch ship it) and ``CTXREP_KERNELS`` is not
``torch``; :func:`available` says whether they run for given rows. Import this module only where Triton is wanted:
with ``TRITON_INTERPRET=1`` set before the import, the kernels run on CPU tensors in Triton's interpreter (the tests).
"""

from __future__ import annotations

import os

import numpy as np
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
    under Triton's interpreter), fp16/bf16/fp32, at most :data:`MAX_ROWS` rows, last dimension contiguous, and no
    gradient wanted through them (the kernels are not differentiable; torch's versions are)."""
    if os.environ.get("CTXREP_KERNELS", "").lower() == "torch":
        return False
    tensors = rows + (memory or [])
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    count = rows[0].shape[0] + (memory[0].shape[0] if memory else 0)
    return (
        count <= MAX_ROWS
        and all((t.is_cuda or interpreted) and t.dtype in _DTYPES and t.stride(-1) == 1 for t in tensors)
        and not any(t.requires_grad for t in tensors)
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
    x_ptr, m_ptr, d_ptr, ok_ptr, out_ptr, b, r, cols, stride_x, stride_m, stride_o,
    R_PAD: tl.constexpr, BLOCK: tl.constexpr, HAS_OK: tl.constexpr,
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
    if HAS_OK:  # the device inner loop found the update not finite: the rows stay as they are
        new = tl.where(tl.load(ok_ptr) != 0, new, x.to(tl.float32))
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
    delta: torch.Tensor,
    current: torch.Tensor,
    memory: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    ok: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`lib_ctxrep.repulsion.combine_rows` in one read and one write of the rows, with the coefficients
    ``delta`` [B, R] kept in float32 (or a tile of :func:`flow`, already padded). ``out`` ([B, P], last dimension
    contiguous; may be ``current`` itself) receives the new rows; a new tensor when None. ``ok``: a flag of
    :func:`flow` (int32 [1] on the device); where it is 0 the rows are written unchanged."""
    b, cols = current.shape
    r = b + (memory.shape[0] if memory is not None else 0)
    pad = _padded(r)
    if delta.shape == (pad, pad) and delta.dtype == torch.float32 and delta.is_contiguous():
        padded = delta
    else:
        padded = torch.zeros((pad, pad), dtype=torch.float32, device=current.device)
        padded[:b, :r] = delta
    out = torch.empty_like(current, memory_format=torch.contiguous_format) if out is None else out
    fixed = memory if memory is not None else current
    block = _block(pad, current.dtype)
    _combine_kernel[(triton.cdiv(cols, block),)](
        current, fixed, padded, padded if ok is None else ok, out, b, r, cols, current.stride(0), fixed.stride(0),
        out.stride(0), R_PAD=pad, BLOCK=block, HAS_OK=ok is not None,
    )  # fmt: skip
    return out


# The device-resident inner loop ---------------------------------------------------------------------------------

#: Rows (current + memory) of a group the device inner loop holds; larger groups run the host loop.
FLOW_MAX_ROWS = 32
#: Jacobi sweeps at most per eigen-solve. Warm-started from the previous step's eigenvectors, a solve needs two or
#: three; the first, from the identity, a handful.
FLOW_SWEEPS = 60
#: An off-diagonal entry counts as zero below this, or below ``FLOW_RELATIVE`` times the geometric mean of its two
#: diagonal entries (the kernel has a unit diagonal), as in :mod:`lib_ctxrep.hostloop`.
FLOW_TINY = 1e-18
FLOW_RELATIVE = 1e-15
#: Largest finite float64 (a larger magnitude is inf).
_FLOAT64_MAX = 1.7976931348623157e308


@triton.jit
def _mm(a, b, R_PAD: tl.constexpr):
    """a @ b for two [R_PAD, R_PAD] float64 tiles of one program."""
    if R_PAD <= 16:
        out = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:  # a [32, 32, 32] product would not fit in registers: one rank-1 update per column of a
        idx = tl.arange(0, R_PAD)
        out = tl.zeros((R_PAD, R_PAD), dtype=tl.float64)
        for e in range(R_PAD):
            column = tl.sum(tl.where(idx[None, :] == e, a, 0.0), axis=1)
            row = tl.sum(tl.where(idx[:, None] == e, b, 0.0), axis=0)
            out += column[:, None] * row[None, :]
    return out


@triton.jit
def _diagonal(a, idx):
    return tl.sum(tl.where(idx[:, None] == idx[None, :], a, 0.0), axis=1)


@triton.jit
def _unconverged(a, r, idx, TINY: tl.constexpr, RELATIVE: tl.constexpr):
    """How many off-diagonal entries of the leading r x r block of ``a`` are not yet zero (see :data:`FLOW_TINY`)."""
    d = tl.abs(_diagonal(a, idx))
    limit = tl.maximum(RELATIVE * tl.sqrt(d[:, None] * d[None, :]), TINY)
    big = (idx[:, None] != idx[None, :]) & (idx[:, None] < r) & (idx[None, :] < r) & (tl.abs(a) > limit)
    return tl.sum(tl.sum(big.to(tl.int32), axis=1), axis=0)


@triton.jit
def _jacobi(a, v, r, idx, SWEEPS: tl.constexpr, TINY: tl.constexpr, RELATIVE: tl.constexpr):
    """Cyclic Jacobi on the leading r x r block of the symmetric tile ``a``: returns ``a`` rotated to (numerically)
    diagonal and ``v`` times the rotations (the rotations of :func:`lib_ctxrep.hostloop._jacobi`)."""
    ri = idx[:, None]
    ci = idx[None, :]
    left = _unconverged(a, r, idx, TINY, RELATIVE)
    sweep = 0
    while (sweep < SWEEPS) & (left > 0):
        for p in range(0, r - 1):
            rowp = tl.sum(tl.where(ri == p, a, 0.0), axis=0)
            for q in range(p + 1, r):
                apq = tl.sum(tl.where(idx == q, rowp, 0.0), axis=0)
                rowq = tl.sum(tl.where(ri == q, a, 0.0), axis=0)
                app = tl.sum(tl.where(idx == p, rowp, 0.0), axis=0)
                aqq = tl.sum(tl.where(idx == q, rowq, 0.0), axis=0)
                # a pair already at rounding is skipped (most of them in the last sweep)
                if tl.abs(apq) > tl.maximum(RELATIVE * tl.sqrt(tl.abs(app * aqq)), TINY):
                    theta = (aqq - app) / (2.0 * apq)
                    t = 1.0 / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0))
                    t = tl.where(theta < 0.0, -t, t)
                    c = 1.0 / tl.sqrt(t * t + 1.0)
                    s = t * c
                    newp = c * rowp - s * rowq
                    newq = s * rowp + c * rowq
                    cs = 2.0 * c * s * apq
                    newp = tl.where(idx == p, c * c * app - cs + s * s * aqq, tl.where(idx == q, 0.0, newp))
                    newq = tl.where(idx == q, s * s * app + cs + c * c * aqq, tl.where(idx == p, 0.0, newq))
                    a = tl.where(ri == p, newp[None, :], tl.where(ri == q, newq[None, :], a))
                    a = tl.where(ci == p, newp[:, None], tl.where(ci == q, newq[:, None], a))
                    vp = tl.sum(tl.where(ci == p, v, 0.0), axis=1)
                    vq = tl.sum(tl.where(ci == q, v, 0.0), axis=1)
                    v = tl.where(ci == p, (c * vp - s * vq)[:, None], tl.where(ci == q, (s * vp + c * vq)[:, None], v))
                    rowp = newp
        left = _unconverged(a, r, idx, TINY, RELATIVE)
        sweep += 1
    return a, v


@triton.jit
def _flow_kernel(
    c_ptr, d_ptr, ok_ptr, b, r, iterations, step_hi, step_lo, raw_eta, null,
    R_PAD: tl.constexpr, D_PAD: tl.constexpr, SWEEPS: tl.constexpr, TINY: tl.constexpr, RELATIVE: tl.constexpr,
    BIG: tl.constexpr,
):  # fmt: skip
    """The M Euler steps of :func:`lib_ctxrep.repulsion._flow` for group ``program_id`` of a stack of centred Gram
    matrices [J, r, r] (float64): its update coefficients T - [I 0] into ``d_ptr`` (float32 [J, D_PAD, D_PAD], zeros
    outside [b, r]) and 1 into ``ok_ptr`` [J] when the update is finite (else 0, and zero coefficients)."""
    j = tl.program_id(0)
    idx = tl.arange(0, R_PAD)
    ri = idx[:, None]
    ci = idx[None, :]
    valid = idx < r
    inside = (ri < r) & (ci < r)
    eye = tl.where(ri == ci, 1.0, 0.0).to(tl.float64)
    centred = tl.load(c_ptr + j * r * r + ri * r + ci, mask=inside, other=0.0).to(tl.float64)
    # X X^T from the Gram matrix of Z = [x_0; x_i - x_0] (see repulsion.uncentre_gram)
    first = tl.sum(tl.where(ri == 0, centred, 0.0), axis=0)
    first00 = tl.sum(tl.where(idx == 0, first, 0.0), axis=0)
    lift = tl.where((idx >= 1) & valid, 1.0, 0.0).to(tl.float64)
    gram = centred + lift[:, None] * first[None, :] + first[:, None] * lift[None, :]
    gram += first00 * lift[:, None] * lift[None, :]
    nonfinite = inside & ((gram != gram) | (tl.abs(gram) > BIG))
    finite = tl.sum(tl.sum(nonfinite.to(tl.int32), axis=1), axis=0) == 0
    # A zero row has no direction: such a group stays as it is (a stand-in identity keeps the loop finite).
    zero_rows = tl.sum((valid & (_diagonal(gram, idx) <= 0.0)).to(tl.int32), axis=0)
    movable = finite & (zero_rows == 0)
    gram = tl.where(movable, gram, tl.where(inside, eye, 0.0))

    n0 = tl.sqrt(tl.where(valid, _diagonal(gram, idx), 1.0))
    kernel = tl.where(inside, gram / (n0[:, None] * n0[None, :]), 0.0)
    norms = n0
    basis = eye
    vecs = eye
    rf = tl.full((), r, tl.float64)
    scale = -2.0 * (tl.full((), step_hi, tl.float64) + tl.full((), step_lo, tl.float64)) / rf
    shift = 1.0 - tl.log(rf)
    for _ in range(iterations):
        a = _mm(_mm(tl.trans(vecs), kernel, R_PAD), vecs, R_PAD)  # nearly diagonal after the first step
        a, vecs = _jacobi(a, vecs, r, idx, SWEEPS, TINY, RELATIVE)
        lam = _diagonal(a, idx)
        smallest = tl.min(tl.where(valid, lam, 1.0), axis=0)
        logs = tl.log(tl.where(lam > 0.0, lam, 1.0))
        # dH/dK = -(log(K/R) + I) / R; with no null direction the constant part adds nothing to the step
        weights = tl.where(smallest > null, logs, tl.where(lam > null, logs + shift, 0.0))
        weights = tl.where(valid, weights, 0.0)
        if raw_eta == 0:
            weights = weights * scale
        moving = _mm(vecs * weights[None, :], tl.trans(vecs), R_PAD)
        if raw_eta != 0:
            moving = moving * (scale / (norms * norms))[:, None]
        moving = tl.where((ri < b) & (ci < r), moving, 0.0)
        radial = tl.sum(moving * kernel, axis=1)
        update = moving + eye * tl.where(idx < b, 1.0 - radial, 1.0)[:, None]
        unnormalised = _mm(_mm(update, kernel, R_PAD), tl.trans(update), R_PAD)
        inv = 1.0 / tl.sqrt(tl.where(valid, _diagonal(unnormalised, idx), 1.0))
        kernel = unnormalised * inv[:, None] * inv[None, :]
        basis = _mm(update, basis, R_PAD) * inv[:, None]
        norms = norms / inv

    delta = tl.where((ri < b) & (ci < r), norms[:, None] * basis / n0[None, :] - eye, 0.0)
    broken = (delta != delta) | (tl.abs(delta) > BIG) | (inside & ((kernel != kernel) | (tl.abs(kernel) > BIG)))
    ok = finite & (tl.sum(tl.sum(broken.to(tl.int32), axis=1), axis=0) == 0)
    delta = tl.where(ok & movable, delta, 0.0)
    tl.store(d_ptr + j * D_PAD * D_PAD + ri * D_PAD + ci, delta.to(tl.float32), mask=(ri < D_PAD) & (ci < D_PAD))
    tl.store(ok_ptr + j, ok.to(tl.int32))


def flow(
    centred: torch.Tensor, b: int, iterations: int, step: float, raw_eta: bool, null: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner loop of :func:`lib_ctxrep.repulsion.coefficient_flows` on the device, one program per group, for a
    stack of centred Gram matrices ``centred`` [J, R, R] (float64, from :func:`centred_gram`; R at most
    :data:`FLOW_MAX_ROWS`): the update coefficients T - [I 0] as float32 tiles [J, P, P] that :func:`combine_rows`
    takes as they are (zero outside [b, R]), and int32 flags [J], 0 where the update is not finite (its
    coefficients are then zero, and :func:`combine_rows` given the flag leaves the rows as they are). Nothing is
    read back to the host."""
    count, r = centred.shape[0], centred.shape[-1]
    pad = max(4, triton.next_power_of_2(r))  # the loop's tile: small tiles keep its many small steps short
    out_pad = _padded(r)
    centred = centred.contiguous()
    deltas = torch.zeros((count, out_pad, out_pad), dtype=torch.float32, device=centred.device)
    ok = torch.empty((count,), dtype=torch.int32, device=centred.device)
    hi = float(np.float32(step))  # float arguments reach the kernel as float32: the step goes as two of them
    _flow_kernel[(count,)](
        centred, deltas, ok, b, r, iterations, hi, step - hi, int(raw_eta), null,
        R_PAD=pad, D_PAD=out_pad, SWEEPS=FLOW_SWEEPS, TINY=FLOW_TINY, RELATIVE=FLOW_RELATIVE, BIG=_FLOAT64_MAX,
        num_warps=flow_warps(pad),
    )  # fmt: skip
    return deltas, ok


def flow_warps(pad: int) -> int:
    """Warps of the inner-loop kernel for tiles of ``pad`` rows: one warp holds a tile of up to 8 x 8."""
    return 1 if pad <= 8 else 4
