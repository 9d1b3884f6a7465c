"""The repulsion's inner loop compiled with numba, for where numba is installed.

The numpy loop (:func:`lib_ctxrep.repulsion._flow`) spends most of an iteration in the overhead of about twenty small
numpy calls and in LAPACK's setup for a 4 x 4 eigenproblem. Here the same steps run as one compiled loop over
plain arrays, with a cyclic Jacobi eigensolver (accurate to the last bits for the small symmetric positive
semi-definite kernels of a group, and without LAPACK's per-call setup). Same inputs and outputs as ``_flow``
for a stack [J, R, R]. Compiled on first use and cached next to this file (or in ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Jacobi sweeps at most; a sweep rotates every off-diagonal pair once, and a few sweeps reach rounding.
_SWEEPS = 60
#: An off-diagonal entry counts as zero below this, or below ``_RELATIVE`` times the geometric mean of its two diagonal
#: entries (the kernel has a unit diagonal): rounding keeps entries between large eigenvalues near 1e-16, which no
#: sweep removes, while entries next to a small eigenvalue must go far below it for log(lambda) to stay accurate.
_TINY = 1e-18
_RELATIVE = 1e-15


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _negligible(a: np.ndarray, p: int, q: int) -> bool:  # pragma: no cover (compiled)
    return abs(a[p, q]) <= max(_TINY, _RELATIVE * math.sqrt(abs(a[p, p] * a[q, q])))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _jacobi(a: np.ndarray, lam: np.ndarray, vecs: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Eigenvalues ``lam`` and eigenvectors (columns of ``vecs``) of the symmetric ``a`` (overwritten)."""
    n = a.shape[0]
    for i in range(n):
        for k in range(n):
            vecs[i, k] = 1.0 if i == k else 0.0
    for _ in range(_SWEEPS):
        done = True
        for p in range(n):
            for q in range(p + 1, n):
                done = done and _negligible(a, p, q)
        if done:
            break
        for p in range(n):
            for q in range(p + 1, n):
                apq = a[p, q]
                if _negligible(a, p, q):
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                if theta < 0.0:
                    t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(n):  # columns p, q: A J
                    akp, akq = a[k, p], a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(n):  # rows p, q: J^T A
                    apk, aqk = a[p, k], a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
                a[p, q] = 0.0
                a[q, p] = 0.0
                for k in range(n):
                    vkp, vkq = vecs[k, p], vecs[k, q]
                    vecs[k, p] = c * vkp - s * vkq
                    vecs[k, q] = s * vkp + c * vkq
    for i in range(n):
        lam[i] = a[i, i]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def flow(
    gram: np.ndarray, b: int, iterations: int, step: float, raw_eta: bool, null: float, shift: float
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover (compiled)
    """The M Euler steps for a stack of Gram matrices ``gram`` [J, R, R] with positive diagonals: the coefficients
    [J, b, R] of the new current rows and the final cosine kernels [J, R, R] (see ``repulsion._flow``)."""
    count, r = gram.shape[0], gram.shape[1]
    coef = np.empty((count, b, r))
    kernels = np.empty((count, r, r))
    scale = -2.0 * step / r
    kernel = np.empty((r, r))
    work = np.empty((r, r))
    vecs = np.empty((r, r))
    lam = np.empty(r)
    weights = np.empty(r)
    update = np.empty((r, r))
    product = np.empty((r, r))
    basis = np.empty((r, r))
    moved = np.empty((r, r))
    n0 = np.empty(r)
    norms = np.empty(r)
    inv = np.empty(r)
    for j in range(count):
        for i in range(r):
            n0[i] = math.sqrt(gram[j, i, i])
            norms[i] = n0[i]
        for i in range(r):
            for k in range(r):
                kernel[i, k] = gram[j, i, k] / (n0[i] * n0[k])
                basis[i, k] = 1.0 if i == k else 0.0
                update[i, k] = 1.0 if i == k else 0.0
        for _ in range(iterations):
            work[:, :] = kernel
            _jacobi(work, lam, vecs)
            smallest = lam.min()
            for i in range(r):
                if smallest > null:
                    weights[i] = math.log(lam[i])
                elif lam[i] > null:
                    weights[i] = math.log(lam[i]) + shift
                else:
                    weights[i] = 0.0
                if not raw_eta:
                    weights[i] *= scale
            for i in range(b):
                factor = scale / (norms[i] * norms[i]) if raw_eta else 1.0
                for k in range(r):
                    total = 0.0
                    for e in range(r):
                        total += vecs[i, e] * weights[e] * vecs[k, e]
                    update[i, k] = total * factor
                radial = 0.0
                for k in range(r):
                    radial += update[i, k] * kernel[i, k]
                update[i, i] += 1.0 - radial
            for i in range(r):  # product = update @ kernel
                for k in range(r):
                    total = 0.0
                    for e in range(r):
                        total += update[i, e] * kernel[e, k]
                    product[i, k] = total
            for i in range(r):  # work = product @ update^T (the new, unnormalised kernel)
                for k in range(r):
                    total = 0.0
                    for e in range(r):
                        total += product[i, e] * update[k, e]
                    work[i, k] = total
            for i in range(r):
                inv[i] = 1.0 / math.sqrt(work[i, i])
            for i in range(r):
                for k in range(r):
                    kernel[i, k] = work[i, k] * inv[i] * inv[k]
                    total = 0.0
                    for e in range(r):
                        total += update[i, e] * basis[e, k]
                    moved[i, k] = total * inv[i]
            basis[:, :] = moved
            for i in range(r):
                norms[i] /= inv[i]
        for i in range(b):
            for k in range(r):
                coef[j, i, k] = norms[i] * basis[i, k] / n0[k]
        kernels[j] = kernel
    return coef, kernels
