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

Parallelism. The forward runs ``prange`` over (batch, head, query block): every task owns its rows
of ``out`` and ``lse``. The backward runs ``prange`` over (batch, head): every task owns the whole
dQ, dK and dV of its head, so no two threads ever write the same gradient and no atomics are needed.
Tasks are handed out one at a time (``parallel_chunksize(1)``), since padded sequences and the
causal triangle make some tasks shorter than others. Below ``SERIAL_BELOW`` (B·H·Tq·Tk·D; a batch of
one short sentence) the same tasks run one after the other, without a parallel launch
(``kernels/threads.py`` says why the pools must not fight).
Memory beyond inputs and outputs is a few [BQ, BK] tiles per thread, never [Tq, Tk].

Speed. The three tile products are ``np.dot`` calls (BLAS sgemm/dgemm, which Numba reaches through
SciPy); BLAS is pinned to one thread while the kernel runs (threadpoolctl), since the kernel already
uses every core and OpenBLAS threads inside ``prange`` would fight for them. ``exp`` is the other
cost: ``_exp_tile`` is a plain polynomial exp that LLVM vectorizes (no SVML needed), and it returns
exactly 0 for -inf. Key blocks with no kept key (padding, or above the causal diagonal) are skipped;
``attention_forward_tiles`` runs the same tasks and returns the kernel's own record of which tiles it
computed, masked inside, or skipped, and how many scores it held in each.
Kernels compile with ``cache=True``, once per dtype (float32, float64).

Shapes: q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool (True = key
kept) or None; lse ``[B, H, Tq]``. q, k, v and dout may be strided views (the attention layer passes
its [B, T, H, D] projections seen as [B, H, T, D]): the kernels copy each tile they use into a
contiguous buffer. out, dq, dk and dv are returned as [B, H, T, D] views of [B, T, H, D] memory.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from tinybert_kernels import philox, threads
from tinybert_kernels.philox import philox4x32_jit

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

def _exp_constants(dtype):
    """Constants of ``_exp_tile`` in the working dtype (float32 or float64).

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


def _rows(x, b, h, i0, tile):
    """x[b, h, i0 : i0 + len(tile)] as a contiguous [n, D] array: the slice itself when x is
    C-contiguous, else a copy into ``tile`` (x is then a strided view, e.g. [B, T, H, D] memory seen
    as [B, H, T, D]). Chosen at compile time from x's layout (``_rows_overload``)."""
    raise NotImplementedError("_rows is compiled by Numba only")


@overload(_rows)
def _rows_overload(x, b, h, i0, tile):
    if x.layout == "C":
        def view(x, b, h, i0, tile):
            return x[b, h, i0:i0 + tile.shape[0]]
        return view

    def copy(x, b, h, i0, tile):
        for r in range(tile.shape[0]):
            for d in range(tile.shape[1]):
                tile[r, d] = x[b, h, i0 + r, d]
        return tile
    return copy


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

@njit(cache=True, parallel=True)
def _forward_kernel(q, k, v, keep, kept_in_block, causal, scale, consts, int_like, dropout, key,
                    threshold, keep_scale, out, lse, tiles):
    """out, lse ← attention(q, k, v), one task per (batch, head, query block), in parallel."""
    B, H, Tq, _ = q.shape
    for task in prange(B * H * ((Tq + BLOCK_Q - 1) // BLOCK_Q)):
        _forward_task(task, q, k, v, keep, kept_in_block, causal, scale, consts, int_like, dropout, key,
                      threshold, keep_scale, out, lse, tiles)


@njit(cache=True)
def _forward_serial(q, k, v, keep, kept_in_block, causal, scale, consts, int_like, dropout, key,
                    threshold, keep_scale, out, lse, tiles):
    """The same tasks one after the other (small work: no parallel launch)."""
    B, H, Tq, _ = q.shape
    for task in range(B * H * ((Tq + BLOCK_Q - 1) // BLOCK_Q)):
        _forward_task(task, q, k, v, keep, kept_in_block, causal, scale, consts, int_like, dropout, key,
                      threshold, keep_scale, out, lse, tiles)


@njit(cache=True, fastmath=_FASTMATH)
def _forward_task(task, q, k, v, keep, kept_in_block, causal, scale, consts, int_like, dropout, key,
                  threshold, keep_scale, out, lse, tiles):
    """out, lse of one (batch, head, query block).

    ``tiles`` is None (the fast path: Numba compiles the ``tiles is not None`` branches away) or an
    int64 [B, H, n_q_blocks, n_k_blocks, 2] record of zeros, in which the task writes, for every key
    block it visits, what it did (``TILE_PADDING``, ``TILE_MASKED``, ``TILE_FULL``) and how many
    scores it computed there; blocks it never reached (causal: after the diagonal) stay 0.
    """
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    n_q_blocks = (Tq + BLOCK_Q - 1) // BLOCK_Q
    n_k_blocks = (Tk + BLOCK_K - 1) // BLOCK_K
    causal_offset = Tk - Tq
    b = task // (H * n_q_blocks)
    h = (task // n_q_blocks) % H
    qb = task % n_q_blocks
    i0 = qb * BLOCK_Q
    i1 = min(i0 + BLOCK_Q, Tq)
    nq = i1 - i0
    Q_i = q[b, h, i0:i1] * scale                     # [nq, D], the scale folded into Q
    m = np.full(nq, -np.inf, dtype=q.dtype)           # running row max
    l = np.zeros(nq, dtype=q.dtype)                   # running row sum of exp(S − m)
    acc = np.zeros((nq, Dh), dtype=q.dtype)           # running Σ exp(S − m) V
    m_new = np.empty(nq, dtype=q.dtype)
    m_safe = np.empty(nq, dtype=q.dtype)
    S_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=q.dtype)
    P_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=q.dtype)
    P_bits = P_buf.view(int_like.dtype)
    n_bits = np.empty(BLOCK_Q * BLOCK_K, dtype=int_like.dtype)
    drop_buf = np.empty(BLOCK_Q * BLOCK_K if dropout else 0, dtype=q.dtype)
    words = np.empty(BLOCK_K if dropout else 0, dtype=np.uint64)
    PV = np.empty((nq, Dh), dtype=q.dtype)
    K_buf = np.empty((BLOCK_K, Dh), dtype=q.dtype)    # K_j, V_j copied into contiguous tiles: q, k,
    V_buf = np.empty((BLOCK_K, Dh), dtype=q.dtype)    # v may be strided views ([B, T, H, D] memory)
    # long because: the online softmax of one task is one loop over key blocks, kept whole to read
    for kb in range(n_k_blocks):
        j0 = kb * BLOCK_K
        j1 = min(j0 + BLOCK_K, Tk)
        nk = j1 - j0
        if kept_in_block[b, kb] == 0:
            if tiles is not None:
                tiles[b, h, qb, kb, 0] = TILE_PADDING
            continue                                   # every key of the block is padding
        if causal and j0 > i1 - 1 + causal_offset:
            break                                      # this and later blocks are in the future
        S = S_buf[: nq * nk].reshape((nq, nk))
        P = P_buf[: nq * nk].reshape((nq, nk))
        K_j = _rows(k, b, h, j0, K_buf[:nk])
        V_j = _rows(v, b, h, j0, V_buf[:nk])
        np.dot(Q_i, K_j.T, S)                          # S = Q_i K_jᵀ · scale
        needs_mask = _tile_needs_mask(kept_in_block[b], kb, nk, i0, j1, causal_offset, causal)
        if needs_mask:
            _mask_tile(S, keep[b], i0, j0, causal_offset, causal)
        if tiles is not None:
            tiles[b, h, qb, kb, 0] = TILE_MASKED if needs_mask else TILE_FULL
            tiles[b, h, qb, kb, 1] = S.size            # the scores held now: this tile, no more
        _row_max(S, m, m_new)                          # m_new = max(m, rowmax(S))
        for ii in range(nq):
            m_safe[ii] = m_new[ii] if m_new[ii] != -np.inf else 0.0   # no key yet: exp stays finite
            alpha = math.exp(m[ii] - m_safe[ii])      # exp(-inf) = 0 on a row's first kept block
            l[ii] *= alpha
            for d in range(Dh):
                acc[ii, d] *= alpha
            m[ii] = m_new[ii]
        _exp_tile(S, m_safe, P, P_bits, n_bits, consts)   # P = exp(S − m_new)
        for ii in range(nq):
            row_sum = 0.0
            for jj in range(nk):
                row_sum += P[ii, jj]
            l[ii] += row_sum                            # l = alpha · l + rowsum(P)
        if dropout:                                     # P̃ = P ∘ M/(1−p), after l has summed P
            drop = drop_buf[: nq * nk].reshape((nq, nk))
            _dropout_tile(drop, words, key, b, h, i0, j0, threshold, keep_scale)
            for ii in range(nq):
                for jj in range(nk):
                    P[ii, jj] *= drop[ii, jj]
        np.dot(P, V_j, PV)                              # acc = alpha · acc + P̃ V_j
        for ii in range(nq):
            for d in range(Dh):
                acc[ii, d] += PV[ii, d]
    for ii in range(nq):
        if l[ii] == 0:                                  # no kept key: out = 0, lse = -inf
            for d in range(Dh):
                out[b, h, i0 + ii, d] = 0.0
            lse[b, h, i0 + ii] = -np.inf
        else:                                           # (a NaN l lands here: out, lse NaN)
            inv_l = 1.0 / l[ii]
            for d in range(Dh):
                out[b, h, i0 + ii, d] = acc[ii, d] * inv_l
            lse[b, h, i0 + ii] = m[ii] + math.log(l[ii])


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _backward_kernel(q, k, v, out, lse, dout, keep, kept_in_block, causal, scale, consts, int_like,
                     dropout, key, threshold, keep_scale, dq, dk, dv):
    """dq, dk, dv ← gradients of attention, one task per (batch, head), in parallel."""
    for task in prange(q.shape[0] * q.shape[1]):
        _backward_task(task, q, k, v, out, lse, dout, keep, kept_in_block, causal, scale, consts, int_like,
                       dropout, key, threshold, keep_scale, dq, dk, dv)


@njit(cache=True)
def _backward_serial(q, k, v, out, lse, dout, keep, kept_in_block, causal, scale, consts, int_like,
                     dropout, key, threshold, keep_scale, dq, dk, dv):
    """The same tasks one after the other (small work: no parallel launch)."""
    for task in range(q.shape[0] * q.shape[1]):
        _backward_task(task, q, k, v, out, lse, dout, keep, kept_in_block, causal, scale, consts, int_like,
                       dropout, key, threshold, keep_scale, dq, dk, dv)


@njit(cache=True, fastmath=_FASTMATH)
def _backward_task(task, q, k, v, out, lse, dout, keep, kept_in_block, causal, scale, consts, int_like,
                   dropout, key, threshold, keep_scale, dq, dk, dv):
    """dq, dk, dv of one (batch, head): the task owns dQ, dK, dV there."""
    # long because: the backward of one task, one loop over key blocks, kept whole to read
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    n_q_blocks = (Tq + BLOCK_Q - 1) // BLOCK_Q
    n_k_blocks = (Tk + BLOCK_K - 1) // BLOCK_K
    causal_offset = Tk - Tq
    b = task // H
    h = task % H
    Q_scaled = q[b, h] * scale                        # [Tq, D]: S = Q_scaled Kᵀ, dK = dSᵀ Q_scaled
    dZ = _rows(dout, b, h, 0, np.empty((Tq, Dh), dtype=q.dtype))   # dout[b, h], contiguous
    D = np.empty(Tq, dtype=q.dtype)                   # D = rowsum(dZ ∘ Z)
    lse_safe = np.empty(Tq, dtype=q.dtype)            # +inf on empty rows makes P = 0 there
    for i in range(Tq):
        row = 0.0
        for d in range(Dh):
            row += dout[b, h, i, d] * out[b, h, i, d]
        D[i] = row
        lse_safe[i] = lse[b, h, i] if lse[b, h, i] != -np.inf else np.inf
    for i in range(Tq):
        for d in range(Dh):
            dq[b, h, i, d] = 0.0
    S_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=q.dtype)
    P_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=q.dtype)
    P_bits = P_buf.view(int_like.dtype)
    n_bits = np.empty(BLOCK_Q * BLOCK_K, dtype=int_like.dtype)
    dP_buf = np.empty(BLOCK_Q * BLOCK_K, dtype=q.dtype)
    drop_buf = np.empty(BLOCK_Q * BLOCK_K if dropout else 0, dtype=q.dtype)
    Pd_buf = np.empty(BLOCK_Q * BLOCK_K if dropout else 0, dtype=q.dtype)
    words = np.empty(BLOCK_K if dropout else 0, dtype=np.uint64)
    tmp_k = np.empty((BLOCK_K, Dh), dtype=q.dtype)
    tmp_q = np.empty((BLOCK_Q, Dh), dtype=q.dtype)
    dK_j = np.empty((BLOCK_K, Dh), dtype=q.dtype)
    dV_j = np.empty((BLOCK_K, Dh), dtype=q.dtype)
    K_buf = np.empty((BLOCK_K, Dh), dtype=q.dtype)
    V_buf = np.empty((BLOCK_K, Dh), dtype=q.dtype)
    for kb in range(n_k_blocks):
        j0 = kb * BLOCK_K
        j1 = min(j0 + BLOCK_K, Tk)
        nk = j1 - j0
        dK_j[:nk] = 0.0
        dV_j[:nk] = 0.0
        K_j = _rows(k, b, h, j0, K_buf[:nk])
        V_j = _rows(v, b, h, j0, V_buf[:nk])
        if kept_in_block[b, kb] > 0:                  # a block of padding has zero gradients
            for qb in range(n_q_blocks):
                i0 = qb * BLOCK_Q
                i1 = min(i0 + BLOCK_Q, Tq)
                nq = i1 - i0
                if causal and j0 > i1 - 1 + causal_offset:
                    continue                           # this query block sees none of these keys
                Q_i = Q_scaled[i0:i1]
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
                        dq[b, h, i0 + ii, d] += tmp_q[ii, d] * scale
        for jj in range(nk):
            kept = keep[b, j0 + jj]                    # a masked key gets dK = dV = 0
            for d in range(Dh):
                dk[b, h, j0 + jj, d] = dK_j[jj, d] if kept else 0.0
                dv[b, h, j0 + jj, d] = dV_j[jj, d] if kept else 0.0


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

SERIAL_BELOW = 1 << 21        # B·H·Tq·Tk·D below this: one thread, no parallel launch
_OPENBLAS_THREADS_FROM = 1 << 18   # OpenBLAS threads a product of m·n·k ≥ 65536·4 elements


def _launch(parallel_kernel, serial_kernel, q, k, *args):
    """Run the kernel: serially for small work (and then BLAS is left alone when no tile product is
    big enough for OpenBLAS to thread it), else in parallel with BLAS pinned to one thread."""
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    if B * H * Tq * Tk * Dh < SERIAL_BELOW:
        if min(Tq, BLOCK_Q) * min(Tk, BLOCK_K) * Dh < _OPENBLAS_THREADS_FROM:
            return serial_kernel(q, k, *args)
        with threads.single_threaded_blas():
            return serial_kernel(q, k, *args)
    threads.start_numba_pool()
    with threads.single_threaded_blas(), numba.parallel_chunksize(1):   # threads take tasks one at a time
        return parallel_kernel(q, k, *args)


def _keep_and_blocks(mask, B, Tk):
    """keep [B, Tk] bool and kept_in_block [B, n_k_blocks]: how many keys of each block are kept."""
    keep = np.ones((B, Tk), dtype=np.bool_) if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
    n_k_blocks = (Tk + BLOCK_K - 1) // BLOCK_K
    padded = np.zeros((B, n_k_blocks * BLOCK_K), dtype=np.int64)
    padded[:, :Tk] = keep
    kept_in_block = padded.reshape(B, n_k_blocks, BLOCK_K).sum(axis=2)
    return keep, kept_in_block


def _bthd(B, H, T, D, dtype):
    """An empty [B, H, T, D] array laid out in memory as [B, T, H, D]: the layout the attention
    layer merges heads from, so that merging them is a reshape, not a copy."""
    return np.empty((B, T, H, D), dtype=dtype).transpose(0, 2, 1, 3)


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
    B, H, Tq, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    keep, kept_in_block = _keep_and_blocks(mask, B, k.shape[2])
    out = _bthd(B, H, Tq, Dh, q.dtype)
    lse = np.empty((B, H, Tq), dtype=q.dtype)
    _launch(_forward_kernel, _forward_serial, q, k, v, keep, kept_in_block, bool(causal), q.dtype.type(scale),
            _exp_constants(q.dtype), _int_like(q.dtype), *_dropout_args(q.dtype, dropout_p, dropout_seed, dropout_offset),
            out, lse, None)
    return out, lse


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
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    keep, kept_in_block = _keep_and_blocks(mask, B, Tk)
    out = _bthd(B, H, Tq, Dh, q.dtype)
    lse = np.empty((B, H, Tq), dtype=q.dtype)
    tiles = np.zeros((B, H, (Tq + BLOCK_Q - 1) // BLOCK_Q, (Tk + BLOCK_K - 1) // BLOCK_K, 2), dtype=np.int64)
    _forward_serial(q, k, v, keep, kept_in_block, bool(causal), q.dtype.type(scale), _exp_constants(q.dtype),
                    _int_like(q.dtype), *_dropout_args(q.dtype, 0.0, None), out, lse, tiles)
    return out, lse, tiles


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                       dropout_seed=None, dropout_offset=0):
    """Gradients of ``attention_forward``, fused. Returns (dq [B,H,Tq,D], dk [B,H,Tk,D], dv [B,H,Tk,D])."""
    lse = np.ascontiguousarray(lse)
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    keep, kept_in_block = _keep_and_blocks(mask, B, Tk)
    dq = _bthd(B, H, Tq, Dh, q.dtype)
    dk = _bthd(B, H, Tk, Dh, q.dtype)
    dv = _bthd(B, H, Tk, Dh, q.dtype)
    _launch(_backward_kernel, _backward_serial, q, k, v, out, lse, dout, keep, kept_in_block, bool(causal),
            q.dtype.type(scale), _exp_constants(q.dtype), _int_like(q.dtype),
            *_dropout_args(q.dtype, dropout_p, dropout_seed, dropout_offset), dq, dk, dv)
    return dq, dk, dv


__all__ = ["attention_forward", "attention_backward", "attention_forward_tiles", "BLOCK_Q", "BLOCK_K",
           "SERIAL_BELOW", "TILE_NOT_VISITED", "TILE_PADDING", "TILE_MASKED", "TILE_FULL"]
