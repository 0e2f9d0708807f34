"""Fused attention on the CPU with Numba: FlashAttention-2's algorithm, tile by tile.

Read it beside ``attention_numpy.py``: the formulas are the same, with the same names; the only
change is that the scores S are never built for the whole [Tq, Tk] matrix. Instead each query block
walks over the key blocks and keeps, per query row, a running max ``m``, a running sum ``l`` and an
unnormalized accumulator ``acc`` (the *online softmax*)::

    for each key block j:
        S     = Q_i K_jᵀ · scale                    [BQ, BK]   (masked keys → -inf)
        m_new = max(m, rowmax(S))
        P     = exp(S − m_new)                      exp(-inf) = 0 exactly
        alpha = exp(m − m_new)                      rescales what was summed under the old max
        l     = alpha · l + rowsum(P)
        acc   = alpha · acc + P V_j
        m     = m_new
    out = acc / l,   lse = m + log(l)               (a row with no kept key: out = 0, lse = -inf)

Attention dropout happens inside the tiles, as in FlashAttention: after ``l`` has summed P, the tile
is multiplied by M/(1 − p) before ``P V_j``, where M is read from Philox at the counters
(j // 4, i, h, b) of each element (``kernels/philox.py``), so the backward regenerates M tile by
tile instead of storing it, and the NumPy reference builds the very same mask.

The backward recomputes P = exp(S − lse) block by block from q, k and the saved lse, with
D = rowsum(dout ∘ out) and dS = P ∘ (dP − D), exactly as the reference does::

    dV_j += P̃ᵀ dZ_i,   dP = (dZ_i V_jᵀ) ∘ M/(1−p),   dS = P ∘ (dP − D_i),
    dK_j += dSᵀ Q_i · scale,   dQ_i += dS K_j · scale

NaN and infinity propagate as in the reference: ``_exp_tile`` gives NaN for a NaN score (and +inf
above its range), so a row holding a NaN gets a NaN ``l``, hence NaN ``out`` and ``lse``; only a
row whose ``l`` is exactly 0 (no kept key) takes the out = 0, lse = -inf branch. dS is exactly 0
at masked scores, and masked keys get dK = dV = 0.

Parallelism. The forward runs ``prange`` over (batch row, group of heads, query block): every task
owns its rows of ``out`` and ``lse``. The backward runs ``prange`` over (batch row, group of heads):
every task owns the whole dQ, dK and dV of its heads, so no two threads ever write the same
gradient and no atomics are needed. A group is all H heads when the batch gives each thread a few
tasks, else fewer (``_heads_per_task``: one long sequence still keeps every thread busy). Tasks are
handed out one at a time (``parallel_chunksize(1)``), since padded sequences and the causal
triangle make some tasks shorter than others. Below ``SERIAL_BELOW`` (B·H·Tq·Tk·D; a batch of one
short sentence) the same tasks run one after the other, without a parallel launch
(``kernels/threads.py`` says why the pools must not fight).

Memory order. The attention layer's Q, K, V are the three parts of one [B, T, 3, H, D] array (its
[Q | K | V] product), so one head's rows lie 3·H·D apart: read head by head, every 128-byte row is
a separate trip to memory that no prefetcher foresees (9.6 µs of a 25 µs head at T = 64, D = 32).
So a task first reads its heads' rows of Q, K, V into contiguous [heads, rows, D] buffers in the
order they lie in memory (``_load_heads``: position by position, all heads of a position at once)
and writes its results back the same way (``_store_heads``); the gradients of [Q | K | V] are
written as one [B, T, 3, H, D] array too, which the layer takes as [dQ | dK | dV] without a copy.
Memory beyond inputs and outputs is the task's heads' rows and a few [BQ, BK] tiles, never [Tq, Tk].

Speed. The three tile products are ``np.dot`` calls (BLAS sgemm/dgemm, which Numba reaches through
SciPy); BLAS is pinned to one thread while the kernel runs (``threads.single_threaded_blas``), since the kernel already
uses every core and OpenBLAS threads inside ``prange`` would fight for them. ``exp`` is the other
cost: ``_exp_tile`` is a plain polynomial exp that LLVM vectorizes (no SVML needed), and it returns
exactly 0 for -inf. Key blocks with no kept key (padding, or above the causal diagonal) are skipped;
``attention_forward_tiles`` runs the same tasks and returns the kernel's own record of which tiles it
computed, masked inside, or skipped, and how many scores it held in each.
Kernels compile with ``cache=True``, once per dtype (float32, float64) and input layout.

Shapes: q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool (True = key
kept) or None; lse ``[B, H, Tq]``. q, k, v, out and dout may be views: the part of a C-contiguous
[B, T, G, H, D] array seen as [B, H, T, D] (``xp.head_views_of``: the layer's projections) is read
as it lies; a C-contiguous [B, H, T, D] array is read as is; anything else is copied first. out,
dq, dk and dv are returned as [B, H, T, D] views of [B, T, H, D] memory ([B, T, 3, H, D] for the
gradients of one [Q | K | V] array).
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from tinybert_kernels import philox, threads
from tinybert_kernels.philox import philox4x32_jit
from tinybert_kernels.xp import head_views_of

try:  # Numba's np.dot calls BLAS through SciPy; without SciPy the kernels cannot compile.
    import scipy.linalg.cython_blas  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the numba attention backend needs SciPy (Numba calls BLAS through it): pip install scipy"
    ) from exc

BLOCK_Q = 128   # query rows per tile
BLOCK_K = 64    # keys per tile

# What ``attention_forward_tiles`` records for a (query block, key block) tile of the forward.
TILE_NOT_VISITED = 0   # never reached: causal, every key after every query of the block (the loop stops)
TILE_PADDING = 1       # skipped: every key of the block is padding
TILE_MASKED = 2        # computed, with some scores masked to -inf inside (padding or the causal edge)
TILE_FULL = 3          # computed, no mask needed

# Fast-math without 'nnan'/'ninf': the kernels rely on -inf for masked scores.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}


# ---------------------------------------------------------------------------------------------
# exp, written so that LLVM vectorizes it
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _exp_constants(dtype):
    """Constants of ``_exp_tile`` in the working dtype (float32 or float64); one array per dtype, made
    once (the kernels only read it).

    exp(x) = 2ⁿ · exp(r) with n = round(x / ln 2) and r = x − n·ln 2 (ln 2 split into a high part
    with trailing zero bits and a low part, Cody–Waite, so n·ln2_hi is exact); exp(r) on
    |r| ≤ ln2/2 by its Taylor polynomial to degree 13 (truncation error < 1e-17, enough for
    float64; float32 would need only degree 7, but one branch-free loop vectorizes best); 2ⁿ is
    added into the exponent bits. Below ``x_min`` the result is 0 (e^-80 ≈ 2e-35 in float32, e^-700
    in float64): that gives exactly 0 for -inf and keeps n in the normal exponent range. Above
    ``x_max`` (88, 709: within 1 of overflow) it is +inf, and NaN stays NaN.
    """
    if np.dtype(dtype) == np.float32:
        ln2_hi, ln2_lo, x_min, x_max, mantissa_bits = 0.693359375, -2.12194440e-4, -80.0, 88.0, 23
    else:
        ln2_hi, ln2_lo, x_min, x_max, mantissa_bits = (6.93147180369123816490e-01, 1.90821492927058770002e-10,
                                                       -700.0, 709.0, 52)
    taylor = [1.0 / math.factorial(i) for i in range(14)]   # c_i = 1/i!
    values = [1.0 / math.log(2.0), ln2_hi, ln2_lo, x_min, float(2 ** mantissa_bits), 0.5]
    return np.array(values + taylor + [x_max, math.inf], dtype=dtype)


@njit(cache=True, fastmath={"contract"})   # no 'reassoc': it would undo the Cody–Waite split
def _exp_tile(S, shift, P, P_bits, n_bits, consts):
    """P[i, j] = exp(S[i, j] − shift[i]) for a tile, exactly 0 where S is -inf.  S, P: [n, m].

    NaN in S or in shift gives NaN (except where S is -inf: a masked entry stays 0); an argument
    above ``x_max`` gives +inf.

    ``P_bits`` is P's buffer seen as integers (int32 for float32, int64 for float64) and ``n_bits``
    a scratch of the same integer type; both are flat, of length ≥ n·m. The loops are written
    without calls or branches so that LLVM turns them into SIMD code.
    """
    log2e = consts[0]
    ln2_hi = consts[1]
    ln2_lo = consts[2]
    x_min = consts[3]
    two_pow_mantissa = consts[4]
    half = consts[5]                   # constants come in the tile's dtype: a Python 0.5 would
    zero = half - half                 # promote float32 arithmetic to float64 (so would `half * 0`)
    c0, c1, c2, c3, c4, c5, c6 = consts[6], consts[7], consts[8], consts[9], consts[10], consts[11], consts[12]
    c7, c8, c9, c10, c11, c12, c13 = consts[13], consts[14], consts[15], consts[16], consts[17], consts[18], consts[19]
    x_max = consts[20]
    inf = consts[21]
    n_rows, n_cols = S.shape
    for i in range(n_rows):
        S_row = S[i]
        P_row = P[i]
        n_row = n_bits[i * n_cols: (i + 1) * n_cols]
        P_bits_row = P_bits[i * n_cols: (i + 1) * n_cols]
        shift_i = shift[i]
        for j in range(n_cols):
            s = S_row[j]
            x = s - shift_i
            kept = (x > x_min) & (x <= x_max)     # False for -inf (masked), underflow, overflow, NaN
            # where not kept: 0 for a masked score or an underflow, else x·inf (+inf, or NaN for NaN)
            other = zero if (s == -inf) | (x <= x_min) else x * inf
            x = x if kept else zero
            n = np.floor(x * log2e + half)        # x = n·ln2 + r
            r = (x - n * ln2_hi) - n * ln2_lo
            p = c13 * r + c12                     # Horner: exp(r) ≈ Σ_i r^i / i!
            p = p * r + c11
            p = p * r + c10
            p = p * r + c9
            p = p * r + c8
            p = p * r + c7
            p = p * r + c6
            p = p * r + c5
            p = p * r + c4
            p = p * r + c3
            p = p * r + c2
            p = p * r + c1
            p = p * r + c0
            P_row[j] = p if kept else other
            n_row[j] = n * two_pow_mantissa if kept else zero   # n, shifted into the exponent field
        for j in range(n_cols):
            P_bits_row[j] += n_row[j]                            # p · 2ⁿ


@njit(cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _row_max(S, m_old, m_new):
    """m_new[i] = max(m_old[i], max_j S[i, j]).  ('nnan' lets LLVM vectorize the max; -inf stays.)"""
    n_rows, n_cols = S.shape
    for i in range(n_rows):
        S_row = S[i]
        mx = m_old[i]
        for j in range(n_cols):
            mx = max(mx, S_row[j])
        m_new[i] = mx


@njit(cache=True, fastmath=_FASTMATH)
def _mask_tile(S, keep_row, i0, j0, causal_offset, causal):
    """Set S[ii, jj] = -inf where key j0+jj is padding or lies after query i0+ii's causal limit."""
    n_rows, n_cols = S.shape
    for ii in range(n_rows):
        last_key = i0 + ii + causal_offset            # causal: query i sees keys j <= i + (Tk − Tq)
        for jj in range(n_cols):
            if not keep_row[j0 + jj] or (causal and j0 + jj > last_key):
                S[ii, jj] = -np.inf


@njit(cache=True)
def _tile_needs_mask(kept_in_block, kb, n_keys, i0, j1, causal_offset, causal):
    """True when some (query, key) pair of the tile is masked: a padded key, or the causal edge."""
    if kept_in_block[kb] != n_keys:
        return True
    return causal and j1 - 1 > i0 + causal_offset


# ---------------------------------------------------------------------------------------------
# a batch row's heads, in and out in memory order
# ---------------------------------------------------------------------------------------------

def _load_heads(x, g, b, h0, i0, dst, scale):
    """dst[hh, ii, :] = x[b, h0 + hh, i0 + ii, :] · scale for the heads and rows ``dst`` [nh, n, D] holds.

    x is what ``_heads_source`` gave: a C-contiguous [B, T, G, H, D] array read at its part g (the
    layer's [Q | K | V] product, g = 0, 1, 2) or a C-contiguous [B, H, T, D] array (g = 0). Either
    way x is read in the order it lies in memory, so the reads stream; the variant is chosen at
    compile time from x's number of dimensions (``_load_heads_overload``)."""
    raise NotImplementedError("_load_heads is compiled by Numba only")


@overload(_load_heads)
def _load_heads_overload(x, g, b, h0, i0, dst, scale):
    if x.ndim == 5:
        def from_bt_gh_d(x, g, b, h0, i0, dst, scale):      # a row of memory: one position, every head
            nh, n, Dh = dst.shape
            for ii in range(n):
                for hh in range(nh):
                    src = x[b, i0 + ii, g, h0 + hh]
                    row = dst[hh, ii]
                    for d in range(Dh):
                        row[d] = src[d] * scale
        return from_bt_gh_d

    def from_bhtd(x, g, b, h0, i0, dst, scale):             # a row of memory: one head's position
        nh, n, Dh = dst.shape
        for hh in range(nh):
            for ii in range(n):
                src = x[b, h0 + hh, i0 + ii]
                row = dst[hh, ii]
                for d in range(Dh):
                    row[d] = src[d] * scale
    return from_bhtd


def _all_rows(x, g, b, h0, buf, one):
    """Rows 0 … T−1 of heads h0 … h0 + nh − 1 of batch row b as a contiguous [nh, T, D] array: the
    view x[b, h0 : h0 + nh] itself when x is a C-contiguous [B, H, T, D] array, else ``buf`` [nh, T, D]
    filled by ``_load_heads`` (x a [B, T, G, H, D] array; ``one``: 1 in its dtype, the scale). Chosen
    at compile time (``_all_rows_overload``)."""
    raise NotImplementedError("_all_rows is compiled by Numba only")


@overload(_all_rows)
def _all_rows_overload(x, g, b, h0, buf, one):
    if x.ndim == 5:
        def load(x, g, b, h0, buf, one):
            _load_heads(x, g, b, h0, 0, buf, one)
            return buf
        return load

    def view(x, g, b, h0, buf, one):
        return x[b, h0:h0 + buf.shape[0]]
    return view


@njit(cache=True)
def _store_heads(x, g, b, h0, i0, src):
    """x[b, i0 + ii, g, h0 + hh, :] = src[hh, ii, :]: the inverse of ``_load_heads`` for a
    [B, T, G, H, D] output, written in memory order.  src: [nh, n, D]."""
    nh, n, Dh = src.shape
    for ii in range(n):
        for hh in range(nh):
            row = x[b, i0 + ii, g, h0 + hh]
            part = src[hh, ii]
            for d in range(Dh):
                row[d] = part[d]


@njit(cache=True)
def _dropout_tile(drop, words, key, b, h, i0, j0, threshold, keep_scale):
    """drop[ii, jj] = 1/(1−p) where element (b, h, i0+ii, j0+jj) is kept, else 0.  drop: [n, m].

    The word of element (b, h, i, j) is word j mod 4 of Philox4x32-10 at the counter
    (j // 4, i, h, b₀ + b) under ``key`` = (k0, k1, b₀) (see kernels/philox.py; b₀ is the batch
    offset of a data-parallel rank's rows, 0 in one process); j0 is a multiple of 4.
    ``words``: uint64 scratch of length ≥ m rounded up to 4.
    """
    n_rows, n_cols = drop.shape
    zero = keep_scale - keep_scale
    c0_first = np.uint64(j0 // 4)
    c2 = np.uint64(h)
    c3 = np.uint64(b) + key[2]
    k0 = key[0]
    k1 = key[1]
    n_groups = (n_cols + 3) // 4
    for ii in range(n_rows):
        c1 = np.uint64(i0 + ii)
        for g in range(n_groups):
            r0, r1, r2, r3 = philox4x32_jit(c0_first + np.uint64(g), c1, c2, c3, k0, k1)
            words[4 * g] = r0
            words[4 * g + 1] = r1
            words[4 * g + 2] = r2
            words[4 * g + 3] = r3
        row = drop[ii]
        for jj in range(n_cols):
            row[jj] = keep_scale if words[jj] >= threshold else zero


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

@njit(cache=True)
def _n_tasks(lse, heads_per_task, rows_per_task):
    """Tasks of a kernel: (batch row, group of heads, block of query rows), lse: [B, H, Tq]."""
    B, H, Tq = lse.shape
    return B * ((H + heads_per_task - 1) // heads_per_task) * ((Tq + rows_per_task - 1) // rows_per_task)


@njit(cache=True, parallel=True)
def _forward_kernel(q, gq, k, gk, v, gv, heads_per_task, keep, kept_in_block, causal, scale, consts, int_like,
                    dropout, key, threshold, keep_scale, out, lse, tiles):
    """out, lse ← attention(q, k, v), one task per (batch row, group of heads, query block), in parallel."""
    for task in prange(_n_tasks(lse, heads_per_task, BLOCK_Q)):
        _forward_task(task, q, gq, k, gk, v, gv, heads_per_task, keep, kept_in_block, causal, scale, consts,
                      int_like, dropout, key, threshold, keep_scale, out, lse, tiles)


@njit(cache=True)
def _forward_serial(q, gq, k, gk, v, gv, heads_per_task, keep, kept_in_block, causal, scale, consts, int_like,
                    dropout, key, threshold, keep_scale, out, lse, tiles):
    """The same tasks one after the other (small work: no parallel launch)."""
    for task in range(_n_tasks(lse, heads_per_task, BLOCK_Q)):
        _forward_task(task, q, gq, k, gk, v, gv, heads_per_task, keep, kept_in_block, causal, scale, consts,
                      int_like, dropout, key, threshold, keep_scale, out, lse, tiles)


@njit(cache=True, fastmath=_FASTMATH)
def _forward_task(task, q, gq, k, gk, v, gv, heads_per_task, keep, kept_in_block, causal, scale, consts,
                  int_like, dropout, key, threshold, keep_scale, out, lse, tiles):
    """out, lse of one (batch row, group of heads, query block).

    The task first reads its heads' rows of Q (scaled), K and V into contiguous [heads, rows, D]
    buffers, in memory order (``_load_heads``), runs the online softmax head by head, and writes Z
    back in memory order (``_store_heads``).

    ``tiles`` is None (the fast path: Numba compiles the ``tiles is not None`` branches away) or an
    int64 [B, H, n_q_blocks, n_k_blocks, 2] record of zeros, in which the task writes, for every key
    block it visits, what it did (``TILE_PADDING``, ``TILE_MASKED``, ``TILE_FULL``) and how many
    scores it computed there; blocks it never reached (causal: after the diagonal) stay 0.
    """
    # long because: the online softmax of one task is one loop over key blocks, kept whole to read
    B, H, Tq = lse.shape
    Tk = keep.shape[1]
    Dh = out.shape[4]
    n_groups = (H + heads_per_task - 1) // heads_per_task
    n_q_blocks = (Tq + BLOCK_Q - 1) // BLOCK_Q
    n_k_blocks = (Tk + BLOCK_K - 1) // BLOCK_K
    causal_offset = Tk - Tq
    b = task // (n_groups * n_q_blocks)
    h0 = (task // n_q_blocks) % n_groups * heads_per_task
    nh = min(heads_per_task, H - h0)
    qb = task % n_q_blocks
    i0 = qb * BLOCK_Q
    i1 = min(i0 + BLOCK_Q, Tq)
    nq = i1 - i0
    one = consts[6]                                   # 1 in the working dtype
    Q_s = np.empty((nh, nq, Dh), dtype=out.dtype)     # Q_i · scale, the scale folded into Q
    Z_s = np.empty((nh, nq, Dh), dtype=out.dtype)
    _load_heads(q, gq, b, h0, i0, Q_s, scale)
    K_s = _all_rows(k, gk, b, h0, np.empty((nh, Tk, Dh), dtype=out.dtype), one)   # [nh, Tk, D]
    V_s = _all_rows(v, gv, b, h0, np.empty((nh, Tk, Dh), dtype=out.dtype), one)
    m = np.empty(nq, dtype=out.dtype)                 # running row max
    l = np.empty(nq, dtype=out.dtype)                 # running row sum of exp(S − m)
    m_new = np.empty(nq, dtype=out.dtype)
    m_safe = np.empty(nq, dtype=out.dtype)
    S_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=out.dtype)
    P_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=out.dtype)
    P_bits = P_buf.view(int_like.dtype)
    n_bits = np.empty(BLOCK_Q * BLOCK_K, dtype=int_like.dtype)
    drop_buf = np.empty(BLOCK_Q * BLOCK_K if dropout else 0, dtype=out.dtype)
    words = np.empty(BLOCK_K if dropout else 0, dtype=np.uint64)
    PV = np.empty((nq, Dh), dtype=out.dtype)
    for hh in range(nh):
        h = h0 + hh
        Q_i = Q_s[hh]                                 # [nq, D]
        acc = Z_s[hh]                                 # running Σ exp(S − m) V, then Z
        m[:] = -np.inf
        l[:] = 0.0
        acc[:] = 0.0
        for kb in range(n_k_blocks):
            j0 = kb * BLOCK_K
            j1 = min(j0 + BLOCK_K, Tk)
            nk = j1 - j0
            if kept_in_block[b, kb] == 0:
                if tiles is not None:
                    tiles[b, h, qb, kb, 0] = TILE_PADDING
                continue                               # every key of the block is padding
            if causal and j0 > i1 - 1 + causal_offset:
                break                                  # this and later blocks are in the future
            S = S_buf[: nq * nk].reshape((nq, nk))
            P = P_buf[: nq * nk].reshape((nq, nk))
            K_j = K_s[hh, j0:j1]
            V_j = V_s[hh, j0:j1]
            np.dot(Q_i, K_j.T, S)                      # S = Q_i K_jᵀ · scale
            needs_mask = _tile_needs_mask(kept_in_block[b], kb, nk, i0, j1, causal_offset, causal)
            if needs_mask:
                _mask_tile(S, keep[b], i0, j0, causal_offset, causal)
            if tiles is not None:
                tiles[b, h, qb, kb, 0] = TILE_MASKED if needs_mask else TILE_FULL
                tiles[b, h, qb, kb, 1] = S.size        # the scores held now: this tile, no more
            _row_max(S, m, m_new)                      # m_new = max(m, rowmax(S))
            for ii in range(nq):
                m_safe[ii] = m_new[ii] if m_new[ii] != -np.inf else 0.0   # no key yet: exp stays finite
                alpha = math.exp(m[ii] - m_safe[ii])  # exp(-inf) = 0 on a row's first kept block
                l[ii] *= alpha
                for d in range(Dh):
                    acc[ii, d] *= alpha
                m[ii] = m_new[ii]
            _exp_tile(S, m_safe, P, P_bits, n_bits, consts)   # P = exp(S − m_new)
            for ii in range(nq):
                row_sum = 0.0
                for jj in range(nk):
                    row_sum += P[ii, jj]
                l[ii] += row_sum                        # l = alpha · l + rowsum(P)
            if dropout:                                 # P̃ = P ∘ M/(1−p), after l has summed P
                drop = drop_buf[: nq * nk].reshape((nq, nk))
                _dropout_tile(drop, words, key, b, h, i0, j0, threshold, keep_scale)
                for ii in range(nq):
                    for jj in range(nk):
                        P[ii, jj] *= drop[ii, jj]
            np.dot(P, V_j, PV)                          # acc = alpha · acc + P̃ V_j
            for ii in range(nq):
                for d in range(Dh):
                    acc[ii, d] += PV[ii, d]
        for ii in range(nq):
            if l[ii] == 0:                              # no kept key: out = 0, lse = -inf
                for d in range(Dh):
                    acc[ii, d] = 0.0
                lse[b, h, i0 + ii] = -np.inf
            else:                                       # (a NaN l lands here: out, lse NaN)
                inv_l = 1.0 / l[ii]
                for d in range(Dh):
                    acc[ii, d] *= inv_l
                lse[b, h, i0 + ii] = m[ii] + math.log(l[ii])
    _store_heads(out, 0, b, h0, i0, Z_s)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _backward_kernel(q, gq, k, gk, v, gv, out, go, dout, gd, heads_per_task, lse, keep, kept_in_block, causal,
                     scale, consts, int_like, dropout, key, threshold, keep_scale, dq, gdq, dk, gdk, dv, gdv):
    """dq, dk, dv ← gradients of attention, one task per (batch row, group of heads), in parallel."""
    for task in prange(_n_tasks(lse, heads_per_task, max(lse.shape[2], 1))):
        _backward_task(task, q, gq, k, gk, v, gv, out, go, dout, gd, heads_per_task, lse, keep, kept_in_block,
                       causal, scale, consts, int_like, dropout, key, threshold, keep_scale, dq, gdq, dk, gdk,
                       dv, gdv)


@njit(cache=True)
def _backward_serial(q, gq, k, gk, v, gv, out, go, dout, gd, heads_per_task, lse, keep, kept_in_block, causal,
                     scale, consts, int_like, dropout, key, threshold, keep_scale, dq, gdq, dk, gdk, dv, gdv):
    """The same tasks one after the other (small work: no parallel launch)."""
    for task in range(_n_tasks(lse, heads_per_task, max(lse.shape[2], 1))):
        _backward_task(task, q, gq, k, gk, v, gv, out, go, dout, gd, heads_per_task, lse, keep, kept_in_block,
                       causal, scale, consts, int_like, dropout, key, threshold, keep_scale, dq, gdq, dk, gdk,
                       dv, gdv)


@njit(cache=True, fastmath=_FASTMATH)
def _backward_task(task, q, gq, k, gk, v, gv, out, go, dout, gd, heads_per_task, lse, keep, kept_in_block, causal,
                   scale, consts, int_like, dropout, key, threshold, keep_scale, dq, gdq, dk, gdk, dv, gdv):
    """dq, dk, dv of one (batch row, group of heads): the task owns dQ, dK, dV there.

    As in the forward, the task reads its heads' rows into contiguous [heads, rows, D] buffers in
    memory order, works head by head, and writes dQ, dK, dV back in memory order."""
    # long because: the backward of one task, one loop over key blocks, kept whole to read
    B, H, Tq = lse.shape
    Tk = keep.shape[1]
    Dh = dq.shape[4]
    n_q_blocks = (Tq + BLOCK_Q - 1) // BLOCK_Q
    n_k_blocks = (Tk + BLOCK_K - 1) // BLOCK_K
    causal_offset = Tk - Tq
    n_groups = (H + heads_per_task - 1) // heads_per_task
    b = task // n_groups
    h0 = task % n_groups * heads_per_task
    nh = min(heads_per_task, H - h0)
    one = consts[6]                                   # 1 in the working dtype
    Q_s = np.empty((nh, Tq, Dh), dtype=dq.dtype)      # Q · scale: S = Q_s Kᵀ, dK = dSᵀ Q_s
    _load_heads(q, gq, b, h0, 0, Q_s, scale)
    dZ_s = _all_rows(dout, gd, b, h0, np.empty((nh, Tq, Dh), dtype=dq.dtype), one)   # [nh, Tq, D]
    Z_s = _all_rows(out, go, b, h0, np.empty((nh, Tq, Dh), dtype=dq.dtype), one)
    K_s = _all_rows(k, gk, b, h0, np.empty((nh, Tk, Dh), dtype=dq.dtype), one)       # [nh, Tk, D]
    V_s = _all_rows(v, gv, b, h0, np.empty((nh, Tk, Dh), dtype=dq.dtype), one)
    dQ_s = np.zeros((nh, Tq, Dh), dtype=dq.dtype)
    dK_s = np.zeros((nh, Tk, Dh), dtype=dq.dtype)
    dV_s = np.zeros((nh, Tk, Dh), dtype=dq.dtype)
    D = np.empty(Tq, dtype=dq.dtype)                  # D = rowsum(dZ ∘ Z)
    lse_safe = np.empty(Tq, dtype=dq.dtype)           # +inf on empty rows makes P = 0 there
    S_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=dq.dtype)
    P_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=dq.dtype)
    P_bits = P_buf.view(int_like.dtype)
    n_bits = np.empty(BLOCK_Q * BLOCK_K, dtype=int_like.dtype)
    dP_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=dq.dtype)
    drop_buf = np.empty(BLOCK_Q * BLOCK_K if dropout else 0, dtype=dq.dtype)
    Pd_buf = np.empty(BLOCK_Q * BLOCK_K if dropout else 0, dtype=dq.dtype)
    words = np.empty(BLOCK_K if dropout else 0, dtype=np.uint64)
    tmp_k = np.empty((BLOCK_K, Dh), dtype=dq.dtype)
    tmp_q = np.empty((BLOCK_Q, Dh), dtype=dq.dtype)
    for hh in range(nh):
        h = h0 + hh
        dZ = dZ_s[hh]
        for i in range(Tq):
            row = 0.0
            for d in range(Dh):
                row += dZ[i, d] * Z_s[hh, i, d]
            D[i] = row
            lse_safe[i] = lse[b, h, i] if lse[b, h, i] != -np.inf else np.inf
        for kb in range(n_k_blocks):
            j0 = kb * BLOCK_K
            j1 = min(j0 + BLOCK_K, Tk)
            nk = j1 - j0
            if kept_in_block[b, kb] == 0:
                continue                               # a block of padding has zero gradients
            K_j = K_s[hh, j0:j1]
            V_j = V_s[hh, j0:j1]
            dK_j = dK_s[hh, j0:j1]
            dV_j = dV_s[hh, j0:j1]
            for qb in range(n_q_blocks):
                i0 = qb * BLOCK_Q
                i1 = min(i0 + BLOCK_Q, Tq)
                nq = i1 - i0
                if causal and j0 > i1 - 1 + causal_offset:
                    continue                           # this query block sees none of these keys
                Q_i = Q_s[hh, i0:i1]
                dZ_i = dZ[i0:i1]
                S = S_buf[: nq * nk].reshape((nq, nk))
                P = P_buf[: nq * nk].reshape((nq, nk))
                dP = dP_buf[: nq * nk].reshape((nq, nk))
                np.dot(Q_i, K_j.T, S)                  # S = Q_i K_jᵀ · scale
                if _tile_needs_mask(kept_in_block[b], kb, nk, i0, j1, causal_offset, causal):
                    _mask_tile(S, keep[b], i0, j0, causal_offset, causal)
                _exp_tile(S, lse_safe[i0:i1], P, P_bits, n_bits, consts)   # P = exp(S − lse)
                np.dot(dZ_i, V_j.T, dP)                # dP̃ = dZ_i V_jᵀ
                if dropout:                            # regenerate M/(1−p) for this tile
                    drop = drop_buf[: nq * nk].reshape((nq, nk))
                    Pd = Pd_buf[: nq * nk].reshape((nq, nk))
                    _dropout_tile(drop, words, key, b, h, i0, j0, threshold, keep_scale)
                    for ii in range(nq):
                        for jj in range(nk):
                            Pd[ii, jj] = P[ii, jj] * drop[ii, jj]     # P̃ = P ∘ M/(1−p)
                            dP[ii, jj] *= drop[ii, jj]                # dP = dP̃ ∘ M/(1−p)
                    np.dot(Pd.T, dZ_i, tmp_k[:nk])     # dV_j += P̃ᵀ dZ_i
                else:
                    np.dot(P.T, dZ_i, tmp_k[:nk])      # dV_j += Pᵀ dZ_i
                for jj in range(nk):
                    for d in range(Dh):
                        dV_j[jj, d] += tmp_k[jj, d]
                for ii in range(nq):                   # dS = P ∘ (dP − D_i), in dP's buffer,
                    D_i = D[i0 + ii]                   # exactly 0 where S is masked
                    for jj in range(nk):
                        ds = P[ii, jj] * (dP[ii, jj] - D_i)
                        dP[ii, jj] = ds if S[ii, jj] != -np.inf else 0.0
                dS = dP
                np.dot(dS.T, Q_i, tmp_k[:nk])          # dK_j += dSᵀ Q_i · scale
                for jj in range(nk):
                    for d in range(Dh):
                        dK_j[jj, d] += tmp_k[jj, d]
                np.dot(dS, K_j, tmp_q[:nq])            # dQ_i += dS K_j · scale
                for ii in range(nq):
                    for d in range(Dh):
                        dQ_s[hh, i0 + ii, d] += tmp_q[ii, d] * scale
        for j in range(Tk):
            if not keep[b, j]:                         # a masked key gets dK = dV = 0
                dK_s[hh, j] = 0.0
                dV_s[hh, j] = 0.0
    _store_heads(dq, gdq, b, h0, 0, dQ_s)
    _store_heads(dk, gdk, b, h0, 0, dK_s)
    _store_heads(dv, gdv, b, h0, 0, dV_s)

# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

SERIAL_BELOW = 1 << 21        # B·H·Tq·Tk·D below this: one thread, no parallel launch
_OPENBLAS_THREADS_FROM = 1 << 18   # OpenBLAS threads a product of m·n·k ≥ 65536·4 elements


def _launch(parallel_kernel, serial_kernel, shape, *args):
    """Run the kernel on q, k of ``shape`` (B, H, Tq, Tk, D): serially for small work (and then BLAS
    is left alone when no tile product is big enough for OpenBLAS to thread it), else in parallel
    with BLAS pinned to one thread."""
    B, H, Tq, Tk, Dh = shape
    if _serial(shape):
        if min(Tq, BLOCK_Q) * min(Tk, BLOCK_K) * Dh < _OPENBLAS_THREADS_FROM:
            return serial_kernel(*args)
        with threads.single_threaded_blas():
            return serial_kernel(*args)
    threads.start_numba_pool()
    with threads.single_threaded_blas(), numba.parallel_chunksize(1):   # threads take tasks one at a time
        return parallel_kernel(*args)


def _heads_source(x):
    """x [B, H, T, D] as the kernels read it: (a, g) with a C-contiguous [B, T, G, H, D] array and x
    its part g (the layer's Q, K, V: no copy, ``xp.head_views_of``), else (x, 0) with x as a
    C-contiguous [B, H, T, D] array (a copy only when x is neither)."""
    found = head_views_of(x)
    return found if found is not None else (np.ascontiguousarray(x), 0)


def _serial(shape):
    """True when work of ``shape`` (B, H, Tq, Tk, D) runs on one thread (see SERIAL_BELOW)."""
    B, H, Tq, Tk, Dh = shape
    return B * H * Tq * Tk * Dh < SERIAL_BELOW


def _heads_per_task(shape, n_row_tasks):
    """Heads per task: all of a batch row's heads when the work runs serially, or when the rows give
    every thread a few tasks (B · n_row_tasks ≥ 4 per thread: one sentence's [T, H, D] is then read
    once, in order), else fewer, so that a batch of one or two long sequences still keeps every
    thread busy."""
    B, H = shape[:2]
    if _serial(shape):
        return max(H, 1)
    groups = min(H, -(-4 * numba.get_num_threads() // max(B * n_row_tasks, 1)))
    return max(-(-H // max(groups, 1)), 1)


def _keep_and_blocks(mask, B, Tk):
    """keep [B, Tk] bool and kept_in_block [B, n_k_blocks]: how many keys of each block are kept."""
    keep = np.ones((B, Tk), dtype=np.bool_) if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
    n_k_blocks = (Tk + BLOCK_K - 1) // BLOCK_K
    padded = np.zeros((B, n_k_blocks * BLOCK_K), dtype=np.int64)
    padded[:, :Tk] = keep
    kept_in_block = padded.reshape(B, n_k_blocks, BLOCK_K).sum(axis=2)
    return keep, kept_in_block


def _bt_gh_d(B, T, G, H, D, dtype):
    """An empty [B, T, G, H, D] array (G parts of H heads): what the kernels write into, the layout
    the attention layer merges heads from, so that merging them is a reshape, not a copy."""
    return np.empty((B, T, G, H, D), dtype=dtype)


def _as_bhtd(a, g):
    """Part g of a [B, T, G, H, D] array seen as [B, H, T, D] (a view)."""
    return a[:, :, g].transpose(0, 2, 1, 3)


def _int_like(dtype):
    return np.empty(0, dtype=np.int32 if np.dtype(dtype) == np.float32 else np.int64)


def _dropout_args(dtype, dropout_p, dropout_seed, dropout_offset=0):
    """(on, key [3] uint64 = (k0, k1, batch offset), threshold uint64, 1/(1−p) in dtype) for the kernels."""
    if not dropout_p:
        return False, np.zeros(3, dtype=np.uint64), np.uint64(0), np.dtype(dtype).type(1.0)
    key = np.array((*philox.split_seed(dropout_seed), dropout_offset), dtype=np.uint64)
    return (True, key, np.uint64(philox.dropout_threshold(dropout_p)),
            np.dtype(dtype).type(1.0 / (1.0 - dropout_p)))


def attention_forward(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, dropout_seed=None,
                      dropout_offset=0):
    """Z = dropout(softmax(Q Kᵀ · scale + mask)) V, fused (see the module docstring).

    Args:
        q: [B, H, Tq, D] queries.  k, v: [B, H, Tk, D] keys and values (float32 or float64).
        mask: [B, Tk] bool, True where the key is kept, or None.
        causal: when True, query i sees only keys j <= i (+ Tk - Tq).
        scale: multiplies QKᵀ; default 1/√D.
        dropout_p, dropout_seed: attention dropout and the 64-bit seed of its mask.
        dropout_offset: the global batch index of row 0 (data parallel), 0 in one process.
    Returns:
        out: [B, H, Tq, D] and lse: [B, H, Tq].
    """
    return _forward(q, k, v, mask, causal, scale, dropout_p, dropout_seed, dropout_offset, record=False)


def attention_forward_tiles(q, k, v, mask=None, causal=False, scale=None):
    """``attention_forward`` that also returns the kernel's own record of its tiles (for lessons and tests).

    The same ``_forward_task`` as the fast path runs, one task after the other, with a record to
    write into (``attention_forward`` passes None, and Numba compiles that variant without the
    writes, so the fast path pays nothing for this one).

    Returns:
        out [B, H, Tq, D], lse [B, H, Tq], and tiles int64 [B, H, n_q_blocks, n_k_blocks, 2]:
        tiles[..., 0] what the task did with the tile (``TILE_NOT_VISITED``, ``TILE_PADDING``,
        ``TILE_MASKED``, ``TILE_FULL``), tiles[..., 1] how many scores it computed there (the
        tile's rows × keys, at most BLOCK_Q · BLOCK_K; 0 where it computed none).
    """
    from tinybert_kernels import dispatch           # the same checks (and errors) as every backend's entry
    dispatch._check_inputs("numba", q, k, v, mask)
    return _forward(q, k, v, mask, causal, scale, 0.0, None, 0, record=True)


def _forward(q, k, v, mask, causal, scale, dropout_p, dropout_seed, dropout_offset, record):
    """Both entries' work: the kernel's arguments, then the fast parallel tasks, or (record) the same
    tasks one after the other writing the tile record."""
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    keep, kept_in_block = _keep_and_blocks(mask, B, Tk)
    out = _bt_gh_d(B, Tq, 1, H, Dh, q.dtype)
    lse = np.empty((B, H, Tq), dtype=q.dtype)
    tiles = None
    if record:
        tiles = np.zeros((B, H, (Tq + BLOCK_Q - 1) // BLOCK_Q, (Tk + BLOCK_K - 1) // BLOCK_K, 2), dtype=np.int64)
    heads_per_task = _heads_per_task((B, H, Tq, Tk, Dh), (Tq + BLOCK_Q - 1) // BLOCK_Q)
    args = (*_heads_source(q), *_heads_source(k), *_heads_source(v), heads_per_task, keep, kept_in_block,
            bool(causal), q.dtype.type(scale), _exp_constants(q.dtype), _int_like(q.dtype),
            *_dropout_args(q.dtype, dropout_p, dropout_seed, dropout_offset), out, lse, tiles)
    if record:
        _forward_serial(*args)
        return _as_bhtd(out, 0), lse, tiles
    _launch(_forward_kernel, _forward_serial, (B, H, Tq, Tk, Dh), *args)
    return _as_bhtd(out, 0), lse


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                       dropout_seed=None, dropout_offset=0):
    """Gradients of ``attention_forward``, fused. Returns (dq [B,H,Tq,D], dk [B,H,Tk,D], dv [B,H,Tk,D]).

    When q, k, v are the three parts of one [B, T, 3, H, D] array (the attention layer's [Q | K | V]),
    dq, dk, dv are the three parts of one such array too, so the layer takes [dQ | dK | dV] as is."""
    lse = np.ascontiguousarray(lse)
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    keep, kept_in_block = _keep_and_blocks(mask, B, Tk)
    sources = [_heads_source(x) for x in (q, k, v)]
    a = sources[0][0]
    if all(s[0].ndim == 5 and s[0].shape[2] == 3 and s[0].base is a.base for s in sources) \
            and [s[1] for s in sources] == [0, 1, 2]:
        dqkv = _bt_gh_d(B, Tq, 3, H, Dh, q.dtype)    # [dQ | dK | dV] in the layout of [Q | K | V]
        grads = [(dqkv, 0), (dqkv, 1), (dqkv, 2)]
    else:
        grads = [(_bt_gh_d(B, T, 1, H, Dh, q.dtype), 0) for T in (Tq, Tk, Tk)]
    _launch(_backward_kernel, _backward_serial, (B, H, Tq, Tk, Dh), *sources[0], *sources[1], *sources[2],
            *_heads_source(out), *_heads_source(dout), _heads_per_task((B, H, Tq, Tk, Dh), 1), lse, keep, kept_in_block,
            bool(causal), q.dtype.type(scale), _exp_constants(q.dtype), _int_like(q.dtype),
            *_dropout_args(q.dtype, dropout_p, dropout_seed, dropout_offset), *grads[0], *grads[1], *grads[2])
    return tuple(_as_bhtd(a, g) for a, g in grads)


__all__ = ["attention_forward", "attention_backward", "attention_forward_tiles", "BLOCK_Q", "BLOCK_K",
           "SERIAL_BELOW", "TILE_NOT_VISITED", "TILE_PADDING", "TILE_MASKED", "TILE_FULL"]
