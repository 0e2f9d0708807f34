"""Run the CUDA attention kernels under Numba's CUDA simulator and compare with the reference.

Started by tests/test_kernels_cudasim.py in its own process with NUMBA_ENABLE_CUDASIM=1 (the
variable must be set before numba is imported). Exits 0 when every case matches, prints the worst
difference of every tensor, and exits 1 otherwise.
"""
import os
import sys

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from tinybert_kernels import attention_cuda, attention_numpy  # noqa: E402

# (B, H, Tq, Tk, D, causal, mask kind, dtype): partial tiles (T not a multiple of the tile or of
# ROWS_PER_BLOCK), Tq != Tk, padding, causal with padding, a batch row with every key masked.
CASES = [
    (1, 2, 5, 37, 8, False, "pad", np.float64),
    (2, 1, 70, 70, 4, True, "pad", np.float64),
    (2, 1, 9, 20, 16, False, "empty", np.float32),
    (1, 1, 33, 17, 8, True, None, np.float32),
]


def make_case(B, H, Tq, Tk, D, mask_kind, dtype, rng):
    q, dout = (rng.standard_normal((B, H, Tq, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, H, Tk, D)).astype(dtype) for _ in range(2))
    mask = None
    if mask_kind is not None:
        mask = np.ones((B, Tk), dtype=bool)
        mask[0, Tk - Tk // 3:] = False                # padding at the end of the first sequence
        if mask_kind == "empty":
            mask[B - 1, :] = False                    # a sequence with no kept key at all
    return q, k, v, mask, dout


def finite_difference_check(rng):
    """dq, dk, dv of the CUDA kernels against central differences of L = Σ out ∘ dout (float64)."""
    B, H, Tq, Tk, D = 1, 1, 3, 4, 2
    q, k, v, _, dout = make_case(B, H, Tq, Tk, D, None, np.float64, rng)
    mask = np.array([[True, False, True, True]])
    out, lse = attention_cuda.attention_forward(q, k, v, mask=mask, causal=True)
    analytic = attention_cuda.attention_backward(q, k, v, out, lse, dout, mask=mask, causal=True)
    eps = 1e-6
    worst = 0.0
    for x, g in zip((q, k, v), analytic):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            plus = np.sum(attention_cuda.attention_forward(q, k, v, mask=mask, causal=True)[0] * dout)
            x[idx] = old - eps
            minus = np.sum(attention_cuda.attention_forward(q, k, v, mask=mask, causal=True)[0] * dout)
            x[idx] = old
            numeric[idx] = (plus - minus) / (2 * eps)
        worst = max(worst, float(np.abs(g - numeric).max() / (np.abs(g).max() + np.abs(numeric).max())))
    ok = worst < 1e-7
    print(f"finite differences (float64, causal + padding, Tq < Tk): worst relative error {worst:.1e}"
          f"{'' if ok else ' FAIL'}", flush=True)
    return ok


def main():
    rng = np.random.default_rng(0)
    failed = 0
    failed += not finite_difference_check(rng)
    for B, H, Tq, Tk, D, causal, mask_kind, dtype in CASES:
        q, k, v, mask, dout = make_case(B, H, Tq, Tk, D, mask_kind, dtype, rng)
        tol = 1e-10 if dtype == np.float64 else 2e-5
        out, lse = attention_cuda.attention_forward(q, k, v, mask=mask, causal=causal)
        grads = attention_cuda.attention_backward(q, k, v, out, lse, dout, mask=mask, causal=causal)
        out_ref, lse_ref = attention_numpy.attention_forward(q, k, v, mask=mask, causal=causal)
        grads_ref = attention_numpy.attention_backward(q, k, v, out_ref, lse_ref, dout, mask=mask,
                                                       causal=causal)
        names = ["out", "lse", "dq", "dk", "dv"]
        ours = [out, lse] + list(grads)
        refs = [out_ref, lse_ref] + list(grads_ref)
        line = []
        for name, a, r in zip(names, ours, refs):
            same_inf = np.array_equal(np.isneginf(a), np.isneginf(r))
            finite = np.isfinite(r)
            worst = float(np.max(np.abs(a[finite] - r[finite]) / (1 + np.abs(r[finite])), initial=0))
            ok = same_inf and worst <= tol and not np.isnan(a).any()
            failed += not ok
            line.append(f"{name} {worst:.1e}{'' if ok else ' FAIL'}")
        print(f"B={B} H={H} Tq={Tq} Tk={Tk} D={D} causal={causal} mask={mask_kind} "
              f"{np.dtype(dtype).name}: " + ", ".join(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
