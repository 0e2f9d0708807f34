"""The plumbing of the tiled CUDA attention kernels: tile tables, shared-memory layout, signatures,
PTX compilation and the driver's launch limits.

``attention_cuda_tiled.py`` holds the mathematics (the algorithm, the device helpers, the three
kernels and their launch); this file holds every number and call it needs to put them on a GPU:

- ``Tiles``, ``CONFIGS`` and ``SMALL_CONFIGS``: how each kernel cuts its work, per head size and dtype;
- ``shared_layout`` / ``shared_bytes``: where each tile sits in the one dynamic shared array;
- ``signature``, ``kernel_specs`` and ``ptx``: what ``bench/gpu_ready.py`` and the tests compile and
  print without a GPU;
- ``jit`` (launch bounds) and ``allow_shared`` (asking the driver for more than 48 KiB).

Names as in the kernels: Dh is the head size; in the layouts, dZ is the upstream gradient of the
output Z, D = rowsum(dZ ∘ Z) and L the row log-sum-exp.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from numba import cuda

HEAD_SIZES = (32, 64, 128)
UNROLL = 4                          # steps of the tile products' inner loops written out at once
DK_COLS = 4                         # columns of dK and dV per thread in the dK/dV kernel
STATIC_SHARED_LIMIT = 48 * 1024     # bytes a kernel may use without asking the driver for more
SM_SHARED_LIMIT = 227 * 1024        # the most one block may ask for on sm_80/sm_90


@dataclass(frozen=True)
class Tiles:
    """The tiling of one kernel: score tiles of ``br`` query rows × ``bc`` keys, each thread a
    ``tm`` × ``tn`` register tile of them (NY = br/tm rows of threads, NX = bc/tn columns).
    ``share_kv``: the forward stages V in K's buffer once S is computed (less shared memory).
    ``min_blocks``: the launch bound, blocks per SM the compiler must fit (it then keeps registers
    under 65,536 / (threads · min_blocks)); 0 for none."""
    br: int
    bc: int
    tm: int = 4
    tn: int = 4
    share_kv: bool = False
    min_blocks: int = 0

    @property
    def nx(self) -> int:
        return self.bc // self.tn

    @property
    def ny(self) -> int:
        return self.br // self.tm

    @property
    def threads(self) -> int:
        return self.nx * self.ny

    def check(self, Dh: int, kernel: str):
        """ValueError unless these tiles divide evenly for head size Dh in ``kernel``."""
        def power_of_two(n):
            return n >= 1 and n & (n - 1) == 0

        ok = (self.br % self.tm == 0 and self.bc % self.tn == 0 and power_of_two(self.nx)
              and self.br % UNROLL == 0 and self.bc % UNROLL == 0 and Dh % UNROLL == 0
              and self.threads <= 1024 and (kernel == "forward" or not self.share_kv))
        if kernel == "dkdv":
            nd = Dh // DK_COLS
            ok = ok and power_of_two(nd) and self.threads % nd == 0 and self.bc % (self.threads // nd) == 0
        else:
            ok = ok and Dh % self.nx == 0
        if not ok:
            raise ValueError(f"tiles {self} do not fit head size D={Dh} in the {kernel} kernel")


# Per (head size, dtype): the tiles of the forward, dK/dV and dQ kernels. Chosen on paper (shared
# memory and registers per SM, ≥ 4 FMAs per shared value, ≥ 25% occupancy for float32 where the
# tiles allow it; the launch bounds ask for as many blocks as the shared memory allows, where
# ptxas can fit them without spilling; `bench/gpu_ready.py` prints the figures);
# `bench/gpu_check.sh` times the others on a GPU.
CONFIGS = {
    (32, "float32"): {"forward": Tiles(128, 32, min_blocks=2), "dkdv": Tiles(32, 64, min_blocks=4),
                      "dq": Tiles(64, 32, min_blocks=4)},
    (64, "float32"): {"forward": Tiles(64, 64), "dkdv": Tiles(64, 64, min_blocks=2),
                      "dq": Tiles(64, 64, min_blocks=2)},
    (128, "float32"): {"forward": Tiles(64, 64, share_kv=True, min_blocks=2), "dkdv": Tiles(64, 64),
                       "dq": Tiles(64, 64)},
    (32, "float64"): {"forward": Tiles(64, 32), "dkdv": Tiles(32, 64), "dq": Tiles(64, 32)},
    (64, "float64"): {"forward": Tiles(64, 64), "dkdv": Tiles(64, 64), "dq": Tiles(64, 64)},
    (128, "float64"): {"forward": Tiles(64, 64, share_kv=True),
                       "dkdv": Tiles(32, 32, tm=2, tn=2), "dq": Tiles(32, 32, tm=2, tn=2)},
}
# Tiles that fit in 48 KiB of shared memory, for a GPU or a numba-cuda that refuses more.
SMALL_CONFIGS = {
    (32, "float32"): {"forward": Tiles(64, 32), "dkdv": Tiles(32, 64), "dq": Tiles(64, 32)},
    (64, "float32"): {"forward": Tiles(64, 32), "dkdv": Tiles(32, 32), "dq": Tiles(32, 32)},
    (128, "float32"): {"forward": Tiles(32, 32, share_kv=True), "dkdv": Tiles(16, 16, tm=2, tn=2),
                       "dq": Tiles(16, 16, tm=2, tn=2)},
    (32, "float64"): {"forward": Tiles(32, 32), "dkdv": Tiles(16, 32, tm=2), "dq": Tiles(32, 32)},
    (64, "float64"): {"forward": Tiles(32, 32, share_kv=True), "dkdv": Tiles(16, 16, tm=2, tn=2),
                      "dq": Tiles(16, 16, tm=2, tn=2)},
    (128, "float64"): {"forward": Tiles(16, 16, tm=2, tn=2, share_kv=True),
                       "dkdv": Tiles(8, 8, tm=1, tn=1), "dq": Tiles(8, 8, tm=1, tn=1)},
}


# ---------------------------------------------------------------------------------------------
# shared-memory layout: one dynamic array, cut into row-padded tiles
# ---------------------------------------------------------------------------------------------

def shared_layout(kernel: str, Dh: int, t: Tiles) -> dict:
    """Offsets (in elements) of each tile in the kernel's dynamic shared array, their row strides
    and the total ``size``.

    Row strides are padded: Dh + 1 for [rows, Dh] tiles, so that the threads of a warp reading one
    column of NX different rows hit NX different banks; BC + NX for the [BR, BC] probability tiles,
    so that the two (or four) thread rows of a warp writing them do not collide either.
    """
    QS, PS, RS = Dh + 1, t.bc + t.nx, t.nx + 1
    at, offsets = 0, {}

    def take(name, n):
        nonlocal at
        offsets[name] = at
        at += n

    if kernel == "forward":
        take("Q", t.br * QS)
        take("K", t.bc * QS)
        if t.share_kv:
            offsets["V"] = offsets["K"]
        else:
            take("V", t.bc * QS)
        take("P", t.br * PS)
        take("R", t.br * RS)
    elif kernel == "dkdv":
        take("K", t.bc * QS)
        take("V", t.bc * QS)
        take("Q", t.br * QS)
        take("dZ", t.br * QS)
        take("P", t.br * PS)
        take("dS", t.br * PS)
        take("L", t.br)
        take("D", t.br)
    elif kernel == "dq":
        take("Q", t.br * QS)
        take("dZ", t.br * QS)
        take("K", t.bc * QS)
        take("V", t.bc * QS)
        take("dS", t.br * PS)
    else:
        raise ValueError(f"kernel={kernel!r} is not one of 'forward', 'dkdv', 'dq'")
    return dict(offsets, QS=QS, PS=PS, RS=RS, size=at)


def shared_bytes(kernel: str, Dh: int, dtype, t: Tiles) -> int:
    """Dynamic shared memory of one block, in bytes."""
    return shared_layout(kernel, Dh, t)["size"] * np.dtype(dtype).itemsize


def jit(t: Tiles):
    """``cuda.jit`` with the launch bounds of tiles t, where this numba.cuda takes them (numba-cuda
    does; Numba's own numba.cuda and its simulator do not, and ``ptx`` adds them to the PTX
    text instead)."""
    if t.min_blocks:
        try:
            return cuda.jit(launch_bounds=(t.threads, t.min_blocks))
        except TypeError:
            pass
    return cuda.jit


# ---------------------------------------------------------------------------------------------
# what the kernels cost: figures for bench/gpu_ready.py and the tests
# ---------------------------------------------------------------------------------------------

KERNELS = ("forward", "dkdv", "dq")


def signature(kernel: str, dtype):
    """The Numba signature of ``kernel`` for flat contiguous arrays of ``dtype`` (as ``launch`` calls it)."""
    from numba import types

    real = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    a, keep, n = real[::1], types.uint8[::1], types.int64
    flag, word = types.boolean, types.uint64
    shape = (n, n, n, flag, real)                # H, Tq, Tk, causal, scale
    drop = (flag, word, real, word, word, word)  # dropout, threshold, keep_scale, key0, key1, batch0
    if kernel == "forward":
        args = (a, a, a, keep) + shape + drop + (a, a)
    elif kernel == "dkdv":
        args = (a, a, a, a, a, a, keep) + shape + drop + (a, a)
    else:
        args = (a, a, a, a, a, a, keep) + shape + drop + (a,)
    return types.void(*args)


def kernel_specs(kernel: str, Dh: int, dtype, tiles: Tiles) -> dict:
    """Launch figures and shared-memory arithmetic of one kernel, per step of its tile loop.

    Returns threads, dynamic shared bytes, FLOPs per step, shared-memory bytes read and written per
    step, ``flops_per_shared_byte`` and ``min_fmas_per_shared_value`` (the fewest FMAs that one
    value read from shared memory feeds, over every operand of the kernel's tile products).
    """
    t, size = tiles, np.dtype(dtype).itemsize
    BR, BC, TM, TN, NX, NY, NT = t.br, t.bc, t.tm, t.tn, t.nx, t.ny, t.threads
    if kernel == "forward":
        TD = Dh // NX
        flops = 4 * BR * BC * Dh                                  # S = Q Kᵀ and P V
        reads = NT * (Dh * (TM + TN) + BC * (TM + TD) + TM * NX)  # Q, K; P, V; row maxima
        writes = (2 * BC * Dh + BR * BC + BR * NX) * NT // NT     # K, V, P, row maxima
        fmas_per_value = min(TN, TM, TD)                         # Q→TN, K→TM, P→TD, V→TM
    elif kernel == "dkdv":
        TK = BC // (NT // (Dh // DK_COLS))
        flops = 8 * BR * BC * Dh                                  # S, dP, Pᵀ dZ, dSᵀ Q
        reads = NT * (2 * Dh * (TM + TN) + 2 * BR * (TK + DK_COLS))
        writes = 2 * BR * Dh + 2 * BR * BC + 2 * BR               # Q, dZ, P, dS, lse, D
        fmas_per_value = min(TN, TM, DK_COLS, TK)                # Q,dZ→TN; K,V→TM; P,dS→4; dZ,Q→TK
    else:
        TD = Dh // NX
        flops = 6 * BR * BC * Dh                                  # S, dP, dS K
        reads = NT * (2 * Dh * (TM + TN) + BC * (TM + TD))
        writes = 2 * BC * Dh + BR * BC                            # K, V, dS
        fmas_per_value = min(TN, TM, TD)                         # Q,dZ→TN; K,V→TM; dS→TD; K→TM
    traffic = (reads + writes) * size
    return {"threads": NT, "shared_bytes": shared_bytes(kernel, Dh, dtype, t), "flops": flops,
            "shared_traffic_bytes": traffic, "flops_per_shared_byte": flops / traffic,
            "min_fmas_per_shared_value": fmas_per_value}


@contextlib.contextmanager
def _capability_for_device_functions(cc):
    """Let ``cuda.compile_ptx`` build kernels that call device functions where there is no GPU.

    Numba's own ``numba.cuda`` (0.68) compiles a called device function for the *current* device,
    so it opens a CUDA context even inside ``compile_ptx(..., cc=...)``; only the capability is
    read. numba-cuda (0.30) compiles them for the requested ``cc`` and needs no help.
    """
    import numba.cuda.dispatcher as dispatcher

    original = getattr(dispatcher, "get_current_device", None)
    if original is None:
        yield
        return

    class _Device:
        compute_capability = cc

    def current_device():
        try:
            return original()
        except Exception:        # no driver or no GPU: answer with the capability compiled for
            return _Device()

    dispatcher.get_current_device = current_device
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def ptx(fn, kernel: str, dtype, tiles: Tiles, cc=(9, 0)) -> str:
    """The PTX of the built kernel ``fn`` (``kernel`` for ``dtype`` with ``tiles``) for compute
    capability cc; needs the CUDA toolkit's NVVM, not a GPU."""
    bounds = (tiles.threads, tiles.min_blocks) if tiles.min_blocks else None
    takes_bounds = "launch_bounds" in inspect.signature(cuda.compile_ptx).parameters
    with _capability_for_device_functions(cc):
        if takes_bounds:
            text, _ = cuda.compile_ptx(fn.py_func, signature(kernel, dtype), cc=cc, launch_bounds=bounds)
        else:
            text, _ = cuda.compile_ptx(fn.py_func, signature(kernel, dtype), cc=cc)
    if bounds and not takes_bounds:       # the two lines NVVM writes for launch bounds
        text = re.sub(r"(\.entry [^(]+\([^)]*\))", r"\1\n.maxntid %d, 1, 1\n.minnctapersm %d" % bounds,
                      text, count=1)
    return text


# ---------------------------------------------------------------------------------------------
# launch limits: more than 48 KiB of shared memory
# ---------------------------------------------------------------------------------------------

_LARGE_SHARED_OK: dict = {}


def _simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def allow_shared(fn, args, nbytes) -> bool:
    """Ask the driver to let ``fn`` (compiled for ``args``) use ``nbytes`` of dynamic shared memory;
    above 48 KiB a kernel must opt in. False when this numba.cuda or GPU will not."""
    if nbytes <= STATIC_SHARED_LIMIT or _simulated():
        return True
    key = (id(fn), nbytes)
    if key not in _LARGE_SHARED_OK:
        from numba.cuda.cudadrv import driver as drv

        MAX_DYNAMIC_SHARED = 8                  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        errors = []
        try:
            compiled = fn.compile(tuple(fn.typeof_pyval(a) for a in args))
            cufunc = compiled._codelibrary.get_cufunc()
            attempts = []
            if hasattr(drv, "binding"):         # numba-cuda on cuda-python: a CUkernel handle
                attr = drv.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                attempts.append(lambda: drv.driver.cuKernelSetAttribute(attr, nbytes, cufunc.handle,
                                                                        cufunc.device.id))
                attempts.append(lambda: drv.driver.cuFuncSetAttribute(cufunc.handle, attr, nbytes))
            attempts.append(lambda: drv.driver.cuFuncSetAttribute(cufunc.handle, MAX_DYNAMIC_SHARED, nbytes))
            for attempt in attempts:
                try:
                    attempt()
                    break
                except Exception as exc:  # noqa: BLE001 - try the next way of saying it
                    errors.append(f"{type(exc).__name__}: {exc}")
            else:
                raise RuntimeError("; ".join(errors))
            _LARGE_SHARED_OK[key] = True
        except Exception as exc:  # noqa: BLE001 - any refusal means: use tiles that fit in 48 KiB
            warnings.warn(f"attention_cuda_tiled: cannot raise the shared-memory limit to {nbytes} "
                          f"bytes ({type(exc).__name__}: {exc}); using tiles that fit in 48 KiB",
                          RuntimeWarning, stacklevel=3)
            _LARGE_SHARED_OK[key] = False
    return _LARGE_SHARED_OK[key]


__all__ = ["Tiles", "CONFIGS", "SMALL_CONFIGS", "HEAD_SIZES", "KERNELS", "UNROLL", "DK_COLS",
           "STATIC_SHARED_LIMIT", "SM_SHARED_LIMIT", "shared_layout", "shared_bytes", "signature",
           "kernel_specs", "ptx", "jit", "allow_shared"]
