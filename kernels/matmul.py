"""Matrix products on Numba's threads, each thread running BLAS on one core.

    out = a @ b        a: [M, K]   b: [K, N]   out: [M, N]   (float32 or float64, NumPy)

Why not let BLAS thread the product itself? OpenBLAS's worker threads *spin* after every threaded
product, for 2²⁸ cycles (~0.1 s on this project's machine; ``OPENBLAS_THREAD_TIMEOUT``, read only
when the library loads): measured, a process whose only work was one 2-thread product used 100 ms
of CPU while it slept the next 300 ms. An encoder layer runs a product every few milliseconds, so
the spinning thread held a core all through the fused kernels in between (attention: 24 ms a layer
at 64 × 64 instead of 12–17 alone) and through whatever ran next (the benchmark's PyTorch turn).
Numba's threads sleep as soon as a loop ends (kernels/threads.py), so the products are split here
over them instead, and BLAS runs on one thread in each (``threads.single_threaded_blas``): one pool
of threads for the whole model, none left spinning.

Two ways to split, each leaving BLAS whole products to do:

- by rows of ``out`` (a C-contiguous: x Wᵀ, dy W):   out[r0:r1] = a[r0:r1] @ b (+ bias)
- by the inner dimension (a = dyᵀ, F-contiguous: the weight gradient dyᵀ x, whose M is small and
  K = the tokens large):                               out = Σ_parts a[:, k0:k1] @ b[k0:k1]
  (each part into its own buffer, summed after: the sum's order differs from one BLAS call's, to
  rounding).

A product is split when it has at least ``SPLIT_FROM`` multiply-adds, or when one operand has at
least ``SPLIT_OPERAND_FROM`` elements (512 KB in float32): a weight that size is read from memory
(a batch-1 forward of all-MiniLM-L6-v2 reads its 42 MB of weights once, and none stays in cache),
and two cores read it faster than one. Measured, interleaved: a 1 × 16 forward 8.2 → 6.6 ms and a
1 × 1 forward 4.5 → 3.2 ms once the 384 × 384 products (16 × 384 × 384: 2.4M multiply-adds, under
``SPLIT_FROM``) were split too. Smaller products (the lessons' tiny models) run as one
``np.matmul``: waking a second thread would cost more than it saves. The readable twin is
``a @ b``; tests/test_matmul.py proves the two equal.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from tinybert_kernels import threads

SPLIT_FROM = 1 << 22      # M·K·N multiply-adds at least this many: split over the threads
SPLIT_OPERAND_FROM = 1 << 17   # or an operand of at least this many elements (a weight read from memory)


@njit(cache=True, inline="always")
def _block(part, n, n_parts):
    """The range [lo, hi) of block ``part`` when n items are cut into n_parts blocks."""
    step = (n + n_parts - 1) // n_parts
    lo = min(part * step, n)
    return lo, min(lo + step, n)


@njit(cache=True, parallel=True)
def _split_rows(a, b, bias, out, n_parts):
    """out[r0:r1] = a[r0:r1] @ b (+ bias on every row, unless bias is empty) for n_parts blocks of
    rows, in parallel.  a: C-contiguous."""
    for part in prange(n_parts):
        r0, r1 = _block(part, a.shape[0], n_parts)
        if r0 < r1:
            np.dot(a[r0:r1], b, out[r0:r1])
            if bias.size:                                # each thread adds the bias to its own rows
                for r in range(r0, r1):
                    out[r] += bias


@njit(cache=True, parallel=True)
def _split_inner(a_t, b, partial, n_parts):
    """partial[p] = a[:, k0:k1] @ b[k0:k1] for n_parts blocks of the inner dimension, a = a_tᵀ
    (a_t: C-contiguous [K, M], so each block a_t[k0:k1]ᵀ is F-contiguous, as BLAS reads it)."""
    for part in prange(n_parts):
        k0, k1 = _block(part, a_t.shape[0], n_parts)
        if k0 < k1:
            np.dot(a_t[k0:k1].T, b[k0:k1], partial[part])
        else:
            partial[part][:] = 0


@njit(cache=True, parallel=True)
def _sum_parts(partial, out, accumulate):
    """out = partial[0] + partial[1] + … (accumulate: out += that sum), rows in parallel: the same
    sums, in the same order, as ``np.sum(partial, axis=0)`` and then ``out += ...``."""
    n_parts, m, n = partial.shape
    for r in prange(m):
        row = out[r]
        for c in range(n):
            total = partial[0, r, c]
            for p in range(1, n_parts):
                total += partial[p, r, c]
            row[c] = row[c] + total if accumulate else total


def _splittable(a, b):
    return (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == b.ndim == 2
            and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and (b.flags.c_contiguous or b.flags.f_contiguous))


def _split_kind(a, b, bias):
    """"rows", "inner" or None (one plain product): how ``matmul`` shares a @ b among the threads."""
    m, k = a.shape
    n = b.shape[1]
    parts = numba.get_num_threads()
    if (parts < 2 or (m * k * n < SPLIT_FROM and max(a.size, b.size) < SPLIT_OPERAND_FROM)
            or not _splittable(a, b) or (bias is not None and bias.dtype != a.dtype)):
        return None
    if a.flags.c_contiguous and m >= parts:
        return "rows"
    if a.flags.f_contiguous and k >= parts and bias is None:
        return "inner"
    return None


def matmul(a, b, out=None, bias=None, accumulate=False):
    """a @ b (+ bias [N], added to every row), split over Numba's threads when it is large enough
    (see the module docstring), into ``out`` when given (any layout NumPy's matmul accepts; a
    strided one gets the result copied). Split by rows, each thread adds the bias to its rows while
    they are fresh, instead of one more pass over the whole output.

    accumulate=True adds the product into ``out`` (required) instead, out += a @ b, as a weight's
    gradient is accumulated: split by the inner dimension, the threads' partial products are summed
    straight into ``out``, in parallel (the same sums as ``out += a @ b`` with the partial products
    summed first), instead of a serial sum and one more pass over out."""
    if accumulate and (out is None or bias is not None):
        raise ValueError("accumulate=True adds a @ b into out: out is required, and bias is not taken")
    split = _split_kind(a, b, bias)
    if split is None:
        with threads.single_threaded_blas():
            if accumulate:
                out += np.matmul(a, b)
                return out
            result = np.matmul(a, b, out=out)
        if bias is not None:
            result += bias
        return result
    m, n, parts = a.shape[0], b.shape[1], numba.get_num_threads()
    fits = out is not None and out.flags.c_contiguous and out.dtype == a.dtype
    threads.start_numba_pool()
    with threads.single_threaded_blas():
        if split == "inner":
            partial = np.empty((parts, m, n), dtype=a.dtype)
            _split_inner(a.T, b, partial, parts)
            result = out if fits else np.empty((m, n), dtype=a.dtype)
            _sum_parts(partial, result, accumulate and fits)
        else:
            result = out if fits and not accumulate else np.empty((m, n), dtype=a.dtype)
            bias = np.empty(0, dtype=a.dtype) if bias is None else np.ascontiguousarray(bias)
            _split_rows(a, b, bias, result, parts)
    if out is None or result is out:
        return result
    if accumulate:
        out += result
    else:
        out[...] = result
    return out

__all__ = ["matmul", "SPLIT_FROM", "SPLIT_OPERAND_FROM"]
