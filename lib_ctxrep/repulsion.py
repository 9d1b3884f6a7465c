"""Contextual repulsion (Dahary et al., arXiv 2603.28762, Eq. 2) in closed form and in coefficient space.

The paper updates each sample's contextual vector c_i (its text-stream tokens [N, D] after a block, flattened) by
M Euler steps of gradient ascent on H, the log Vendi score of the batch's cosine kernel:

    c_i <- c_i + (eta / M) * dH/dc_i,    recomputed M times per block.

Closed form (no autograd): with n_i = ||c_i||, K_ij = <c_i, c_j> / (n_i n_j) and G = dH/dK = -(log(K/R) + I) / R,

    dH/dc_i = (2 / n_i) * sum_{k != i} G_ik * (c_k / n_k - K_ik * c_i / n_i)

which is a linear combination of the batch's own vectors. So every inner step is C <- (I + s W(Gram)) C with W a
function of the R x R Gram matrix alone: the M steps run on R x R matrices on the host (float64), and the
[B, N, D] tensors are touched exactly twice per block (one Gram matrix, one combination), whatever M is.

Scale-free strength: ||dH/dc_i|| ~ |G| / n_i, so raw eta's effect scales like 1 / n_i^2 (which is why the paper's eta
spans 5e2 on SD3.5-Large to 8e9 on Flux-dev). With ``strength`` gamma the step uses eta_i = gamma * n_i^2 (current
norm, per sample, per inner step): the update then rotates each unit vector c_i / n_i by an angle that does not depend
on the model, the resolution or the prompt length.

Cross-batch memory: extra fixed rows (earlier batches' features) may join the kernel. They push the current rows but
never move; R = B + (memory rows) is the kernel's size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .vendi import NULL_EIG, entropy_and_gradient, gradient_weights


@dataclass
class FlowResult:
    """Outcome of the B x B inner loop for one group of rows."""

    #: [B, R] float64: new current rows = coefficients @ [current rows; memory rows] (None: the loop ran on the device)
    coefficients: np.ndarray | None
    entropy_before: float  #: H (log Vendi) of the current rows before the update (NaN when not asked for)
    entropy_after: float  #: H of the current rows after the update (NaN when not asked for)
    finite: bool  #: False when the input Gram or the result was not finite (the update must then be skipped)
    #: Where the inner loop ran on the device: an int32 flag [1] there, 0 when the update was not finite and was not
    #: applied (``finite`` is then True, as far as the host knows without waiting for the device).
    flag: torch.Tensor | None = None


@dataclass
class Flow:
    """One repulsion problem of a hooked block: the rows that move and the fixed memory rows that push them."""

    parts: list[torch.Tensor]  #: the moving rows, one tensor [B, ...] per part of the feature vector
    memory: list[torch.Tensor] | None = None  #: fixed rows, one tensor [Mm, ...] per part (None: no memory)
    #: Parts before this one count in the kernel but are returned as they are (their new rows are not wanted).
    combine_from: int = 0
    #: The new rows may be written into ``parts`` themselves (they are then returned): done where the Triton
    #: combination runs, which reads each tile of the rows before it writes it.
    in_place: bool = False


#: Elements (all rows together) of the working copy that :func:`centred_gram` upcasts and centres at a time: 16 MiB
#: in float32, so the copy stays a fraction of a single block's stream and, on a GPU, mostly inside the L2 cache.
GRAM_CHUNK = 1 << 22
#: At most this many values of a row per chunk (the working copy's width).
GRAM_CHUNK_COLUMNS = 1 << 20
#: Values of a row per float32 partial product: each block's products are accumulated in float32 by the BLAS, in
#: whatever order it likes, and the blocks are summed in float64. A BLAS's rounding over k values grows up to k times
#: float32's epsilon, so a short block bounds it on every BLAS (a single product over 2^20 values was 2e-3 off in
#: 1 - cos on one machine's MKL, and 2e-4 on another's).
GRAM_BLOCK = 1 << 12


def _rows_2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


@contextlib.contextmanager
def _full_fp32_matmul(device: torch.device):
    """Disable TF32 for the Gram matrix (hosts such as ComfyUI turn it on; its 10-bit mantissa would blur 1 - cos)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def centred_gram(rows: list[torch.Tensor], memory: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The Gram matrix of rows Z = [x_0; x_1 - x_0; ...] on the rows' device, float64 [R, R], for the rows
    X = [current; memory] whose feature vector is the concatenation of ``rows`` (each [B, P_k], any float dtype) and
    ``memory`` (each [Mm, P_k]). :func:`uncentre_gram` turns it into X X^T on the host.

    Near-identical samples (cos 0.999, the usual case at the first step) differ by a few percent of their norm, so
    X X^T accumulated in float32 would lose 1 - cos in its rounding; the differences x_i - x_0 are exact in float32
    for fp16/bf16 rows and carry 1 - cos at full relative precision. One pass over the rows: each chunk of
    ``GRAM_CHUNK`` elements is copied into a float32 (float64 for float64 rows) buffer, centred on row 0 in place
    and multiplied by its transpose in blocks of ``GRAM_BLOCK`` values (float32 accumulation within a block, the
    blocks summed in float64), so the rounding does not depend on the BLAS's summation order. Where the Triton kernels
    run (:mod:`lib_ctxrep.kernels`), one read of the rows in their own dtype.
    """
    kernels = _kernels_for(rows, memory)
    if kernels is not None:
        try:
            return kernels.centred_gram(rows, memory)
        except Exception as error:  # noqa: BLE001 (a compile error must not cost the user's generation)
            _kernels_failed(error)
    b = rows[0].shape[0]
    r = b + (memory[0].shape[0] if memory is not None else 0)
    work = torch.float64 if any(x.dtype == torch.float64 for x in rows) else torch.float32
    device = rows[0].device
    widest = max(x.shape[1] for x in rows)
    cols = max(1, min(widest, GRAM_CHUNK // r, GRAM_CHUNK_COLUMNS))
    block = min(GRAM_BLOCK, cols)
    buffer = torch.empty((-(-cols // block), r, block), dtype=work, device=device)
    total = torch.zeros((r, r), dtype=torch.float64, device=device)
    with _full_fp32_matmul(device):
        for k, x in enumerate(rows):
            fixed = memory[k] if memory is not None else None
            for start in range(0, x.shape[1], buffer.shape[0] * block):
                stop = min(start + buffer.shape[0] * block, x.shape[1])
                z = _blocked(buffer, x, start, stop, 0)
                if fixed is not None:
                    _blocked(buffer, fixed, start, stop, b)
                z[:, 1:] -= z[:, :1]
                total += torch.bmm(z, z.transpose(1, 2)).sum(0, dtype=torch.float64)
    return total


def _blocked(buffer: torch.Tensor, x: torch.Tensor, start: int, stop: int, row: int) -> torch.Tensor:
    """Columns ``start:stop`` of ``x`` ([n, P]) copied into rows ``row:row + n`` of ``buffer`` ([blocks, R, block]),
    one block of columns per leading index, a last partial block padded with zeros (which add nothing to a Gram
    matrix); returns the blocks used."""
    block = buffer.shape[2]
    n, width = x.shape[0], stop - start
    full, rest = divmod(width, block)
    z = buffer[: full + (rest > 0)]
    if full:
        z[:full, row : row + n].copy_(x[:, start : start + full * block].reshape(n, full, block).transpose(0, 1))
    if rest:
        z[full, row : row + n, :rest].copy_(x[:, start + full * block : stop])
        z[full, row : row + n, rest:].zero_()
    return z


def uncentre_gram(centred: np.ndarray) -> np.ndarray:
    """X X^T (float64, host) from the centred Gram matrix of :func:`centred_gram` ([R, R] or a stack [..., R, R]):
    x_i = z_i + z_0 for i >= 1."""
    r = centred.shape[-1]
    lift = np.eye(r)
    lift[1:, 0] = 1.0
    with np.errstate(all="ignore"):  # non-finite rows stay non-finite; coefficient_flows leaves them unchanged
        return lift @ centred @ lift.T


def to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """The one device-to-host transfer of a hooked block: ``tensors`` (small tensors of one dtype on one device) as
    numpy arrays of the same shapes, copied in one go (one synchronisation with the device)."""
    flat = torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)
    host = flat.cpu().numpy()
    out, start = [], 0
    for t in tensors:
        out.append(host[start : start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


_KERNELS: list = []  # the Triton kernels module (or None), loaded on first use


def _kernels_for(rows: list[torch.Tensor], memory: list[torch.Tensor] | None) -> Any:
    """:mod:`lib_ctxrep.kernels` when its Triton kernels handle these rows, else None (the torch versions run).

    ``CTXREP_KERNELS``: ``torch`` never uses them, ``triton`` also on CPU tensors under ``TRITON_INTERPRET=1``, and
    by default they run on CUDA tensors where Triton 3 is importable."""
    choice = os.environ.get("CTXREP_KERNELS", "").lower()
    if choice == "torch" or (choice != "triton" and not rows[0].is_cuda):
        return None
    if not _KERNELS:
        try:
            import triton

            from . import kernels

            _KERNELS.append(kernels if int(triton.__version__.split(".")[0]) >= 3 else None)
        except (ImportError, ValueError):
            _KERNELS.append(None)
    module = _KERNELS[0]
    return module if module is not None and module.available(rows, memory) else None


def _device_loop(rows: list[list[torch.Tensor]], fixed: list[list[torch.Tensor] | None], want_entropy: bool) -> Any:
    """:mod:`lib_ctxrep.kernels` when the inner loop of every flow of a block (rows, memory rows) runs on the device,
    else None: where the kernels run, for groups of at most ``kernels.FLOW_MAX_ROWS`` rows, unless the entropies are
    wanted (they are computed on the host) or ``CTXREP_INNER_LOOP=host``."""
    if want_entropy or os.environ.get("CTXREP_INNER_LOOP", "").lower() == "host":
        return None
    module = None
    for r, m in zip(rows, fixed, strict=True):
        module = _kernels_for(r, m)
        if module is None or r[0].shape[0] + (m[0].shape[0] if m is not None else 0) > module.FLOW_MAX_ROWS:
            return None
    return module


def inner_loop(rows: torch.Tensor, memory_rows: int = 0) -> str:
    """Where the inner loop runs for a group of ``rows`` [B, ...] (plus ``memory_rows`` fixed rows): "device" (the
    Triton kernel of :func:`lib_ctxrep.kernels.flow`), else the host loop, "numba" or "numpy" (:func:`host_loop`)."""
    flat = [_rows_2d(rows)]
    fixed = [flat[0][:1].expand(memory_rows, -1)] if memory_rows else None
    return "device" if _device_loop([flat], [fixed], False) is not None else host_loop()


def _kernels_failed(error: Exception) -> None:
    """A kernel could not run (e.g. this Triton cannot compile it): the torch versions run from now on, said once."""
    _KERNELS[:] = [None]
    logging.getLogger("lib_ctxrep").warning(
        "[ctxrep] the Triton kernels failed (%s: %s); the torch versions run instead", type(error).__name__, error
    )


def combine_rows(
    delta: torch.Tensor,
    current: torch.Tensor,
    memory: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    ok: torch.Tensor | None = None,
) -> torch.Tensor:
    """New current rows = ``current`` + ``delta`` @ [``current``; ``memory``] for [B, R] update coefficients (or a
    larger tile of :func:`lib_ctxrep.kernels.flow`, zero outside [B, R]) and rows [B, P] (and [Mm, P]): one product
    with float32 (or float64) accumulation, and a second for the memory rows (no concatenated copy of the rows).

    ``delta`` (= T - [I 0], see :func:`coefficient_flow`) is rounded to the stream dtype: for fp16/bf16 that is a
    relative 2^-8 of the *update*, below the rounding of the output itself to the stream dtype. Where the Triton
    kernels run (:mod:`lib_ctxrep.kernels`), the rows are read once and written once and ``delta`` stays float32.
    ``out``: where the new rows go (may be ``current`` itself); a new tensor when None. ``ok``: a device flag of the
    device inner loop; where it is 0 the rows stay as they are.
    """
    kernels = _kernels_for([current], None if memory is None else [memory])
    if kernels is not None:
        try:
            return kernels.combine_rows(delta, current, memory, out=out, ok=ok)
        except Exception as error:  # noqa: BLE001 (a compile error must not cost the user's generation)
            _kernels_failed(error)
    b = current.shape[0]
    delta = delta[:b, : b + (0 if memory is None else memory.shape[0])].to(current.dtype)
    new = torch.addmm(current, delta[:, :b], current)
    if memory is not None:
        new.addmm_(delta[:, b:], memory)
    if ok is not None:
        new = torch.where(ok.bool(), new, current)
    return new if out is None else out.copy_(new)


def _eigh_function():
    """numpy's batched symmetric eigensolver without the per-call checks of ``numpy.linalg.eigh`` (which cost more
    than the 4 x 4 solve itself); ``numpy.linalg.eigh`` where numpy lays out its internals otherwise."""
    try:
        from numpy.linalg import _umath_linalg

        solve = _umath_linalg.eigh_lo
        lam, vecs = solve(np.array([[2.0, 1.0], [1.0, 2.0]]))
        if np.allclose(lam, [1.0, 3.0]) and np.allclose(np.abs(vecs), np.sqrt(0.5)):
            return solve
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    return np.linalg.eigh


_eigh = _eigh_function()


_HOST_LOOP: list = []  # ["numba", compiled flow] or ["numpy"], chosen on first use


def host_loop() -> str:
    """Which inner loop runs on the host: "numba" (:mod:`lib_ctxrep.hostloop`, where numba is installed; about ten
    times faster) or "numpy". ``CTXREP_HOST_LOOP=numpy`` forces numpy. Chosen once per process, so that a job's
    batches all run the same arithmetic; the first call loads the compiled loop from numba's cache (about a second;
    compiling it, once per installation, takes several)."""
    if os.environ.get("CTXREP_HOST_LOOP", "").lower() == "numpy":
        return "numpy"
    if not _HOST_LOOP:
        try:
            from . import hostloop

            eye = np.eye(2)[None]
            hostloop.flow(eye, 2, 1, 0.1, False, NULL_EIG, 0.0)  # compile (or load) both variants now
            hostloop.flow(eye, 2, 1, 0.1, True, NULL_EIG, 0.0)
            _HOST_LOOP.extend(["numba", hostloop.flow])
        except Exception as error:  # noqa: BLE001 (numba missing, or unable to compile here: numpy runs instead)
            logging.getLogger("lib_ctxrep").info(
                "[ctxrep] the compiled inner loop is not used (%s); numpy runs", error
            )
            _HOST_LOOP.append("numpy")
    return _HOST_LOOP[0]


def coefficient_flow(
    gram: np.ndarray,
    n_current: int,
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    want_entropy: bool = False,
) -> FlowResult:
    """Run M Euler steps of dH/dc on the coefficients of the first ``n_current`` rows (host, float64).

    ``gram`` is the R x R Gram matrix of [current rows; fixed memory rows]. Exactly one of ``eta`` (raw, the paper's
    parameterisation) and ``strength`` (angular: eta_i = strength * ||c_i||^2) must be given.
    Returns the [B, R] matrix T with new current rows = T @ [current rows; memory rows].
    """
    return coefficient_flows(
        np.asarray(gram, dtype=np.float64)[None],
        n_current,
        iterations,
        eta=eta,
        strength=strength,
        want_entropy=want_entropy,
    )[0]


def coefficient_flows(
    grams: np.ndarray,
    n_current: int,
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    want_entropy: bool = False,
) -> list[FlowResult]:
    """:func:`coefficient_flow` for a stack of J groups of the same size at once (``grams`` [J, R, R]): every inner
    step is one batched eigendecomposition and a few batched products for all groups together."""
    if (eta is None) == (strength is None):
        raise ValueError("coefficient_flow: give exactly one of eta or strength")
    grams = np.asarray(grams, dtype=np.float64)
    count, r = grams.shape[0], grams.shape[-1]
    b = n_current
    finite = np.isfinite(grams).all(axis=(1, 2))
    diag = np.diagonal(grams, axis1=1, axis2=2)
    # A zero row has no direction: there is nothing to repel from or towards, so such a group stays as it is.
    movable = finite & (diag > 0.0).all(axis=1)
    results = [FlowResult(np.eye(b, r), math.nan, math.nan, bool(ok)) for ok in finite]
    if not movable.any():
        return results
    live = grams[movable]
    step = (eta if eta is not None else strength) / iterations
    compiled = host_loop() == "numba"
    with np.errstate(all="ignore"):  # a failed eigensolve gives NaN, caught by the finiteness check below
        if compiled:
            coef, kernel = _HOST_LOOP[1](live, b, iterations, step, eta is not None, NULL_EIG * r, 1.0 - math.log(r))
        else:
            coef, kernel = _flow(live if count > 1 else live[0], b, iterations, step, raw_eta=eta is not None)
    coef, kernel = coef.reshape(-1, b, r), kernel.reshape(-1, r, r)
    for j, index in enumerate(np.flatnonzero(movable)):
        if not (np.isfinite(coef[j]).all() and np.isfinite(kernel[j]).all()):
            results[index] = FlowResult(np.eye(b, r), math.nan, math.nan, False)
            continue
        before = after = math.nan
        if want_entropy:
            before = entropy_and_gradient(_cosine_from_gram(live[j, :b, :b]))[0]
            after = entropy_and_gradient(_cosine_from_gram(kernel[j, :b, :b]))[0]
        results[index] = FlowResult(coef[j], before, after, True)
    return results


def _flow(gram: np.ndarray, b: int, iterations: int, step: float, *, raw_eta: bool) -> tuple[np.ndarray, np.ndarray]:
    """The M Euler steps for ``gram`` ([R, R], or a stack [J, R, R]) of rows with positive norms: the coefficients
    [..., b, R] of the new current rows and the final cosine kernel [..., R, R].

    The steps run on the rows' directions: with u_i = c_i / n_i, K = U U^T and g = log(K) as a function of the kernel
    (its eigendecomposition, null directions dropped), the step is u_i += a_i (sum_k g_ik u_k - s_i u_i) with
    s_i = sum_k g_ik K_ik (which makes it orthogonal to u_i), a_i = -2 step / R for the angular strength and
    -2 step / (R n_i^2) for a raw eta. Each step is then renormalised, and the norms n_i are carried along.
    """
    r = gram.shape[-1]
    lead = gram.shape[:-2]
    n0 = np.sqrt(gram.reshape(*lead, -1)[..., :: r + 1])
    kernel = gram / (n0[..., :, None] * n0[..., None, :])
    basis = np.broadcast_to(np.eye(r), gram.shape).copy()  # unit rows now, over the unit rows at the start
    norms = n0.copy()
    update = basis.copy()  # rows >= b (memory) stay the identity
    moving = update[..., :b, :]
    update_diag = update.reshape(*lead, -1)[..., : b * (r + 1) : r + 1]
    update_t = np.swapaxes(update, -1, -2)
    null, scale = NULL_EIG * r, -2.0 * step / r
    for _ in range(iterations):
        lam, vecs = _eigh(kernel)
        smallest = lam[..., 0]
        if (smallest if smallest.ndim == 0 else smallest.min()) > null:
            # dH/dK = -(log(K/R) + I) / R: the constant part adds nothing to a step orthogonal to u_i, so log(K) does
            weights = np.log(lam)
        else:
            weights = gradient_weights(lam / r, drop_null=True)
        if not raw_eta:
            weights *= scale
        np.matmul(vecs[..., :b, :] * weights[..., None, :], np.swapaxes(vecs, -1, -2), out=moving)
        if raw_eta:
            moving *= (scale / (norms[..., :b] * norms[..., :b]))[..., None]
        update_diag += 1.0 - (moving * kernel[..., :b, :]).sum(-1)
        unnormalised = update @ kernel @ update_t
        inv = 1.0 / np.sqrt(unnormalised.reshape(*lead, -1)[..., :: r + 1])
        column = inv[..., :, None]
        kernel = unnormalised * (column * inv[..., None, :])
        basis = (update @ basis) * column
        norms /= inv
    return norms[..., :b, None] * basis[..., :b, :] / n0[..., None, :], kernel


def _cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    inv = 1.0 / np.sqrt(np.diagonal(gram))
    kernel = gram * inv[:, None] * inv[None, :]
    np.fill_diagonal(kernel, 1.0)
    return kernel


def repel_flows(
    flows: list[Flow],
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    want_entropy: bool = False,
) -> list[tuple[list[torch.Tensor], FlowResult]]:
    """Repel every flow of a hooked block with one device-to-host transfer (:func:`to_host`) for all of them.

    Each flow's rows are repelled within the flow, against its memory rows; groups of the same size share their
    inner loop (:func:`coefficient_flows`). Returns per flow the new parts (same shapes and dtypes; the inputs
    themselves when the update is not finite, with ``result.finite`` False) and the flow result.
    """
    if (eta is None) == (strength is None):
        raise ValueError("repel_flows: give exactly one of eta or strength")
    if not flows:
        return []
    rows = [[_rows_2d(p) for p in f.parts] for f in flows]
    with torch.no_grad():  # the B x B coefficients are constants: no backprop through the kernel's eigenvectors
        fixed = [
            None
            if f.memory is None
            else [_rows_2d(m).to(device=x.device, dtype=x.dtype) for m, x in zip(f.memory, r, strict=True)]
            for f, r in zip(flows, rows, strict=True)
        ]
        kernels = _device_loop(rows, fixed, want_entropy)
        tiles = None
        if kernels is not None:
            try:
                tiles = _solve_on_device(kernels, flows, rows, fixed, iterations, eta, strength)
            except Exception as error:  # noqa: BLE001 (a compile error must not cost the user's generation)
                _kernels_failed(error)
    if tiles is not None:  # from here on rows may be written in place: no second solve on the host
        return _combine_on_device(flows, rows, fixed, tiles)
    with torch.no_grad():
        centred = to_host([centred_gram(r, m) for r, m in zip(rows, fixed, strict=True)])
    grams = [uncentre_gram(c) for c in centred]
    results: list[FlowResult | None] = [None] * len(flows)
    for (_, b), members in _by_size(flows).items():
        solved = coefficient_flows(
            np.stack([grams[i] for i in members]),
            b,
            iterations,
            eta=eta,
            strength=strength,
            want_entropy=want_entropy,
        )
        for i, result in zip(members, solved, strict=True):
            results[i] = result
    deltas = _upload_deltas(flows, results)
    out = []
    for f, r, m, result, delta in zip(flows, rows, fixed, results, deltas, strict=True):
        if delta is None:
            out.append((list(f.parts), result))
            continue
        new = [  # differentiable in the rows (training through a repelled block): the coefficients are constants
            p if k < f.combine_from else combine_rows(delta, x, None if m is None else m[k]).reshape(p.shape)
            for k, (x, p) in enumerate(zip(r, f.parts, strict=True))
        ]
        out.append((new, result))
    return out


def _by_size(flows: list[Flow]) -> dict[tuple[int, int], list[int]]:
    """The flows' indices by group size (rows in the kernel R, moving rows B): each size shares one inner loop."""
    sizes: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(flows):
        b = f.parts[0].shape[0]
        sizes.setdefault((b + (f.memory[0].shape[0] if f.memory is not None else 0), b), []).append(i)
    return sizes


def _solve_on_device(
    kernels: Any,
    flows: list[Flow],
    rows: list[list[torch.Tensor]],
    fixed: list[list[torch.Tensor] | None],
    iterations: int,
    eta: float | None,
    strength: float | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The Gram matrices and the inner loop of every flow on the device (:func:`lib_ctxrep.kernels.flow`, one launch
    per group size), nothing read back: per flow its coefficient tile and the device flag of its finiteness."""
    step = (eta if eta is not None else strength) / iterations
    centred = [centred_gram(r, m) for r, m in zip(rows, fixed, strict=True)]
    tiles: list[Any] = [None] * len(flows)
    for (r, b), members in _by_size(flows).items():
        stack = centred[members[0]][None] if len(members) == 1 else torch.stack([centred[i] for i in members])
        deltas, flags = kernels.flow(stack, b, iterations, step, eta is not None, NULL_EIG * r)
        for k, i in enumerate(members):
            tiles[i] = (deltas[k], flags[k : k + 1])
    return tiles


def _combine_on_device(
    flows: list[Flow],
    rows: list[list[torch.Tensor]],
    fixed: list[list[torch.Tensor] | None],
    tiles: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[list[torch.Tensor], FlowResult]]:
    """The new rows of every flow from its device tile (:func:`combine_rows`; in place where the flow allows it); a
    flow's result carries the device flag of its update's finiteness."""
    out = []
    for f, r, m, (delta, flag) in zip(flows, rows, fixed, tiles, strict=True):
        new = []
        for k, (x, p) in enumerate(zip(r, f.parts, strict=True)):
            if k < f.combine_from:
                new.append(p)
                continue
            in_place = f.in_place and x.data_ptr() == p.data_ptr()  # not a copy made by the reshape
            rows_new = combine_rows(delta, x, None if m is None else m[k], out=x if in_place else None, ok=flag)
            new.append(p if in_place else rows_new.reshape(p.shape))
        out.append((new, FlowResult(None, math.nan, math.nan, True, flag)))
    return out


def _upload_deltas(flows: list[Flow], results: list[FlowResult]) -> list[torch.Tensor | None]:
    """The finite flows' update coefficients T - [I 0] on their devices (float32; float64 for float64 rows), sent in
    one copy."""
    live = [i for i, res in enumerate(results) if res.finite]
    if not live:
        return [None] * len(flows)
    exact = any(flows[i].parts[0].dtype == torch.float64 for i in live)
    host = np.concatenate(
        [(results[i].coefficients - np.eye(*results[i].coefficients.shape)).reshape(-1) for i in live]
    ).astype(np.float64 if exact else np.float32)
    sent = torch.from_numpy(host).to(flows[live[0]].parts[0].device)
    out: list[torch.Tensor | None] = [None] * len(flows)
    start = 0
    for i in live:
        shape = results[i].coefficients.shape
        part = flows[i].parts[0]
        size = shape[0] * shape[1]
        out[i] = sent[start : start + size].reshape(shape).to(device=part.device)
        start += size
    return out


def repel_parts(
    parts: list[torch.Tensor],
    iterations: int,
    *,
    eta: float | None = None,
    strength: float | None = None,
    memory: list[torch.Tensor] | None = None,
    want_entropy: bool = False,
) -> tuple[list[torch.Tensor], FlowResult]:
    """Repel the rows of one group, whose feature vector is the concatenation of ``parts`` (each [B, ...]).

    ``memory``: optional fixed rows, one tensor [Mm, ...] per part, that push the group but do not move.
    Returns the new parts (same shapes and dtypes; the inputs themselves when nothing changes) and the flow result.
    A non-finite update is not applied: the inputs are returned and ``result.finite`` is False; where the inner loop
    ran on the device, the new parts equal the inputs and ``result.flag`` (on the device) reads 0.
    """
    (out,) = repel_flows([Flow(parts, memory)], iterations, eta=eta, strength=strength, want_entropy=want_entropy)
    return out


def _validate_repel_args(features: torch.Tensor, iterations: int) -> None:
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise ValueError(f"repel: features must be a floating-point tensor [B, N, D], got {type(features).__name__}")
    if features.ndim < 3:
        raise ValueError(
            f"repel: features must be [B, N, D] (samples, tokens, width), got shape {tuple(features.shape)}; "
            "for one vector per sample add a token axis: features[:, None]"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"repel: iterations must be an integer >= 1, got {iterations!r}")


def repel(features: torch.Tensor, eta: float, iterations: int) -> torch.Tensor:
    """Contextual repulsion of a batch, exactly the paper's Eq. 2 with raw ``eta`` and M = ``iterations``.

    ``features`` [B, N, D] (any float dtype): each sample's contextual tokens. Returns a tensor of the same shape and
    dtype in which every sample has taken M Euler steps of size eta/M up the gradient of the batch's log Vendi score.
    B = 1 and eta = 0 return ``features`` unchanged. fp16/bf16 are computed in float32/float64 and cast back.
    A non-finite update (e.g. inf in the input) returns ``features`` unchanged.
    """
    _validate_repel_args(features, iterations)
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(
            f"repel: eta must be a finite number >= 0 (a negative eta pulls samples together), got {eta!r}"
        )
    if features.shape[0] < 2 or eta == 0.0:
        return features
    (out,), _ = repel_parts([features], iterations, eta=eta)
    return out


def repel_angular(features: torch.Tensor, strength: float, iterations: int) -> torch.Tensor:
    """Like :func:`repel` with the scale-free strength: eta_i = ``strength`` * ||c_i||^2 at every inner step."""
    _validate_repel_args(features, iterations)
    strength = float(strength)
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"repel_angular: strength must be finite and >= 0, got {strength!r}")
    if features.shape[0] < 2 or strength == 0.0:
        return features
    (out,), _ = repel_parts([features], iterations, strength=strength)
    return out


def eta_for_strength(features: torch.Tensor, strength: float) -> torch.Tensor:
    """The raw per-sample eta_i = strength * ||c_i||^2 that ``strength`` amounts to for ``features`` [B, ...]."""
    return strength * _rows_2d(features).to(torch.float64).pow(2).sum(dim=1)
