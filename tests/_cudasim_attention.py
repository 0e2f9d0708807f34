"""Run the CUDA attention kernels under Numba's CUDA simulator and compare with the reference.

Started by tests/test_kernels_cudasim.py in its own process with NUMBA_ENABLE_CUDASIM=1 (the
variable must be set before numba is imported). Exits 0 when every case matches, prints the worst
difference of every tensor, and exits 1 otherwise. Covers attention dropout (the reference's mask,
bit for bit, read back from the kernels' outputs; finite differences with dropout on; a
data-parallel rank's slice of the batch with its ``dropout_offset``) and NaN / infinity
propagation (the same NaN positions as the reference).
"""
import os
import sys
import warnings

import numpy as np

warnings.simplefilter("ignore", RuntimeWarning)   # overflow and NaN are what the NaN cases test

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from tinybert_kernels import attention_cuda, attention_numpy, philox  # noqa: E402

# (B, H, Tq, Tk, D, causal, mask kind, dtype, dropout p): partial tiles (T not a multiple of the
# tile or of ROWS_PER_BLOCK), Tq != Tk, padding, causal with padding, a batch row with every key
# masked, attention dropout.
CASES = [
    (1, 2, 5, 37, 8, False, "pad", np.float64, 0.0),
    (2, 1, 70, 70, 4, True, "pad", np.float64, 0.0),
    (2, 1, 9, 20, 16, False, "empty", np.float32, 0.0),
    (1, 1, 33, 17, 8, True, None, np.float32, 0.0),
    (2, 2, 21, 37, 8, False, "pad", np.float64, 0.3),
    (1, 2, 40, 35, 4, True, "pad", np.float32, 0.1),
]
SEED = 0x5EED_0123_4567_89AB


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


def finite_difference_check(rng, dropout_p=0.0, kernels=attention_cuda):
    """dq, dk, dv of the CUDA kernels (module ``kernels``) against central differences of
    L = Σ out ∘ dout (float64); with dropout the seed fixes the mask, so the function is
    deterministic."""
    B, H, Tq, Tk, D = 1, 1, 3, 6, 2
    q, k, v, _, dout = make_case(B, H, Tq, Tk, D, None, np.float64, rng)
    mask = np.array([[True, False, True, True, True, True]])
    fwd = dict(mask=mask, causal=True, dropout_p=dropout_p, dropout_seed=SEED)
    out, lse = kernels.attention_forward(q, k, v, **fwd)
    analytic = kernels.attention_backward(q, k, v, out, lse, dout, **fwd)
    eps = 1e-6
    worst = 0.0
    for x, g in zip((q, k, v), analytic):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            plus = np.sum(kernels.attention_forward(q, k, v, **fwd)[0] * dout)
            x[idx] = old - eps
            minus = np.sum(kernels.attention_forward(q, k, v, **fwd)[0] * dout)
            x[idx] = old
            numeric[idx] = (plus - minus) / (2 * eps)
        worst = max(worst, float(np.abs(g - numeric).max() / (np.abs(g).max() + np.abs(numeric).max())))
    ok = worst < 1e-7
    print(f"finite differences (float64, causal + padding, Tq < Tk, dropout {dropout_p}): worst relative "
          f"error {worst:.1e}{'' if ok else ' FAIL'}", flush=True)
    return ok


def dropout_mask_check(kernels=attention_cuda, B=2, H=3, n=24):
    """The kernels' dropout mask equals the reference's bit for bit: with q = 0 every kept weight
    is 1/Tk, so with V = I the forward's out is P̃ itself, and with dZ = I the backward's dV is P̃ᵀ;
    their nonzero pattern is the mask."""
    p = 0.3
    q = np.zeros((B, H, n, n))
    k = np.random.default_rng(1).standard_normal((B, H, n, n))
    eye = np.broadcast_to(np.eye(n), (B, H, n, n)).copy()
    want = philox.attention_keep(SEED, p, B, H, n, n)
    out, lse = kernels.attention_forward(q, k, eye, dropout_p=p, dropout_seed=SEED)
    _, _, dv = kernels.attention_backward(q, k, eye, out, lse, eye, dropout_p=p, dropout_seed=SEED)
    ok = (np.array_equal(out > 0, want) and np.array_equal(np.swapaxes(dv, -1, -2) > 0, want)
          and np.allclose(out[want], 1 / (n * (1 - p))))
    print(f"dropout mask: forward and backward equal the reference bit for bit ({want.size} draws)"
          f"{'' if ok else ' FAIL'}", flush=True)
    return ok


def batch_offset_check(kernels=attention_cuda, B=5, rows=(2, 4)):
    """Data parallel: a rank holding rows b₀:b₁ of a batch of B passes dropout_offset=b₀ and gets
    exactly (bit for bit) those rows of the whole batch's out, lse, dq, dk and dv; the reference
    with the same offset agrees; without the offset the slice draws rows 0.. 's masks and differs."""
    rng = np.random.default_rng(2)
    H, T, D, p = 1, 8, 4, 0.3
    q, k, v, dout = (rng.standard_normal((B, H, T, D)) for _ in range(4))
    mask = np.ones((B, T), dtype=bool)
    mask[2, 5:] = False                                 # padding in one of the slice's rows
    kw = dict(dropout_p=p, dropout_seed=SEED)
    whole = kernels.attention_forward(q, k, v, mask=mask, **kw)
    whole = whole + kernels.attention_backward(q, k, v, *whole, dout, mask=mask, **kw)
    s = slice(*rows)
    part_kw = dict(kw, mask=mask[s], dropout_offset=rows[0])
    part = kernels.attention_forward(q[s], k[s], v[s], **part_kw)
    part = part + kernels.attention_backward(q[s], k[s], v[s], *part, dout[s], **part_kw)
    ref = attention_numpy.attention_forward(q[s], k[s], v[s], **part_kw)
    ref = ref + attention_numpy.attention_backward(q[s], k[s], v[s], *ref, dout[s], **part_kw)
    unshifted, _ = kernels.attention_forward(q[s], k[s], v[s], mask=mask[s], **kw)
    equal = all(np.array_equal(w[s], a) for w, a in zip(whole, part))
    worst = max(float(np.max(np.abs(a - r) / (1 + np.abs(r)))) for a, r in zip(part, ref))
    ok = equal and worst <= 1e-10 and not np.array_equal(whole[0][s], unshifted)
    print(f"batch offset: rows {rows[0]}:{rows[1]} of B={B} with dropout_offset={rows[0]} equal the whole "
          f"batch's out, lse, dq, dk, dv bit for bit: {equal}; the reference's worst {worst:.1e}; "
          f"without the offset out differs: {not np.array_equal(whole[0][s], unshifted)}"
          f"{'' if ok else ' FAIL'}", flush=True)
    return ok


NAN_CASES = ("nan_q", "nan_k", "nan_v", "overflow", "scale_nan")


def nan_check(rng, kernels=attention_cuda, names=NAN_CASES):
    """NaN and infinity land where the reference puts them: a NaN in one query, key and value
    element, scores that overflow to +inf, scale = NaN."""
    B, H, Tq, Tk, D = 2, 1, 9, 11, 4
    failed = 0
    for name in names:
        q, k, v, mask, dout = make_case(B, H, Tq, Tk, D, "pad", np.float32, rng)
        scale = None
        if name == "nan_q":
            q[0, 0, 3, 1] = np.nan
        elif name == "nan_k":
            k[1, 0, 2, 0] = np.nan
        elif name == "nan_v":
            v[0, 0, 1, 2] = np.nan
        elif name == "nan_dout":
            dout[1, 0, 5, 3] = np.nan
        elif name == "overflow":
            k = np.abs(k) + 1                              # positive terms: q·k overflows to +inf
            q[1, 0, 4] = 3e38                              # in any order of summation
        else:
            scale = float("nan")
        ours = kernels.attention_forward(q, k, v, mask=mask, scale=scale)
        ours = ours + kernels.attention_backward(q, k, v, *ours, dout, mask=mask, scale=scale)
        ref = attention_numpy.attention_forward(q, k, v, mask=mask, scale=scale)
        ref = ref + attention_numpy.attention_backward(q, k, v, *ref, dout, mask=mask, scale=scale)
        same = all(np.array_equal(np.isnan(a), np.isnan(r)) and np.array_equal(np.isinf(a), np.isinf(r))
                   for a, r in zip(ours, ref))
        close = all(np.allclose(a[np.isfinite(r)], r[np.isfinite(r)], rtol=1e-4, atol=1e-5)
                    for a, r in zip(ours, ref))
        n_nan = sum(int(np.isnan(a).sum()) for a in ours)
        ok = same and close and n_nan > 0
        if not ok:
            for t, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref):
                print(f"  {t}: NaN {int(np.isnan(a).sum())} (reference {int(np.isnan(r).sum())}), "
                      f"inf {int(np.isinf(a).sum())} (reference {int(np.isinf(r).sum())})")
        failed += not ok
        print(f"nan/inf {name}: {n_nan} NaN, same places as the reference{'' if ok else ' FAIL'}", flush=True)
    return failed == 0


def compare_case(case, rng, kernels=attention_cuda, label=""):
    """One case of CASES (B, H, Tq, Tk, D, causal, mask kind, dtype, dropout p): out, lse and the
    gradients of ``kernels`` against the reference; prints a line, returns True when all match."""
    B, H, Tq, Tk, D, causal, mask_kind, dtype, p = case
    q, k, v, mask, dout = make_case(B, H, Tq, Tk, D, mask_kind, dtype, rng)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    kw = dict(mask=mask, causal=causal, dropout_p=p, dropout_seed=SEED)
    out, lse = kernels.attention_forward(q, k, v, **kw)
    grads = kernels.attention_backward(q, k, v, out, lse, dout, **kw)
    out_ref, lse_ref = attention_numpy.attention_forward(q, k, v, **kw)
    grads_ref = attention_numpy.attention_backward(q, k, v, out_ref, lse_ref, dout, **kw)
    names = ["out", "lse", "dq", "dk", "dv"]
    ours = [out, lse] + list(grads)
    refs = [out_ref, lse_ref] + list(grads_ref)
    failed, line = 0, []
    for name, a, r in zip(names, ours, refs):
        same_inf = np.array_equal(np.isneginf(a), np.isneginf(r))
        finite = np.isfinite(r)
        worst = float(np.max(np.abs(a[finite] - r[finite]) / (1 + np.abs(r[finite])), initial=0))
        ok = same_inf and worst <= tol and not np.isnan(a).any() and a.shape == r.shape
        failed += not ok
        line.append(f"{name} {worst:.1e}{'' if ok else ' FAIL'}")
    print(f"{label}B={B} H={H} Tq={Tq} Tk={Tk} D={D} causal={causal} mask={mask_kind} dropout={p} "
          f"{np.dtype(dtype).name}: " + ", ".join(line), flush=True)
    return failed == 0


def main():
    rng = np.random.default_rng(0)
    failed = 0
    failed += not finite_difference_check(rng)
    failed += not finite_difference_check(rng, dropout_p=0.4)
    failed += not dropout_mask_check()
    failed += not batch_offset_check()
    failed += not nan_check(rng)
    for case in CASES:
        failed += not compare_case(case, rng)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
