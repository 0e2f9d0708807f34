"""Fused attention on an NVIDIA GPU: FlashAttention-2's algorithm as ``numba.cuda`` kernels, simply.

The reading twin of ``attention_cuda_tiled.py`` (backend ``"cuda"``); it runs as backend
``"cuda_simple"`` and is tested against the same reference.

The same algorithm and names as ``attention_numba.py`` (read that first), mapped onto the GPU:

- **forward** — a thread block per (query block, batch·head), one thread per query row. The block
  stages a tile of keys and values in shared memory; every thread then walks the tile with its own
  running max ``m``, sum ``l`` and accumulator ``acc`` (the online softmax). Since a thread owns a
  whole row, the row reductions (max, sum) are plain loops: no warp shuffles, so Numba's CUDA
  simulator runs the kernel as written.
- **backward** — D = rowsum(dout ∘ out) by a small kernel, then two kernels without float atomics:
  the **dK/dV kernel** has one thread per key row j, walking tiles of queries (Q, dZ, lse, D in
  shared memory) and summing dV_j += P_ij dZ_i and dK_j += dS_ij Q_i · scale; the **dQ kernel** has
  one thread per query row i, walking tiles of keys and summing dQ_i += dS_ij K_j · scale. Each
  thread writes only its own row, so no two threads write the same gradient.

P_ij = exp(S_ij − lse_i) and dS_ij = P_ij (dP_ij − D_i) with dP_ij = dZ_i · V_j are recomputed where
needed, exactly as in the reference. Masked keys (padding, or after the causal limit) give P = 0
exactly, and a row with no kept key gives out = 0, lse = -inf and zero gradients. A NaN score makes
its row's running max, ``l``, ``out`` and ``lse`` NaN, as in the reference.

Attention dropout: P̃_ij = P_ij · M_ij/(1 − p), with M_ij read from Philox4x32-10 at the counter
(j // 4, i, h, b₀ + b) under the seed's key (``philox.py``), the same bits as the CPU kernel and the
reference. b₀ (``dropout_offset``, the key array's third word) is 0 in one process; a
data-parallel rank holding rows b₀.. of the global batch passes b₀, and draws for its rows exactly
what one process draws for them. The forward and dQ kernels walk a row's keys and draw one Philox
call per 4 keys; the dK/dV kernel walks a key's queries and draws one call per element (and keeps
one of its 4 words).

Arrays: CuPy arrays (through ``__cuda_array_interface__``, no copy); under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) NumPy arrays work too, which is how the tests run these kernels on a
machine without a GPU. D (the head size) may be up to ``D_MAX`` = 128.

Shapes: q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool (True = key
kept) or None; lse ``[B, H, Tq]``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, from_dtype, int32

from tinybert_kernels import philox
from tinybert_kernels.dispatch import check_dropout_offset
from tinybert_kernels.xp import get_array_module

D_MAX = 128          # largest head size: per-thread rows live in local arrays of this length
ROWS_PER_BLOCK = 64  # threads per block = query rows (forward, dQ) or key rows (dK/dV) per block
# rows staged in shared memory per tile; two [TILE, D_MAX] tiles must fit in 48 KiB
TILE = {np.dtype(np.float32): 32, np.dtype(np.float64): 16}


def _build_kernels(dtype, tile):
    """The four kernels for one dtype (shared and local arrays need their dtype at compile time).

    The kernels use ternaries rather than ``min``/``max``, and the forward and dQ kernels each
    write out the staging of a K/V tile and the causal key limit rather than call a shared
    ``cuda.jit(device=True)`` helper: every line a thread runs is in its kernel's body, and
    ``bench/gpu_ready.py`` compiles them with a plain ``cuda.compile_ptx``, which under Numba's own
    numba.cuda asks the current GPU about any device function (``attention_cuda_tiles.ptx`` answers
    for it, which is how the tiled kernels share helpers).
    """
    real = from_dtype(np.dtype(dtype))
    NEG_INF = -math.inf
    draw = philox.philox4x32_device()      # (c0, c1, c2, c3, k0, k1) -> 4 words, all uint64

    @cuda.jit
    def forward_kernel(q, k, v, keep, causal, scale, dropout, key, threshold, keep_scale, out, lse):
        """out, lse for query rows blockIdx.x·ROWS + threadIdx.x of head blockIdx.y = b·H + h."""
        # long because: a CUDA kernel is one function, written out so that it reads top to bottom
        K_tile = cuda.shared.array((tile, D_MAX), real)
        V_tile = cuda.shared.array((tile, D_MAX), real)
        keep_tile = cuda.shared.array(tile, int32)
        q_row = cuda.local.array(D_MAX, real)
        acc = cuda.local.array(D_MAX, real)
        S_row = cuda.local.array(tile, real)
        B, H, Tq, Dh = q.shape
        Tk = k.shape[2]
        causal_offset = Tk - Tq
        b = cuda.blockIdx.y // H
        h = cuda.blockIdx.y % H
        t = cuda.threadIdx.x
        i = cuda.blockIdx.x * ROWS_PER_BLOCK + t
        row_valid = i < Tq
        for d in range(Dh):
            q_row[d] = q[b, h, i, d] * scale if row_valid else real(0.0)  # the scale folded into q
            acc[d] = 0.0
        m = real(NEG_INF)                                  # running max of the row
        l = real(0.0)                                      # running sum of exp(S − m)
        n_keys = Tk                                        # keys this block of rows may see
        if causal:
            last_row = (cuda.blockIdx.x + 1) * ROWS_PER_BLOCK - 1
            last_row = last_row if last_row < Tq else Tq - 1
            n_keys = last_row + causal_offset + 1
            n_keys = n_keys if n_keys < Tk else Tk
        for j0 in range(0, n_keys, tile):
            for idx in range(t, tile * Dh, ROWS_PER_BLOCK):   # stage K_j, V_j, keep_j
                jj = idx // Dh
                d = idx % Dh
                if j0 + jj < Tk:
                    K_tile[jj, d] = k[b, h, j0 + jj, d]
                    V_tile[jj, d] = v[b, h, j0 + jj, d]
            for jj in range(t, tile, ROWS_PER_BLOCK):
                keep_tile[jj] = 1 if (j0 + jj < Tk and keep[b, j0 + jj]) else 0
            cuda.syncthreads()
            if row_valid:
                nk = Tk - j0 if Tk - j0 < tile else tile
                m_new = m
                for jj in range(nk):                        # S = q_i K_jᵀ · scale, m_new = max
                    kept = keep_tile[jj] == 1 and (not causal or j0 + jj <= i + causal_offset)
                    if kept:
                        s = real(0.0)
                        for d in range(Dh):
                            s += q_row[d] * K_tile[jj, d]
                        S_row[jj] = s
                        m_new = s if (s > m_new or s != s) else m_new   # a NaN score sticks
                    else:
                        S_row[jj] = NEG_INF
                if m_new != NEG_INF:                        # some key of the row kept so far
                    alpha = math.exp(m - m_new)             # exp(-inf) = 0 on the first kept tile
                    l *= alpha
                    for d in range(Dh):
                        acc[d] *= alpha
                    w0 = w1 = w2 = w3 = np.uint64(0)
                    for jj in range(nk):
                        if dropout and jj % 4 == 0:         # j0 is a multiple of 4: one call, 4 keys
                            w0, w1, w2, w3 = draw(np.uint64((j0 + jj) // 4), np.uint64(i), np.uint64(h),
                                                  np.uint64(b) + key[2], key[0], key[1])
                        if S_row[jj] != NEG_INF:
                            p = math.exp(S_row[jj] - m_new)   # P = exp(S − m_new)
                            l += p
                            if dropout:                       # P̃ = P · M/(1−p), after l summed P
                                r = jj % 4
                                w = w0 if r == 0 else (w1 if r == 1 else (w2 if r == 2 else w3))
                                p *= keep_scale if w >= threshold else real(0.0)
                            for d in range(Dh):
                                acc[d] += p * V_tile[jj, d]
                    m = m_new
            cuda.syncthreads()
        if row_valid:
            if l != 0:                                     # (a NaN l lands here: out, lse NaN)
                for d in range(Dh):
                    out[b, h, i, d] = acc[d] / l
                lse[b, h, i] = m + math.log(l)
            else:                                          # no kept key: out = 0, lse = -inf
                for d in range(Dh):
                    out[b, h, i, d] = 0.0
                lse[b, h, i] = NEG_INF

    @cuda.jit
    def row_dot_kernel(dout, out, D):
        """D[b, h, i] = rowsum(dout ∘ out), one thread per row (grid over B·H·Tq rows)."""
        B, H, Tq, Dh = out.shape
        r = cuda.grid(1)
        if r < B * H * Tq:
            b = r // (H * Tq)
            h = (r // Tq) % H
            i = r % Tq
            s = real(0.0)
            for d in range(Dh):
                s += dout[b, h, i, d] * out[b, h, i, d]
            D[b, h, i] = s

    @cuda.jit
    def dkdv_kernel(q, k, v, lse, dout, D, keep, causal, scale, dropout, key, threshold, keep_scale,
                    dk, dv):
        """dK_j, dV_j for key rows blockIdx.x·ROWS + threadIdx.x of head blockIdx.y."""
        # long because: a CUDA kernel is one function, written out so that it reads top to bottom
        Q_tile = cuda.shared.array((tile, D_MAX), real)
        dZ_tile = cuda.shared.array((tile, D_MAX), real)
        lse_tile = cuda.shared.array(tile, real)
        D_tile = cuda.shared.array(tile, real)
        k_row = cuda.local.array(D_MAX, real)
        v_row = cuda.local.array(D_MAX, real)
        dK_row = cuda.local.array(D_MAX, real)
        dV_row = cuda.local.array(D_MAX, real)
        B, H, Tq, Dh = q.shape
        Tk = k.shape[2]
        causal_offset = Tk - Tq
        b = cuda.blockIdx.y // H
        h = cuda.blockIdx.y % H
        t = cuda.threadIdx.x
        j = cuda.blockIdx.x * ROWS_PER_BLOCK + t
        key_kept = j < Tk and keep[b, j] != 0
        for d in range(Dh):
            k_row[d] = k[b, h, j, d] * scale if j < Tk else real(0.0)
            v_row[d] = v[b, h, j, d] if j < Tk else real(0.0)
            dK_row[d] = 0.0
            dV_row[d] = 0.0
        i_start = 0                                        # first query that sees this key block
        if causal:
            i_start = cuda.blockIdx.x * ROWS_PER_BLOCK - causal_offset
            i_start = i_start if i_start > 0 else 0
        for i0 in range(i_start, Tq, tile):
            for idx in range(t, tile * Dh, ROWS_PER_BLOCK):   # stage Q_i, dZ_i, lse_i, D_i
                ii = idx // Dh
                d = idx % Dh
                if i0 + ii < Tq:
                    Q_tile[ii, d] = q[b, h, i0 + ii, d]
                    dZ_tile[ii, d] = dout[b, h, i0 + ii, d]
            for ii in range(t, tile, ROWS_PER_BLOCK):
                if i0 + ii < Tq:
                    lse_tile[ii] = lse[b, h, i0 + ii]
                    D_tile[ii] = D[b, h, i0 + ii]
            cuda.syncthreads()
            if key_kept:
                nq = Tq - i0 if Tq - i0 < tile else tile
                for ii in range(nq):
                    visible = not causal or j <= i0 + ii + causal_offset
                    if visible and lse_tile[ii] != NEG_INF:
                        s = real(0.0)
                        for d in range(Dh):
                            s += Q_tile[ii, d] * k_row[d]    # S_ij = q_i · k_j · scale
                        if s != NEG_INF:                     # (an overflow to -inf: P = dS = 0)
                            p = math.exp(s - lse_tile[ii])   # P_ij = exp(S_ij − lse_i)
                            dp = real(0.0)
                            for d in range(Dh):
                                dp += dZ_tile[ii, d] * v_row[d]   # dP̃_ij = dZ_i · v_j
                            p_dropped = p
                            if dropout:                      # regenerate M_ij/(1−p)
                                w0, w1, w2, w3 = draw(np.uint64(j // 4), np.uint64(i0 + ii), np.uint64(h),
                                                      np.uint64(b) + key[2], key[0], key[1])
                                r = j % 4
                                w = w0 if r == 0 else (w1 if r == 1 else (w2 if r == 2 else w3))
                                factor = keep_scale if w >= threshold else real(0.0)
                                p_dropped = p * factor       # P̃_ij
                                dp *= factor                 # dP_ij = dP̃_ij M_ij/(1−p)
                            ds = p * (dp - D_tile[ii])       # dS_ij = P_ij (dP_ij − D_i)
                            for d in range(Dh):
                                dV_row[d] += p_dropped * dZ_tile[ii, d]  # dV_j += P̃_ij dZ_i
                                dK_row[d] += ds * Q_tile[ii, d]  # dK_j += dS_ij q_i (· scale below)
            cuda.syncthreads()
        if j < Tk:                                         # a masked key: dK = dV = 0 exactly
            for d in range(Dh):
                dk[b, h, j, d] = dK_row[d] * scale if key_kept else real(0.0)
                dv[b, h, j, d] = dV_row[d]

    @cuda.jit
    def dq_kernel(q, k, v, lse, dout, D, keep, causal, scale, dropout, key, threshold, keep_scale, dq):
        """dQ_i for query rows blockIdx.x·ROWS + threadIdx.x of head blockIdx.y."""
        # long because: a CUDA kernel is one function, written out so that it reads top to bottom
        K_tile = cuda.shared.array((tile, D_MAX), real)
        V_tile = cuda.shared.array((tile, D_MAX), real)
        keep_tile = cuda.shared.array(tile, int32)
        q_row = cuda.local.array(D_MAX, real)
        dZ_row = cuda.local.array(D_MAX, real)
        dQ_row = cuda.local.array(D_MAX, real)
        B, H, Tq, Dh = q.shape
        Tk = k.shape[2]
        causal_offset = Tk - Tq
        b = cuda.blockIdx.y // H
        h = cuda.blockIdx.y % H
        t = cuda.threadIdx.x
        i = cuda.blockIdx.x * ROWS_PER_BLOCK + t
        row_valid = i < Tq
        lse_i = lse[b, h, i] if row_valid else real(NEG_INF)
        D_i = D[b, h, i] if row_valid else real(0.0)
        for d in range(Dh):
            q_row[d] = q[b, h, i, d] * scale if row_valid else real(0.0)
            dZ_row[d] = dout[b, h, i, d] if row_valid else real(0.0)
            dQ_row[d] = 0.0
        n_keys = Tk
        if causal:
            last_row = (cuda.blockIdx.x + 1) * ROWS_PER_BLOCK - 1
            last_row = last_row if last_row < Tq else Tq - 1
            n_keys = last_row + causal_offset + 1
            n_keys = n_keys if n_keys < Tk else Tk
        for j0 in range(0, n_keys, tile):
            for idx in range(t, tile * Dh, ROWS_PER_BLOCK):   # stage K_j, V_j, keep_j
                jj = idx // Dh
                d = idx % Dh
                if j0 + jj < Tk:
                    K_tile[jj, d] = k[b, h, j0 + jj, d]
                    V_tile[jj, d] = v[b, h, j0 + jj, d]
            for jj in range(t, tile, ROWS_PER_BLOCK):
                keep_tile[jj] = 1 if (j0 + jj < Tk and keep[b, j0 + jj]) else 0
            cuda.syncthreads()
            if row_valid and lse_i != NEG_INF:
                nk = Tk - j0 if Tk - j0 < tile else tile
                w0 = w1 = w2 = w3 = np.uint64(0)
                for jj in range(nk):
                    if dropout and jj % 4 == 0:             # one Philox call for 4 keys
                        w0, w1, w2, w3 = draw(np.uint64((j0 + jj) // 4), np.uint64(i), np.uint64(h),
                                              np.uint64(b) + key[2], key[0], key[1])
                    kept = keep_tile[jj] == 1 and (not causal or j0 + jj <= i + causal_offset)
                    if kept:
                        s = real(0.0)
                        dp = real(0.0)
                        for d in range(Dh):
                            s += q_row[d] * K_tile[jj, d]    # S_ij = q_i · k_j · scale
                            dp += dZ_row[d] * V_tile[jj, d]  # dP̃_ij = dZ_i · v_j
                        if dropout:                          # dP_ij = dP̃_ij M_ij/(1−p)
                            r = jj % 4
                            w = w0 if r == 0 else (w1 if r == 1 else (w2 if r == 2 else w3))
                            dp *= keep_scale if w >= threshold else real(0.0)
                        if s != NEG_INF:                     # (an overflow to -inf: dS = 0)
                            p = math.exp(s - lse_i)          # P_ij = exp(S_ij − lse_i)
                            ds = p * (dp - D_i)              # dS_ij = P_ij (dP_ij − D_i)
                            for d in range(Dh):
                                dQ_row[d] += ds * K_tile[jj, d]  # dQ_i += dS_ij k_j (· scale below)
            cuda.syncthreads()
        if row_valid:
            for d in range(Dh):
                dq[b, h, i, d] = dQ_row[d] * scale

    return {"forward": forward_kernel, "row_dot": row_dot_kernel, "dkdv": dkdv_kernel, "dq": dq_kernel}


_KERNELS: dict = {}


def kernels_for(dtype) -> dict:
    """The kernels for ``dtype`` (float32 or float64), built on first use."""
    dtype = np.dtype(dtype)
    if dtype not in _KERNELS:
        _KERNELS[dtype] = _build_kernels(dtype, TILE[dtype])
    return _KERNELS[dtype]


def _dropout_args(xp, dtype, dropout_p, dropout_seed, dropout_offset=0):
    """(on, key [3] uint64 array = (k0, k1, batch offset b₀), threshold uint64, 1/(1−p) in dtype)
    for the kernels."""
    dropout_offset = check_dropout_offset(dropout_offset)
    if not dropout_p:
        return False, xp.zeros(3, dtype=np.uint64), np.uint64(0), np.dtype(dtype).type(1.0)
    key = xp.asarray(np.array((*philox.split_seed(dropout_seed), dropout_offset), dtype=np.uint64))
    return (True, key, np.uint64(philox.dropout_threshold(dropout_p)),
            np.dtype(dtype).type(1.0 / (1.0 - dropout_p)))


def _prepare(q, k, v, mask, scale):
    """Contiguous arrays, the keep mask as uint8 [B, Tk] and the scale in q's dtype."""
    xp = get_array_module(q)
    q, k, v = (xp.ascontiguousarray(a) for a in (q, k, v))
    B, H, Tq, Dh = q.shape
    if Dh > D_MAX:
        raise ValueError(f"head size D={Dh} is larger than the CUDA kernel's D_MAX={D_MAX}")
    Tk = k.shape[2]
    keep = xp.ones((B, Tk), dtype=xp.uint8) if mask is None else xp.ascontiguousarray(mask).astype(xp.uint8)
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    return xp, q, k, v, keep, q.dtype.type(scale)


def attention_forward(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, dropout_seed=None,
                      dropout_offset=0):
    """Z = dropout(softmax(Q Kᵀ · scale + mask)) V on the GPU. Returns out [B, H, Tq, D], lse [B, H, Tq].

    ``dropout_offset``: the global batch index b₀ of row 0 (data parallel), 0 in one process."""
    xp, q, k, v, keep, scale = _prepare(q, k, v, mask, scale)
    drop = _dropout_args(xp, q.dtype, dropout_p, dropout_seed, dropout_offset)
    B, H, Tq, Dh = q.shape
    out = xp.empty_like(q)
    lse = xp.empty((B, H, Tq), dtype=q.dtype)
    grid = ((Tq + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK, B * H)
    kernels_for(q.dtype)["forward"][grid, ROWS_PER_BLOCK](q, k, v, keep, bool(causal), scale, *drop, out, lse)
    return out, lse


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                       dropout_seed=None, dropout_offset=0):
    """Gradients of ``attention_forward`` on the GPU (the same dropout arguments, offset included).
    Returns dq [B,H,Tq,D], dk, dv [B,H,Tk,D]."""
    xp, q, k, v, keep, scale = _prepare(q, k, v, mask, scale)
    drop = _dropout_args(xp, q.dtype, dropout_p, dropout_seed, dropout_offset)
    out, lse, dout = (xp.ascontiguousarray(a) for a in (out, lse, dout))
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    kern = kernels_for(q.dtype)
    D = xp.empty((B, H, Tq), dtype=q.dtype)
    rows = B * H * Tq
    kern["row_dot"][(rows + 127) // 128, 128](dout, out, D)
    dq = xp.empty_like(q)
    dk = xp.empty_like(k)
    dv = xp.empty_like(v)
    grid_k = ((Tk + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK, B * H)
    kern["dkdv"][grid_k, ROWS_PER_BLOCK](q, k, v, lse, dout, D, keep, bool(causal), scale, *drop, dk, dv)
    grid_q = ((Tq + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK, B * H)
    kern["dq"][grid_q, ROWS_PER_BLOCK](q, k, v, lse, dout, D, keep, bool(causal), scale, *drop, dq)
    return dq, dk, dv


__all__ = ["attention_forward", "attention_backward", "kernels_for", "D_MAX", "ROWS_PER_BLOCK", "TILE"]
