"""Run the tiled CUDA attention kernels under Numba's CUDA simulator and compare with the reference.

Started by tests/test_attention_cuda_tiled.py in processes of their own with NUMBA_ENABLE_CUDASIM=1
(the variable must be set before numba is imported), one per group named on the command line:

- ``small``: the kernels built with small tiles (8×8 score tiles of 2×2 per thread, 16 threads; a
  16×8 one with K and V sharing a buffer), put in place of the production tiles so that many cases
  run in seconds: partial tiles, Tq ≠ Tk, padding, causal, rows with no kept key, head sizes padded
  to 32, 64 and 128, float32 and float64, attention dropout (the reference's mask bit for bit, and
  values; a data-parallel rank's slice of the batch with its ``dropout_offset``), finite differences with and without dropout, and NaN / infinity in the same places as
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

from _cudasim_attention import (batch_offset_check, compare_case, dropout_mask_check,  # noqa: E402
                                finite_difference_check, nan_check, NAN_CASES)
from tinybert_kernels import attention_cuda_tiled as tiled  # noqa: E402
from tinybert_kernels import attention_cuda_tiles as plumbing  # noqa: E402

Tiles = plumbing.Tiles
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


def run_small(rng):
    for D, tiles in SMALL.items():
        for dtype in ("float32", "float64"):
            plumbing.CONFIGS[(D, dtype)] = tiles
    checks = [lambda: finite_difference_check(rng, 0.0, kernels=tiled),
              lambda: finite_difference_check(rng, 0.4, kernels=tiled),
              lambda: dropout_mask_check(kernels=tiled, B=1, H=2, n=16),
              lambda: batch_offset_check(kernels=tiled),
              lambda: nan_check(rng, kernels=tiled, names=NAN_CASES + ("nan_dout",))]
    checks += [lambda case=case: compare_case(case, rng, kernels=tiled, label="small tiles: ")
               for case in SMALL_CASES]
    ok = True
    for check in checks:
        start = time.perf_counter()
        ok &= check()
        print(f"    {time.perf_counter() - start:.1f} s", flush=True)
    return ok


def run_production(rng):
    return all([compare_case(case, rng, kernels=tiled, label="production tiles: ")
                for case in PRODUCTION_CASES])


def main(groups):
    rng = np.random.default_rng(0)
    runs = {"small": run_small, "production": run_production}
    ok = True
    for group in groups or list(runs):
        ok &= runs[group](rng)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
