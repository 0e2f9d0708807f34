"""Run the tiled CUDA attention kernels under Numba's CUDA simulator and compare with the reference.

Started by tests/test_attention_cuda_tiled.py in processes of their own with NUMBA_ENABLE_CUDASIM=1
(the variable must be set before numba is imported), one per group named on the command line:

- ``small``: the kernels built with small tiles (8×8 score tiles of 2×2 per thread, 16 threads; a
  16×8 one with K and V sharing a buffer), put in place of the production tiles so that many cases
  run in seconds: partial tiles, Tq ≠ Tk, padding, causal, rows with no kept key, head sizes padded
  to 32, 64 and 128, float32 and float64, attention dropout (the reference's mask bit for bit, and
  values), finite differences with and without dropout, and NaN / infinity in the same places as
  the reference;
- ``production``: the production tiles of each head size (32, 64, 128), float32, on one problem
  each with a partial tile, padding, causal and Tq ≠ Tk (and dropout at D = 64).

Prints one line per check with the worst difference of every tensor and exits 1 if any says FAIL.
"""
import os
import sys
import time
import warnings

import numpy as np

warnings.simplefilter("ignore", RuntimeWarning)   # overflow and NaN are what the NaN cases test

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from tinybert_kernels import attention_cuda_tiled as tiled  # noqa: E402
from tinybert_kernels import attention_numpy, philox  # noqa: E402

SEED = 0x5EED_0123_4567_89AB
Tiles = tiled.Tiles
SMALL = {
    32: {"forward": Tiles(8, 8, 2, 2), "dkdv": Tiles(8, 8, 2, 2), "dq": Tiles(8, 8, 2, 2)},
    64: {"forward": Tiles(8, 16, 2, 4), "dkdv": Tiles(16, 8, 4, 2), "dq": Tiles(8, 8, 2, 2)},
    128: {"forward": Tiles(16, 8, 2, 2, share_kv=True), "dkdv": Tiles(16, 8, 2, 2),
          "dq": Tiles(16, 8, 2, 2)},
}
# (B, H, Tq, Tk, D, causal, mask kind, dtype, dropout p); D is padded to the next of 32, 64, 128.
SMALL_CASES = [
    (1, 2, 5, 37, 8, False, "pad", np.float64, 0.0),
    (2, 1, 13, 21, 8, True, "pad", np.float64, 0.0),
    (2, 1, 9, 20, 16, False, "empty", np.float32, 0.0),
    (1, 1, 33, 17, 8, True, None, np.float32, 0.0),      # Tq > Tk: the first rows see no key
    (1, 2, 13, 21, 8, False, "pad", np.float64, 0.3),
    (1, 2, 19, 15, 4, True, "pad", np.float32, 0.1),
    (2, 1, 11, 13, 48, True, "empty", np.float64, 0.2),   # D = 48 → 64
    (1, 1, 9, 10, 100, False, "pad", np.float32, 0.0),    # D = 100 → 128, K and V share a buffer
]
PRODUCTION_CASES = [
    (1, 1, 37, 29, 32, True, "pad", np.float32, 0.0),
    (1, 1, 37, 45, 64, True, "pad", np.float32, 0.1),
    (1, 1, 21, 19, 128, False, "pad", np.float32, 0.0),
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


def both(q, k, v, dout, **kw):
    """(out, lse, dq, dk, dv) of the tiled kernels and of the reference."""
    ours = tiled.attention_forward(q, k, v, **kw)
    ours = ours + tiled.attention_backward(q, k, v, *ours, dout, **kw)
    ref = attention_numpy.attention_forward(q, k, v, **kw)
    ref = ref + attention_numpy.attention_backward(q, k, v, *ref, dout, **kw)
    return ours, ref


def compare_case(label, case, rng):
    B, H, Tq, Tk, D, causal, mask_kind, dtype, p = case
    q, k, v, mask, dout = make_case(B, H, Tq, Tk, D, mask_kind, dtype, rng)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    start = time.perf_counter()
    ours, ref = both(q, k, v, dout, mask=mask, causal=causal, dropout_p=p, dropout_seed=SEED)
    failed, line = 0, []
    for name, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref):
        same_inf = np.array_equal(np.isneginf(a), np.isneginf(r))
        finite = np.isfinite(r)
        worst = float(np.max(np.abs(a[finite] - r[finite]) / (1 + np.abs(r[finite])), initial=0))
        ok = same_inf and worst <= tol and not np.isnan(a).any() and a.shape == r.shape
        failed += not ok
        line.append(f"{name} {worst:.1e}{'' if ok else ' FAIL'}")
    print(f"{label} B={B} H={H} Tq={Tq} Tk={Tk} D={D} causal={causal} mask={mask_kind} "
          f"{np.dtype(dtype).name} dropout={p}: " + ", ".join(line)
          + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return failed == 0


def finite_difference_check(rng, dropout_p):
    """dq, dk, dv against central differences of L = Σ out ∘ dout (float64, causal, padding,
    Tq < Tk); with dropout the seed fixes the mask, so the function is deterministic."""
    B, H, Tq, Tk, D = 1, 1, 3, 6, 2
    q, k, v, _, dout = make_case(B, H, Tq, Tk, D, None, np.float64, rng)
    kw = dict(mask=np.array([[True, False, True, True, True, True]]), causal=True,
              dropout_p=dropout_p, dropout_seed=SEED)
    out, lse = tiled.attention_forward(q, k, v, **kw)
    analytic = tiled.attention_backward(q, k, v, out, lse, dout, **kw)
    eps, worst = 1e-6, 0.0
    for x, g in zip((q, k, v), analytic):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            plus = np.sum(tiled.attention_forward(q, k, v, **kw)[0] * dout)
            x[idx] = old - eps
            minus = np.sum(tiled.attention_forward(q, k, v, **kw)[0] * dout)
            x[idx] = old
            numeric[idx] = (plus - minus) / (2 * eps)
        worst = max(worst, float(np.abs(g - numeric).max() / (np.abs(g).max() + np.abs(numeric).max())))
    ok = worst < 1e-7
    print(f"finite differences (float64, causal + padding, Tq < Tk, dropout {dropout_p}): worst "
          f"relative error {worst:.1e}{'' if ok else ' FAIL'}", flush=True)
    return ok


def dropout_mask_check():
    """The kernels' dropout mask is the reference's bit for bit: with q = 0 every weight is 1/Tk,
    so with V = I the forward's out is P̃ itself, and with dZ = I the dK/dV kernel's dV is P̃ᵀ;
    their nonzero patterns are the mask (drawn in shared memory, four keys per Philox call)."""
    B, H, n, p = 1, 2, 16, 0.3
    q = np.zeros((B, H, n, n))
    k = np.random.default_rng(1).standard_normal((B, H, n, n))
    eye = np.broadcast_to(np.eye(n), (B, H, n, n)).copy()
    want = philox.attention_keep(SEED, p, B, H, n, n)
    out, lse = tiled.attention_forward(q, k, eye, dropout_p=p, dropout_seed=SEED)
    _, _, dv = tiled.attention_backward(q, k, eye, out, lse, eye, dropout_p=p, dropout_seed=SEED)
    ok = (np.array_equal(out > 0, want) and np.array_equal(np.swapaxes(dv, -1, -2) > 0, want)
          and np.allclose(out[want], 1 / (n * (1 - p))))
    print(f"dropout mask: forward and dK/dV kernels equal philox.attention_keep bit for bit "
          f"({want.size} draws){'' if ok else ' FAIL'}", flush=True)
    return ok


def nan_check(rng):
    """NaN and infinity land where the reference puts them: a NaN in one element of q, k, v and
    dout, scores that overflow to +inf, scale = NaN."""
    failed = 0
    for name in ("nan_q", "nan_k", "nan_v", "nan_dout", "overflow", "scale_nan"):
        q, k, v, mask, dout = make_case(2, 1, 7, 8, 4, "pad", np.float32, rng)
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
            k = np.abs(k) + 1                           # positive terms: q·k overflows to +inf
            q[1, 0, 4] = 3e38                           # in any order of summation
        else:
            scale = float("nan")
        ours, ref = both(q, k, v, dout, mask=mask, scale=scale)
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
        print(f"nan/inf {name}: {n_nan} NaN, in the same places as the reference"
              f"{'' if ok else ' FAIL'}", flush=True)
    return failed == 0


def run_small(rng):
    for D, tiles in SMALL.items():
        for dtype in ("float32", "float64"):
            tiled.CONFIGS[(D, dtype)] = tiles
    checks = [lambda: finite_difference_check(rng, 0.0), lambda: finite_difference_check(rng, 0.4),
              dropout_mask_check, lambda: nan_check(rng)]
    checks += [lambda case=case: compare_case("small tiles", case, rng) for case in SMALL_CASES]
    ok = True
    for check in checks:
        start = time.perf_counter()
        ok &= check()
        print(f"    {time.perf_counter() - start:.1f} s", flush=True)
    return ok


def run_production(rng):
    return all([compare_case("production tiles", case, rng) for case in PRODUCTION_CASES])


def main(groups):
    rng = np.random.default_rng(0)
    runs = {"small": run_small, "production": run_production}
    ok = True
    for group in groups or list(runs):
        ok &= runs[group](rng)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
