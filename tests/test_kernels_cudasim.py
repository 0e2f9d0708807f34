"""The CUDA attention kernels, three ways:

1. under Numba's CUDA simulator, on a machine without a GPU: tests/_cudasim_attention.py runs in a
   process of its own, since NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported; it proves
   the algorithm (partial tiles, padding, causal, Tq ≠ Tk, rows with no kept key, dropout, and a
   data-parallel rank's rows drawn with its ``dropout_offset`` exactly as the whole batch's);
2. compiled to PTX for a Hopper GPU (cc 9.0) with ``numba.cuda.compile_ptx``, which needs the CUDA
   toolkit's NVVM but no GPU: it proves the kernels type and lower as written (shared memory, no
   atomics, float32 kernels stay in float32);
3. on a real GPU with CuPy arrays — skipped, with the reason, when there is none.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinybert_kernels import attention_numpy

HERE = Path(__file__).resolve().parent


def test_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, str(HERE / "_cudasim_attention.py")], env=env,
                            cwd=HERE.parent, capture_output=True, text=True, timeout=600)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.count("\nB=") == 6                     # every case of CASES ran
    assert result.stdout.count("finite differences") == 2        # without and with dropout
    assert "dropout mask: forward and backward equal the reference bit for bit" in result.stdout
    assert "batch offset: rows 2:4 of B=5 with dropout_offset=2" in result.stdout   # data parallel
    assert result.stdout.count("same places as the reference") == 5


# ----------------------------------------------------------------------------------- PTX ------

def _nvvm_missing_reason():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "NUMBA_ENABLE_CUDASIM=1 in this process: compile_ptx needs the real CUDA target"
    try:
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
    except Exception as exc:  # NvvmSupportError and friends: no CUDA toolkit here
        return f"NVVM (CUDA toolkit) not found, cannot compile PTX: {exc}"
    return None


def pretend_cuda_device(monkeypatch, cc=(9, 0)):
    """Let ``compile_ptx`` compile a kernel that calls a device function (Philox) on a machine
    without a GPU: Numba compiles a called device function for the *current* device's compute
    capability, so it opens a CUDA context even inside ``compile_ptx(..., cc=...)``; only that
    capability is read, and this gives it."""
    import types as pytypes

    import numba.cuda.dispatcher

    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: pytypes.SimpleNamespace(compute_capability=cc))


def _signatures(dtype):
    from numba import types

    real = types.float32 if dtype == np.float32 else types.float64
    a4, a3, keep = real[:, :, :, ::1], real[:, :, ::1], types.uint8[:, ::1]
    flag = types.boolean
    drop = (flag, types.uint64[::1], types.uint64, real)     # on, key, threshold, 1/(1−p)
    return {"forward": (a4, a4, a4, keep, flag, real, *drop, a4, a3),
            "row_dot": (a4, a4, a3),
            "dkdv": (a4, a4, a4, a3, a4, a3, keep, flag, real, *drop, a4, a4),
            "dq": (a4, a4, a4, a3, a4, a3, keep, flag, real, *drop, a4)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_kernels_compile_to_ptx(dtype, monkeypatch):
    reason = _nvvm_missing_reason()
    if reason:
        pytest.skip(reason)
    from numba import cuda, types

    from tinybert_kernels import attention_cuda

    pretend_cuda_device(monkeypatch)

    kernels = attention_cuda.kernels_for(dtype)
    for name, args in _signatures(dtype).items():
        ptx, _ = cuda.compile_ptx(kernels[name].py_func, types.void(*args), cc=(9, 0))
        assert ".target sm_90" in ptx
        assert "atom." not in ptx, f"{name}: uses atomics"
        assert "call" not in ptx.split(".entry")[1], f"{name}: a device function was not inlined"
        if name != "row_dot":
            assert ".shared" in ptx, f"{name}: no shared-memory tiles"
        if dtype == np.float32:
            f64 = sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b", ptx)))
            assert not f64, f"{name}: float32 kernel computes in float64: {f64}"


# ------------------------------------------------------------------------------ real GPU -----

def _gpu_missing_reason():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "NUMBA_ENABLE_CUDASIM=1: no real GPU in this process"
    try:
        import cupy
    except ImportError:
        return "no GPU: CuPy is not installed (pip install cupy-cuda12x)"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no GPU: CUDA reports no device"
    except Exception as exc:
        return f"no GPU: {exc}"
    from numba import cuda

    if not cuda.is_available():
        return "no GPU visible to numba.cuda"
    return None


GPU_REASON = _gpu_missing_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H,Tq,Tk,D,causal,masked,dropout_p", [(2, 12, 128, 128, 64, False, True, 0.0),
                                                                 (2, 3, 77, 200, 128, True, True, 0.0),
                                                                 (1, 2, 300, 45, 32, True, False, 0.0),
                                                                 (2, 4, 96, 130, 64, False, True, 0.1)])
def test_cuda_kernels_on_the_gpu(dtype, B, H, Tq, Tk, D, causal, masked, dropout_p):
    import cupy

    from tinybert_kernels import dispatch

    rng = np.random.default_rng(0)
    q, dout = (rng.standard_normal((B, H, Tq, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, H, Tk, D)).astype(dtype) for _ in range(2))
    mask = None
    if masked:
        mask = np.ones((B, Tk), dtype=bool)
        mask[0, Tk // 2:] = False
        mask[-1, :] = False
    drop = dict(dropout_p=dropout_p, dropout_seed=0x5EED)
    ref_out, ref_lse = attention_numpy.attention_forward(q, k, v, mask=mask, causal=causal, **drop)
    ref_grads = attention_numpy.attention_backward(q, k, v, ref_out, ref_lse, dout, mask=mask, causal=causal,
                                                   **drop)
    g = [cupy.asarray(a) for a in (q, k, v, dout)]
    g_mask = None if mask is None else cupy.asarray(mask)
    assert dispatch.resolve_backend("auto", g[0]) == "cuda"
    out, lse = dispatch.attention_forward(g[0], g[1], g[2], mask=g_mask, causal=causal, **drop)
    grads = dispatch.attention_backward(g[0], g[1], g[2], out, lse, g[3], mask=g_mask, causal=causal,
                                                **drop)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for name, a, ref in zip(["out", "lse", "dq", "dk", "dv"], [out, lse, *grads], [ref_out, ref_lse, *ref_grads]):
        a = cupy.asnumpy(a)
        assert not np.isnan(a).any(), name
        assert np.array_equal(np.isneginf(a), np.isneginf(ref)), name
        fin = np.isfinite(ref)
        worst = float(np.max(np.abs(a[fin] - ref[fin]) / (1 + np.abs(ref[fin])), initial=0))
        print(name, worst)
        assert worst <= tol, (name, worst)
