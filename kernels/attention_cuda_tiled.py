"""Fused attention on an NVIDIA GPU, built for speed: FlashAttention-2 with cooperative register tiles.

Read it beside ``attention_numba.py``: the formulas are the same, with the same names (Dh the head
size, ``acc`` the unnormalized output, dZ the upstream gradient, D = rowsum(dZ ∘ Z), M/(1 − p) the
dropout tile); what changes is how the work is cut. ``attention_cuda.py`` is the simple reading
version (one thread per query row, backend ``"cuda_simple"``); ``attention_cuda_tiles.py`` holds the
tile tables, shared-memory layout, signatures, PTX compilation and launch limits.

**A block owns a tile, a thread owns a register tile.** The forward gives each thread block BR query
rows of one (batch, head) and walks the keys BC at a time. The block's 2-D grid of NY × NX threads
(NY = BR/TM, NX = BC/TN) covers the [BR, BC] score tile, each thread a TM × TN register tile, rows
``ty + NY·m`` and keys ``tx + NX·n`` (interleaved, so that neighbouring threads read neighbouring
rows of shared memory and no two of them hit one bank)::

    stage K_j, V_j (and the dropout tile M/(1 − p)) in shared memory   [BC, Dh] each
    S     = (Q_i · scale) K_jᵀ      per d: TM values of Q and TN of K feed TM·TN FMAs
    m_new = max(m, rowmax(S))       each thread's row maxima meet in shared memory (R)
    P     = exp(S − m_new)          exactly 0 where S = -inf; into shared memory (∘ M/(1 − p))
    alpha = exp(m − m_new),  l = alpha·l + rowsum(P),  acc = alpha·acc + P V_j
                                    per key: TM values of P and TD = Dh/NX of V feed TM·TD FMAs
    out   = acc / l,  lse = m + log(l)                                 (l summed across the row at the end)

Every value read from shared memory feeds TN, TM or TD FMAs, ≥ 4 with the float32 tiles
(``kernel_specs`` computes it, ``bench/gpu_ready.py`` prints it); Q (times the scale, as the
reference multiplies it), K, V and P live in one dynamic shared array, rows padded so that column
reads are free of bank conflicts; per-thread tiles are unrolled into registers (no local memory:
ptxas reports 0 bytes of stack and spills, asserted by the tests for float32), and launch bounds
(``Tiles.min_blocks``) keep the registers within what the shared memory's blocks per SM allow.

**Backward without atomics.** D = rowsum(dZ ∘ Z) first (the reference's own expression), then two
kernels that each own what they write, so no two threads ever add into one gradient:

- ``dkdv``: a block owns BC keys (K_j, V_j stay in shared memory) and walks the query tiles:
  S = (Q_i · scale) K_jᵀ and dP = dZ_i V_jᵀ, P = exp(S − lse), dS = P ∘ (dP − D_i) (both exactly
  0 where S = -inf); dV_j += P̃ᵀ dZ_i and dK_j += dSᵀ (Q_i · scale) from shared P̃ and dS.
- ``dq``: a block owns BR query rows (Q_i, dZ_i stay) and walks the key tiles: S, dP, dS as above,
  dQ_i += dS K_j · scale.

The CPU kernel's backward is one loop over key blocks with an inner loop over query blocks, adding
all three gradients; here that loop is split in two at its ``dQ_i +=`` line. Recomputing S and dP
in the dQ kernel costs 7 tile products per (query tile, key tile) instead of the 5 of a single
kernel that adds dQ with ``atomicAdd``. On paper that kernel would need one float atomic per
5·BC = 320 FMAs, near what an H100's L2 atomic units sustain at full FMA rate, and would make every
gradient depend on the order in which blocks finish; deterministic gradients (bit-equal from run
to run, as the CPU backends give) decided it.

**No double buffering.** Numba exposes neither ``cp.async`` nor TMA, so a second buffer would be
filled through registers (another Dh·BC·2/threads registers per thread, 64 at Dh = 128): it would
halve the blocks per SM that hide the same latency for free. The tile loads are plain coalesced
loads; several blocks per SM overlap one block's loads with another's FMAs.

**NaN and infinity propagate as in the reference** (a NaN never turns into a number): the row
maximum is NaN-sticky (a plain comparison would drop a NaN), so a NaN or +inf score makes its row's
out and lse NaN; masked scores are *selected* to -inf and their P and dS are exactly 0 (a masked
key is not an input: its dK and dV are 0); dropped probabilities are *multiplied* by 0, and
0 · NaN stays NaN. Whether a NaN sitting only in a masked position reaches other rows the reference
leaves unspecified: here a key tile that the causal mask hides from every row of a block is
skipped, while inside a visited tile P V multiplies a masked key's V by 0 like the reference.

**Dropout** (``dropout_p`` > 0): element (b, h, i, j) of P is kept when word j mod 4 of
Philox4x32-10((j // 4, i, h, b₀ + b), seed) is ≥ p·2³² (``philox.attention_keep``, bit for bit) and
scaled by 1/(1 − p), where b₀ (``dropout_offset``, the kernels' ``batch0``) is 0 in one process and
a data-parallel rank's first global row otherwise, so that a rank draws for its rows exactly what
one process draws for them. The block draws the tile M/(1 − p) into shared memory with one Philox
call per four keys, in the forward and again in the backward (never stored). With dropout,
P̃ = P ∘ M/(1 − p): out = P̃ V / l, dV = P̃ᵀ dZ, dS = P ∘ (dZ Vᵀ ∘ M/(1 − p) − D).

Head sizes 32, 64 and 128 are compiled each with their own tiles (``CONFIGS``); any other Dh ≤ 128
is zero-padded to the next of them (zeros change neither Q Kᵀ nor the rows of P V; the scale stays
1/√Dh of the real Dh); larger Dh is an error.

Arrays: CuPy arrays; under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) NumPy arrays, which
is how the tests prove these kernels without a GPU. Shapes: q, out, dout ``[B, H, Tq, D]``; k, v
``[B, H, Tk, D]``; mask ``[B, Tk]`` bool (True = key kept) or None; lse ``[B, H, Tq]``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, from_dtype, uint64

from tinybert_kernels import attention_cuda_tiles as plumbing
from tinybert_kernels import philox
from tinybert_kernels.attention_cuda_tiles import (CONFIGS, DK_COLS, HEAD_SIZES, SMALL_CONFIGS, UNROLL,
                                                   Tiles, shared_bytes, shared_layout)
from tinybert_kernels.dispatch import check_dropout_offset
from tinybert_kernels.xp import get_array_module

# ---------------------------------------------------------------------------------------------
# the kernels
#
# Arrays reach the kernels flat (q[((b·H + h)·Tq + i)·Dh + d] is q[b, h, i, d]) and every index is
# cast to uint64: Numba then skips its negative-index wraparound (a compare and a select per
# access), which is what lets LLVM unroll the inner loops into straight runs of loads and FMAs.
# ---------------------------------------------------------------------------------------------

def _device_helpers(Dh, real, t: Tiles):
    """The device functions the three kernels share, for head size Dh and tiles t (inlined)."""
    # long because: eight small device functions, each a few lines, closed over one set of tiles
    BR, BC, TM, TN, NX, NY, NT = t.br, t.bc, t.tm, t.tn, t.nx, t.ny, t.threads
    QS, PS = Dh + 1, BC + NX           # the row strides of shared_layout
    TD = max(Dh // NX, 1)              # output columns per thread in the forward and dQ kernels
    LOG_D = Dh.bit_length() - 1
    generate = philox.philox4x32_device()

    @cuda.jit(device=True, inline="always")
    def keys_seen(i0, Tq, Tk, causal):
        """How many keys the query rows i0 … i0 + BR − 1 may see: Tk, or fewer under the causal
        mask (query i sees keys j ≤ i + Tk − Tq; ≤ 0 when none of these rows sees any)."""
        last_row = i0 + BR - 1 if i0 + BR - 1 < Tq - 1 else Tq - 1
        limit = last_row + Tk - Tq + 1
        return limit if (causal and limit < Tk) else Tk

    @cuda.jit(device=True, inline="always")
    def key_flags(key_kept, keep, b, Tk, j0, tx):
        """key_kept[n] = 1.0 where the thread's n-th key of the tile, j0 + tx + NX·n, exists and is
        kept by the mask, else 0.0."""
        for n in range(TN):
            j = j0 + tx + NX * n
            key_kept[n] = 1.0 if (j < Tk and keep[uint64(b * Tk + j)] != 0) else 0.0

    @cuda.jit(device=True, inline="always")
    def tile_product(S, A_t, B_t, a, b):
        """S = A Bᵀ on the thread's TM × TN register tile, A and B tiles of Dh columns in shared
        memory: its rows NY·QS·m of A_t and NX·QS·n of B_t. Per d, TM + TN values read from shared
        memory feed TM·TN FMAs."""
        for mi in range(TM):
            for n in range(TN):
                S[mi, n] = 0.0
        for d0 in range(0, Dh, UNROLL):
            for u in range(UNROLL):
                for mi in range(TM):
                    a[mi] = A_t[uint64(NY * QS * mi + d0 + u)]
                for n in range(TN):
                    b[n] = B_t[uint64(NX * QS * n + d0 + u)]
                for mi in range(TM):
                    for n in range(TN):
                        S[mi, n] += a[mi] * b[n]

    @cuda.jit(device=True, inline="always")
    def tile_accumulate(acc, P_t, V_t, a, b):
        """acc += P V on the thread's TM × TD register tile: P a [BR, BC] tile in shared memory (the
        thread's rows NY·PS·m of P_t), V a [BC, Dh] one (its columns NX·c of V_t). Per key, TM + TD
        values read from shared memory feed TM·TD FMAs."""
        for j1 in range(0, BC, UNROLL):
            for u in range(UNROLL):
                for mi in range(TM):
                    a[mi] = P_t[uint64(NY * PS * mi + j1 + u)]
                for c in range(TD):
                    b[c] = V_t[uint64(QS * (j1 + u) + NX * c)]
                for mi in range(TM):
                    for c in range(TD):
                        acc[mi, c] += a[mi] * b[c]

    @cuda.jit(device=True, inline="always")
    def nanmax(a, b):
        """max(a, b) that keeps a NaN, as np.max does (a plain comparison would drop it)."""
        return a if (a > b or a != a) else b

    @cuda.jit(device=True, inline="always")
    def shift_of(m):
        """The shift of exp(S − shift): m, or 0 on a row with no kept key (m = -inf), as the
        reference's ``where(lse == -inf, 0, lse)``; a NaN stays NaN."""
        return m if m != -math.inf else real(0.0)

    @cuda.jit(device=True, inline="always")
    def stage_rows(dst, at, stride, rows, src, src_at, n_valid, factor, tid):
        """dst[at + r·stride + d] = factor · (rows of Dh of the flat ``src`` from element src_at
        on), for ``rows`` rows; zeros past the n_valid elements left in the (b, h) slab."""
        for e in range(tid, rows * Dh, NT):
            x = src[uint64(src_at + e)] * factor if e < n_valid else real(0.0)
            dst[uint64(at + (e >> LOG_D) * stride + (e & (Dh - 1)))] = x

    @cuda.jit(device=True, inline="always")
    def draw_dropout_mask(dst, at, stride, rows, cols, i0, j0, b, h, threshold, keep_scale, key0,
                          key1, tid):
        """dst[at + r·stride + c] = M/(1 − p) of (b, h, i0 + r, j0 + c): keep_scale or 0, four keys per
        Philox call (the layout of ``philox.attention_keep``; j0 is a multiple of 4). ``b`` is the
        global batch row b₀ + b (a uint64), the Philox counter's last word."""
        groups = cols // 4
        for e in range(tid, rows * groups, NT):
            r = e // groups
            g = e - r * groups
            w0, w1, w2, w3 = generate(uint64((j0 >> 2) + g), uint64(i0 + r), uint64(h), b,
                                      key0, key1)
            base = uint64(at + r * stride + 4 * g)
            dst[base] = keep_scale if w0 >= threshold else real(0.0)
            dst[base + uint64(1)] = keep_scale if w1 >= threshold else real(0.0)
            dst[base + uint64(2)] = keep_scale if w2 >= threshold else real(0.0)
            dst[base + uint64(3)] = keep_scale if w3 >= threshold else real(0.0)

    return (nanmax, shift_of, stage_rows, draw_dropout_mask, keys_seen, key_flags, tile_product,
            tile_accumulate)


def _build_forward(Dh, dtype, t: Tiles):
    real = from_dtype(np.dtype(dtype))
    BR, BC, TM, TN, NX, NY, NT = t.br, t.bc, t.tm, t.tn, t.nx, t.ny, t.threads
    TD = Dh // NX                      # output columns per thread: tx + NX·c
    LOG_NX = NX.bit_length() - 1
    lay = shared_layout("forward", Dh, t)
    QS, PS, RS = lay["QS"], lay["PS"], lay["RS"]
    Q_AT, K_AT, V_AT, P_AT, R_AT = lay["Q"], lay["K"], lay["V"], lay["P"], lay["R"]
    SHARE_KV = t.share_kv
    NEG_INF = -math.inf
    (nanmax, shift_of, stage_rows, draw_dropout_mask, keys_seen, key_flags, tile_product,
     tile_accumulate) = _device_helpers(Dh, real, t)

    @plumbing.jit(t)
    def forward(q, k, v, keep, H, Tq, Tk, causal, scale, dropout, threshold, keep_scale, key0, key1,
                batch0, out, lse):
        """out, lse of query rows blockIdx.x·BR … +BR of head blockIdx.y = b·H + h."""
        # long because: a CUDA kernel is one function; it reads top to bottom as _forward_task does
        smem = cuda.shared.array(0, real)
        bh = cuda.blockIdx.y
        b = bh // H
        h = bh - b * H
        i0 = cuda.blockIdx.x * BR
        tid = cuda.threadIdx.x
        tx = tid & (NX - 1)                # key (and output column) group of this thread
        ty = tid >> LOG_NX                 # query row group of this thread
        causal_offset = Tk - Tq
        q_at = bh * Tq * Dh                 # q[b, h, 0, 0] (and out's) in the flat arrays
        k_at = bh * Tk * Dh
        Q_t = smem[Q_AT + ty * QS:]        # the thread's first row or column of each tile: its
        K_t = smem[K_AT + tx * QS:]        # m-th query row is at NY·QS·m in Q_t, its n-th key at
        V_t = smem[V_AT + tx:]             # NX·QS·n in K_t, its c-th column of V_j at NX·c in
        P_t = smem[P_AT + ty * PS:]        # V_t, and so on
        R_t = smem[R_AT + ty * RS:]
        S = cuda.local.array((TM, TN), real)     # register tiles (unrolled: no local memory)
        acc = cuda.local.array((TM, TD), real)
        m_row = cuda.local.array(TM, real)       # running max of each of the thread's rows
        l_row = cuda.local.array(TM, real)       # the thread's share of the running sum
        key_kept = cuda.local.array(TN, real)    # 1.0 where key j0 + tx + NX·n is kept
        a = cuda.local.array(TM, real)
        bk = cuda.local.array(TN, real)
        bv = cuda.local.array(TD, real)
        for mi in range(TM):
            m_row[mi] = NEG_INF
            l_row[mi] = 0.0
            for c in range(TD):
                acc[mi, c] = 0.0
        stage_rows(smem, Q_AT, QS, BR, q, q_at + i0 * Dh, (Tq - i0) * Dh, scale, tid)   # Q · scale
        for j0 in range(0, keys_seen(i0, Tq, Tk, causal), BC):
            stage_rows(smem, K_AT, QS, BC, k, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
            if not SHARE_KV:
                stage_rows(smem, V_AT, QS, BC, v, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
            if dropout:
                draw_dropout_mask(smem, P_AT, PS, BR, BC, i0, j0, uint64(b) + batch0, h, threshold,
                                  keep_scale, key0, key1, tid)
            cuda.syncthreads()
            tile_product(S, Q_t, K_t, a, bk)       # S = (Q · scale) Kᵀ
            # masked keys → -inf, and the thread's share of each row's max
            key_flags(key_kept, keep, b, Tk, j0, tx)
            for mi in range(TM):
                i = i0 + ty + NY * mi
                row_max = real(NEG_INF)
                for n in range(TN):
                    j = j0 + tx + NX * n
                    if key_kept[n] == 0 or (causal and j > i + causal_offset):
                        S[mi, n] = NEG_INF
                    row_max = nanmax(row_max, S[mi, n])
                R_t[uint64(NY * RS * mi + tx)] = row_max
            cuda.syncthreads()
            if SHARE_KV:                   # every thread is done with K: V takes its place
                stage_rows(smem, V_AT, QS, BC, v, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
            # online softmax: m_new, alpha, P = exp(S − m_new) into shared memory
            for mi in range(TM):
                m_new = m_row[mi]
                for x in range(NX):
                    m_new = nanmax(m_new, R_t[uint64(NY * RS * mi + x)])
                m_use = shift_of(m_new)               # all keys masked so far: 0 (P = 0)
                alpha = math.exp(m_row[mi] - m_use)     # 0 when m was -inf; NaN stays NaN
                p_sum = real(0.0)
                for n in range(TN):
                    p = real(0.0) if S[mi, n] == NEG_INF else math.exp(S[mi, n] - m_use)
                    p_sum += p
                    at = uint64(NY * PS * mi + tx + NX * n)
                    P_t[at] = p * P_t[at] if dropout else p
                l_row[mi] = alpha * l_row[mi] + p_sum
                for c in range(TD):
                    acc[mi, c] *= alpha
                m_row[mi] = m_new
            cuda.syncthreads()
            tile_accumulate(acc, P_t, V_t, a, bv)    # acc += P V
            cuda.syncthreads()
        # l = the row's sum over its NX threads; out = acc / l, lse = m + log(l)
        for mi in range(TM):
            R_t[uint64(NY * RS * mi + tx)] = l_row[mi]
        cuda.syncthreads()
        for mi in range(TM):
            i = i0 + ty + NY * mi
            if i < Tq:
                l = real(0.0)
                for x in range(NX):
                    l += R_t[uint64(NY * RS * mi + x)]
                row_kept = m_row[mi] != NEG_INF          # (a NaN or +inf max: out, lse NaN)
                for c in range(TD):
                    out[uint64(q_at + i * Dh + tx + NX * c)] = acc[mi, c] / l if row_kept else acc[mi, c]
                if tx == 0:
                    lse[uint64(bh * Tq + i)] = m_row[mi] + math.log(l) if row_kept else real(NEG_INF)

    return forward


def _build_dkdv(Dh, dtype, t: Tiles):
    real = from_dtype(np.dtype(dtype))
    BR, BC, TM, TN, NX, NY, NT = t.br, t.bc, t.tm, t.tn, t.nx, t.ny, t.threads
    LOG_NX = NX.bit_length() - 1
    TD = DK_COLS                      # dK, dV tile of a thread: keys kr + NK·n, columns dc + ND·c
    ND = Dh // TD
    LOG_ND = ND.bit_length() - 1
    NK = NT // ND
    TK = BC // NK
    lay = shared_layout("dkdv", Dh, t)
    QS, PS = lay["QS"], lay["PS"]
    K_AT, V_AT, Q_AT, dZ_AT, P_AT, dS_AT, L_AT, D_AT = (lay[n] for n in
                                                         ("K", "V", "Q", "dZ", "P", "dS", "L", "D"))
    NEG_INF = -math.inf
    (nanmax, shift_of, stage_rows, draw_dropout_mask, keys_seen, key_flags, tile_product,
     tile_accumulate) = _device_helpers(Dh, real, t)

    @plumbing.jit(t)
    def dkdv(q, k, v, lse, dout, D, keep, H, Tq, Tk, causal, scale, dropout, threshold,
             keep_scale, key0, key1, batch0, dk, dv):
        """dK, dV of keys blockIdx.x·BC … +BC of head blockIdx.y = b·H + h."""
        # long because: a CUDA kernel is one function; it is _backward_task without its dQ line
        smem = cuda.shared.array(0, real)
        bh = cuda.blockIdx.y
        b = bh // H
        h = bh - b * H
        j0 = cuda.blockIdx.x * BC
        tid = cuda.threadIdx.x
        tx = tid & (NX - 1)                # scores: keys tx + NX·n ...
        ty = tid >> LOG_NX                 # ... of queries ty + NY·m
        dc = tid & (ND - 1)                # gradients: columns dc + ND·c ...
        kr = tid >> LOG_ND                 # ... of keys kr + NK·n
        causal_offset = Tk - Tq
        q_at = bh * Tq * Dh
        k_at = bh * Tk * Dh
        Q_t = smem[Q_AT + ty * QS:]
        dZ_t = smem[dZ_AT + ty * QS:]
        K_t = smem[K_AT + tx * QS:]
        V_t = smem[V_AT + tx * QS:]
        P_t = smem[P_AT + ty * PS:]
        dS_t = smem[dS_AT + ty * PS:]
        S = cuda.local.array((TM, TN), real)
        dP = cuda.local.array((TM, TN), real)
        dK = cuda.local.array((TK, TD), real)
        dV = cuda.local.array((TK, TD), real)
        key_kept = cuda.local.array(TN, real)    # 1.0 where key j0 + tx + NX·n is kept
        aq = cuda.local.array(TM, real)
        bk = cuda.local.array(TN, real)
        gp = cuda.local.array(TK, real)
        gs = cuda.local.array(TK, real)
        cq = cuda.local.array(TD, real)
        co = cuda.local.array(TD, real)
        key_flags(key_kept, keep, b, Tk, j0, tx)
        for n in range(TK):
            for c in range(TD):
                dK[n, c] = 0.0
                dV[n, c] = 0.0
        stage_rows(smem, K_AT, QS, BC, k, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
        stage_rows(smem, V_AT, QS, BC, v, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
        i_start = 0                        # the first query that may see key j0
        if causal and j0 - causal_offset > 0:
            i_start = j0 - causal_offset
        for i0 in range(i_start, Tq, BR):
            stage_rows(smem, Q_AT, QS, BR, q, q_at + i0 * Dh, (Tq - i0) * Dh, scale, tid)  # Q · scale
            stage_rows(smem, dZ_AT, QS, BR, dout, q_at + i0 * Dh, (Tq - i0) * Dh, real(1.0), tid)
            for r in range(tid, BR, NT):
                i = i0 + r
                smem[L_AT + r] = shift_of(lse[uint64(bh * Tq + i)]) if i < Tq else real(0.0)
                smem[D_AT + r] = D[uint64(bh * Tq + i)] if i < Tq else real(0.0)
            if dropout:
                draw_dropout_mask(smem, P_AT, PS, BR, BC, i0, j0, uint64(b) + batch0, h, threshold,
                                  keep_scale, key0, key1, tid)
            cuda.syncthreads()
            tile_product(S, Q_t, K_t, aq, bk)      # S = (Q · scale) Kᵀ
            tile_product(dP, dZ_t, V_t, aq, bk)    # dP̃ = dZ Vᵀ
            # P = exp(S − lse) and dS = P ∘ (dP − Dh), both exactly 0 where S = -inf (masked)
            for mi in range(TM):
                r = ty + NY * mi
                i = i0 + r
                lse_i = smem[L_AT + r]
                D_i = smem[D_AT + r]
                for n in range(TN):
                    j = j0 + tx + NX * n
                    visible = key_kept[n] != 0 and i < Tq and (not causal or j <= i + causal_offset)
                    at = uint64(NY * PS * mi + tx + NX * n)
                    drop = P_t[at] if dropout else real(1.0)     # M/(1 − p), drawn above
                    if not visible or S[mi, n] == NEG_INF:
                        P_t[at] = 0.0
                        dS_t[at] = 0.0
                    else:
                        p = math.exp(S[mi, n] - lse_i)
                        P_t[at] = p * drop                     # P̃ = P ∘ M/(1 − p)
                        dS_t[at] = p * (dP[mi, n] * drop - D_i)  # dP = dP̃ ∘ M/(1 − p)
            cuda.syncthreads()
            # dV += P̃ᵀ dZ and dK += dSᵀ (Q · scale) on the thread's TK × TD tiles
            for i1 in range(0, BR, UNROLL):
                for u in range(UNROLL):
                    ii = i1 + u
                    for n in range(TK):
                        gp[n] = smem[uint64(P_AT + ii * PS + kr + NK * n)]
                        gs[n] = smem[uint64(dS_AT + ii * PS + kr + NK * n)]
                    for c in range(TD):
                        co[c] = smem[uint64(dZ_AT + ii * QS + dc + ND * c)]
                        cq[c] = smem[uint64(Q_AT + ii * QS + dc + ND * c)]
                    for n in range(TK):
                        for c in range(TD):
                            dV[n, c] += gp[n] * co[c]
                            dK[n, c] += gs[n] * cq[c]
            cuda.syncthreads()
        for n in range(TK):
            j = j0 + kr + NK * n
            if j < Tk:
                kept = keep[uint64(b * Tk + j)] != 0    # a masked key is not an input: dK = dV = 0
                for c in range(TD):
                    dk[uint64(k_at + j * Dh + dc + ND * c)] = dK[n, c] if kept else real(0.0)
                    dv[uint64(k_at + j * Dh + dc + ND * c)] = dV[n, c] if kept else real(0.0)

    return dkdv


def _build_dq(Dh, dtype, t: Tiles):
    real = from_dtype(np.dtype(dtype))
    BR, BC, TM, TN, NX, NY, NT = t.br, t.bc, t.tm, t.tn, t.nx, t.ny, t.threads
    TD = Dh // NX                      # gradient columns per thread: tx + NX·c
    LOG_NX = NX.bit_length() - 1
    lay = shared_layout("dq", Dh, t)
    QS, PS = lay["QS"], lay["PS"]
    Q_AT, dZ_AT, K_AT, V_AT, dS_AT = (lay[n] for n in ("Q", "dZ", "K", "V", "dS"))
    NEG_INF = -math.inf
    (nanmax, shift_of, stage_rows, draw_dropout_mask, keys_seen, key_flags, tile_product,
     tile_accumulate) = _device_helpers(Dh, real, t)

    @plumbing.jit(t)
    def dq_kernel(q, k, v, lse, dout, D, keep, H, Tq, Tk, causal, scale, dropout, threshold,
                  keep_scale, key0, key1, batch0, dq):
        """dQ of query rows blockIdx.x·BR … +BR of head blockIdx.y = b·H + h."""
        # long because: a CUDA kernel is one function; it is _backward_task's dQ line, tiled
        smem = cuda.shared.array(0, real)
        bh = cuda.blockIdx.y
        b = bh // H
        h = bh - b * H
        i0 = cuda.blockIdx.x * BR
        tid = cuda.threadIdx.x
        tx = tid & (NX - 1)
        ty = tid >> LOG_NX
        causal_offset = Tk - Tq
        q_at = bh * Tq * Dh
        k_at = bh * Tk * Dh
        Q_t = smem[Q_AT + ty * QS:]
        dZ_t = smem[dZ_AT + ty * QS:]
        K_t = smem[K_AT + tx * QS:]
        V_t = smem[V_AT + tx * QS:]
        dS_t = smem[dS_AT + ty * PS:]
        Kc_t = smem[K_AT + tx:]                  # column tx of K_j, for dS K
        S = cuda.local.array((TM, TN), real)
        dP = cuda.local.array((TM, TN), real)
        dQ = cuda.local.array((TM, TD), real)
        lse_safe = cuda.local.array(TM, real)    # lse of the thread's rows (0 where -inf)
        D_rows = cuda.local.array(TM, real)      # D = rowsum(dZ ∘ Z) of the thread's rows
        key_kept = cuda.local.array(TN, real)
        aq = cuda.local.array(TM, real)
        bk = cuda.local.array(TN, real)
        ck = cuda.local.array(TD, real)
        for mi in range(TM):
            i = i0 + ty + NY * mi
            lse_safe[mi] = shift_of(lse[uint64(bh * Tq + i)]) if i < Tq else real(0.0)
            D_rows[mi] = D[uint64(bh * Tq + i)] if i < Tq else real(0.0)
            for c in range(TD):
                dQ[mi, c] = 0.0
        stage_rows(smem, Q_AT, QS, BR, q, q_at + i0 * Dh, (Tq - i0) * Dh, scale, tid)    # Q · scale
        stage_rows(smem, dZ_AT, QS, BR, dout, q_at + i0 * Dh, (Tq - i0) * Dh, real(1.0), tid)
        for j0 in range(0, keys_seen(i0, Tq, Tk, causal), BC):
            stage_rows(smem, K_AT, QS, BC, k, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
            stage_rows(smem, V_AT, QS, BC, v, k_at + j0 * Dh, (Tk - j0) * Dh, real(1.0), tid)
            if dropout:
                draw_dropout_mask(smem, dS_AT, PS, BR, BC, i0, j0, uint64(b) + batch0, h, threshold,
                                  keep_scale, key0, key1, tid)
            cuda.syncthreads()
            tile_product(S, Q_t, K_t, aq, bk)      # S = (Q · scale) Kᵀ
            tile_product(dP, dZ_t, V_t, aq, bk)    # dP̃ = dZ Vᵀ
            key_flags(key_kept, keep, b, Tk, j0, tx)
            # dS = P ∘ (dP − Dh) with P = exp(S − lse), exactly 0 where S = -inf (masked)
            for mi in range(TM):
                i = i0 + ty + NY * mi
                for n in range(TN):
                    j = j0 + tx + NX * n
                    visible = key_kept[n] != 0 and i < Tq and (not causal or j <= i + causal_offset)
                    at = uint64(NY * PS * mi + tx + NX * n)
                    drop = dS_t[at] if dropout else real(1.0)    # M/(1 − p), drawn above
                    if not visible or S[mi, n] == NEG_INF:
                        dS_t[at] = 0.0
                    else:
                        dS_t[at] = math.exp(S[mi, n] - lse_safe[mi]) * (dP[mi, n] * drop - D_rows[mi])
            cuda.syncthreads()
            tile_accumulate(dQ, dS_t, Kc_t, aq, ck)   # dQ += dS K (· scale at the end)
            cuda.syncthreads()
        for mi in range(TM):
            i = i0 + ty + NY * mi
            if i < Tq:
                for c in range(TD):
                    dq[uint64(q_at + i * Dh + tx + NX * c)] = dQ[mi, c] * scale

    return dq_kernel


_BUILDERS = {"forward": _build_forward, "dkdv": _build_dkdv, "dq": _build_dq}
_KERNELS: dict = {}


def build_kernel(kernel: str, Dh: int, dtype, tiles: Tiles):
    """The numba.cuda kernel ``kernel`` ("forward", "dkdv", "dq") for head size Dh, dtype and tiles
    (compiled on first launch; built once per combination)."""
    dtype = np.dtype(dtype)
    tiles.check(Dh, kernel)
    key = (kernel, Dh, dtype.name, tiles)
    if key not in _KERNELS:
        _KERNELS[key] = _BUILDERS[kernel](Dh, dtype, tiles)
    return _KERNELS[key]


def compile_ptx(kernel: str, Dh: int, dtype, tiles=None, cc=(9, 0)) -> str:
    """The PTX of ``kernel`` for head size Dh and dtype (default tiles), for compute capability cc;
    needs the CUDA toolkit's NVVM, not a GPU."""
    tiles = tiles or CONFIGS[(Dh, np.dtype(dtype).name)][kernel]
    return plumbing.ptx(build_kernel(kernel, Dh, dtype, tiles), kernel, dtype, tiles, cc)


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------

def launch(kernel: str, Dh: int, dtype, grid_rows: int, BH: int, args, tiles: Tiles | None = None):
    """Launch ``kernel`` over ceil(grid_rows / tile rows) × BH blocks with its default tiles (or
    ``tiles``), falling back to ``SMALL_CONFIGS`` when the GPU refuses the shared memory.
    Returns the tiles used."""
    name = np.dtype(dtype).name
    candidates = [tiles] if tiles is not None else [CONFIGS[(Dh, name)][kernel],
                                                   SMALL_CONFIGS[(Dh, name)][kernel]]
    for t in candidates:
        fn = build_kernel(kernel, Dh, dtype, t)
        nbytes = shared_bytes(kernel, Dh, dtype, t)
        if plumbing.allow_shared(fn, args, nbytes) or t is candidates[-1]:
            rows = t.bc if kernel == "dkdv" else t.br
            fn[((grid_rows + rows - 1) // rows, BH), t.threads, 0, nbytes](*args)
            return t
    raise AssertionError("unreachable")


def _prepare(q, k, v, mask, causal, scale, dropout_p, dropout_seed, dropout_offset=0):
    """Contiguous arrays padded to a compiled head size, the keep mask as uint8 [B, Tk], and the
    scalar arguments of the kernels: (H, Tq, Tk, causal, scale) and the dropout's six (dropout,
    threshold, keep_scale, key0, key1, batch0 = dropout_offset)."""
    xp = get_array_module(q)
    B, H, Tq, Dh = q.shape
    if Dh > HEAD_SIZES[-1]:
        raise ValueError(f"head size D={Dh} is larger than the CUDA kernels' largest, {HEAD_SIZES[-1]}")
    if B * H > 65535:
        raise ValueError(f"B·H = {B}·{H} = {B * H} heads: the CUDA kernels take at most 65,535 "
                         "(one grid row each); split the batch")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r} must be in [0, 1)")
    if dropout_p > 0 and dropout_seed is None:
        raise TypeError(f"dropout_p={dropout_p} needs dropout_seed, an integer in [0, 2**64)")
    dropout_offset = check_dropout_offset(dropout_offset)
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    Dk = next(size for size in HEAD_SIZES if size >= Dh)
    q, k, v = (_pad_head(xp, a, Dk) for a in (q, k, v))
    Tk = k.shape[2]
    keep = (xp.ones((B, Tk), dtype=xp.uint8) if mask is None
            else xp.ascontiguousarray(mask).astype(xp.uint8))
    if dropout_p > 0:
        key0, key1 = philox.split_seed(dropout_seed)
        drop = (True, np.uint64(philox.dropout_threshold(dropout_p)),
                q.dtype.type(1.0 / (1.0 - dropout_p)), np.uint64(key0), np.uint64(key1),
                np.uint64(dropout_offset))
    else:
        drop = (False, np.uint64(0), q.dtype.type(1.0), np.uint64(0), np.uint64(0), np.uint64(0))
    scalars = (H, Tq, Tk, bool(causal), q.dtype.type(scale))
    return xp, q, k, v, keep, scalars + drop, Dh


def _pad_head(xp, a, Dk):
    """``a`` contiguous, with its last axis zero-padded to Dk."""
    if a.shape[-1] == Dk:
        return xp.ascontiguousarray(a)
    padded = xp.zeros(a.shape[:-1] + (Dk,), dtype=a.dtype)
    padded[..., :a.shape[-1]] = a
    return padded


def forward_call(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, dropout_seed=None,
                 dropout_offset=0):
    """The forward kernel's launch: (args, grid_rows, B·H, head size compiled, out, lse), where
    out [B, H, Tq, Dk] and lse [B, H, Tq] are the arrays the kernel writes. ``launch("forward",
    Dk, q.dtype, grid_rows, BH, args)`` runs it (``bench/_gpu_bench.py`` times it this way)."""
    xp, q, k, v, keep, scalars, _ = _prepare(q, k, v, mask, causal, scale, dropout_p, dropout_seed,
                                             dropout_offset)
    B, H, Tq, Dk = q.shape
    out = xp.empty_like(q)
    lse = xp.empty((B, H, Tq), dtype=q.dtype)
    args = tuple(a.reshape(-1) for a in (q, k, v, keep)) + scalars + (out.reshape(-1), lse.reshape(-1))
    return args, Tq, B * H, Dk, out, lse


def backward_calls(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                   dropout_seed=None, dropout_offset=0):
    """The backward kernels' launches: {"dkdv": (args, grid_rows, B·H), "dq": (...)}, the head
    size compiled and the arrays they write, (dq, dk, dv) with the head padded to Dk."""
    xp, q, k, v, keep, scalars, _ = _prepare(q, k, v, mask, causal, scale, dropout_p, dropout_seed,
                                             dropout_offset)
    B, H, Tq, Dk = q.shape
    D = xp.ascontiguousarray((dout * out).sum(axis=-1))       # D = rowsum(dZ ∘ Z)
    dout = _pad_head(xp, dout, Dk)
    lse = xp.ascontiguousarray(lse)
    dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)
    common = tuple(a.reshape(-1) for a in (q, k, v, lse, dout, D, keep)) + scalars
    calls = {"dkdv": (common + (dk.reshape(-1), dv.reshape(-1)), k.shape[2], B * H),
             "dq": (common + (dq.reshape(-1),), Tq, B * H)}
    return calls, Dk, (dq, dk, dv)


def attention_forward(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, dropout_seed=None,
                      tiles=None, dropout_offset=0):
    """Z = dropout(softmax(Q Kᵀ · scale + mask)) V and the row log-sum-exp, on the GPU.

    Args: as ``attention_numpy.attention_forward``; dropout_p in [0, 1), dropout_seed an integer in
    [0, 2⁶⁴) (needed when dropout_p > 0); ``tiles``: {"forward": Tiles} to override ``CONFIGS``;
    ``dropout_offset``: the global batch index b₀ of row 0 (data parallel), 0 in one process.
    Returns: out [B, H, Tq, Dh], lse [B, H, Tq].
    """
    Dh = q.shape[-1]
    args, rows, BH, Dk, out, lse = forward_call(q, k, v, mask, causal, scale, dropout_p, dropout_seed,
                                                dropout_offset)
    launch("forward", Dk, out.dtype, rows, BH, args, (tiles or {}).get("forward"))
    return (out[..., :Dh] if Dk != Dh else out), lse


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                       dropout_seed=None, tiles=None, dropout_offset=0):
    """Gradients of ``attention_forward`` (same mask, causal, scale and dropout arguments, the
    offset included);
    ``tiles``: {"dkdv": Tiles, "dq": Tiles} to override ``CONFIGS``.

    Returns: dq [B, H, Tq, Dh], dk [B, H, Tk, Dh], dv [B, H, Tk, Dh].
    """
    Dh = q.shape[-1]
    calls, Dk, grads = backward_calls(q, k, v, out, lse, dout, mask, causal, scale, dropout_p,
                                      dropout_seed, dropout_offset)
    for kernel, (args, rows, BH) in calls.items():
        launch(kernel, Dk, grads[0].dtype, rows, BH, args, (tiles or {}).get(kernel))
    return tuple(g[..., :Dh] for g in grads) if Dk != Dh else grads


__all__ = ["attention_forward", "attention_backward", "build_kernel", "compile_ptx", "launch",
           "forward_call", "backward_calls", "Tiles", "CONFIGS", "SMALL_CONFIGS", "HEAD_SIZES"]
