"""Solutions to lesson 08's exercises (run one with: lessons/08_fused_attention.py --exercise N)."""
import math

import numpy as np

from _08_online import online_softmax_row, print_trace

from tinybert_kernels import attention_numba, dispatch


def exercise_1(lesson):
    """In step 2 use key blocks of 3 or 6 (online_softmax_row(q[row], k, v, 3)) instead of 4.

    You should see a different table of m, α and l (4 or 2 blocks instead of 3), and the same final z
    and lse to 1e-12: the block size changes the order of the work, not the result.
    """
    rng = np.random.default_rng(lesson.seed)
    T, D = 12, 4
    q, k, v = rng.standard_normal((3, T, D))              # the lesson's example, the same seed
    A = q[0] @ k.T / math.sqrt(D)
    S = np.exp(A - A.max())
    z_ref, lse_ref = (S / S.sum()) @ v, float(np.log(np.exp(A).sum()))
    results = {}
    for block in (3, 4, 6):
        print(f"\n  key blocks of {block}:")
        z, lse, trace = online_softmax_row(q[0], k, v, block)
        print_trace(trace)
        results[block] = (z, lse, len(trace), [t["m"] for t in trace])
    worst = max(max(np.abs(z - z_ref).max(), abs(lse - lse_ref)) for z, lse, _, _ in results.values())
    lesson.claim("blocks of 3, 4 and 6 give {a}, {b} and {c} rows in the table, and the same z and lse as the "
                 "softmax over all keys: worst difference {w:.1e}",
                 [results[b][2] for b in (3, 4, 6)] == [4, 3, 2] and worst < 1e-12,
                 a=results[3][2], b=results[4][2], c=results[6][2], w=worst)


def exercise_2(lesson):
    """Work in float32 and make the scores large: Q *= 30, so that some scores pass ln(float32 max) ≈ 88.7;
    compare a naive softmax exp(A) / Σ exp(A) with the Numba kernel, both in float32.

    You should see the naive softmax overflow (exp gives inf, inf/inf gives NaN rows), while the
    kernel, whose running maximum keeps every exp() ≤ 1, stays finite and within 1e-4 of the float64
    reference.
    """
    rng = np.random.default_rng(lesson.seed)
    B, H, T, D = 1, 2, 200, 16
    q, k, v = rng.standard_normal((3, B, H, T, D))
    q *= 30                                                # very peaked rows
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    A32 = q32 @ np.swapaxes(k32, -1, -2) / np.float32(math.sqrt(D))
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(A32)                                    # the naive softmax, no max subtracted
        naive = (e / e.sum(-1, keepdims=True)) @ v32
    limit = math.log(np.finfo(np.float32).max)
    nan_rows = int(np.isnan(naive).any(-1).sum())
    z_kernel, _ = attention_numba.attention_forward(q32, k32, v32)
    z_ref, _ = dispatch.attention_forward(q, k, v, backend="numpy")   # float64, max subtracted
    err = float(np.abs(z_kernel - z_ref).max())
    lesson.value("largest score", float(A32.max()), f"ln(float32 max) = {limit:.1f}")
    lesson.value("naive float32 softmax", f"{nan_rows} of {B * H * T} rows NaN")
    lesson.value("fused kernel, float32", f"max |Z − Z_float64| = {err:.1e}")
    lesson.claim("with Q ×30 the largest score is {a:.0f} > {lim:.1f}: the naive float32 softmax overflows, "
                 "{n} of {rows} rows NaN; the kernel's float32 Z is finite and within {e:.1e} of the float64 "
                 "reference", A32.max() > limit and nan_rows > 0 and np.isfinite(z_kernel).all() and err < 1e-4,
                 a=float(A32.max()), lim=limit, n=nan_rows, rows=B * H * T, e=err)


def exercise_3(lesson):
    """Read the kernel's tile record (attention_forward_tiles) for causal attention at T = 256, 1024 and
    4096: what share of the tiles does it never visit?

    You should see (n − 1)/(2n) with n = T/BLOCK_Q query blocks — 25%, 44%, 48% — rising towards one
    half but never reaching it, because the tiles on the diagonal are computed and masked inside.
    """
    rng = np.random.default_rng(lesson.seed)
    shares, expected = [], []
    for T in (256, 1024, 4096):
        q, k, v = rng.standard_normal((3, 1, 1, T, 8))
        _, _, tiles = attention_numba.attention_forward_tiles(q, k, v, causal=True)
        what = tiles[0, 0, :, :, 0]
        skipped = float((what == attention_numba.TILE_NOT_VISITED).mean())
        n = T // attention_numba.BLOCK_Q
        shares.append(skipped)
        expected.append((n - 1) / (2 * n))
        lesson.value(f"T = {T}", f"{int((what == attention_numba.TILE_NOT_VISITED).sum())} of {what.size} tiles "
                     f"never visited ({skipped:.1%}); masked on the diagonal: "
                     f"{int((what == attention_numba.TILE_MASKED).sum())}")
    lesson.claim("the kernel never visits {a:.0%}, {b:.0%} and {c:.0%} of the tiles at T = 256, 1024, 4096 — "
                 "exactly (n − 1)/(2n) for n = T/BLOCK_Q — rising towards ½ and staying below it",
                 np.allclose(shares, expected) and shares[0] < shares[1] < shares[2] < 0.5,
                 a=shares[0], b=shares[1], c=shares[2])
