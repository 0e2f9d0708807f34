"""Threads: BLAS and Numba share the cores without fighting over them.

Two thread pools run tinybert on the CPU: OpenBLAS's (NumPy's matrix products, the ``Linear``
layers) and Numba's (the fused kernels' ``prange``). They take turns, never run at once, and the
way a pool waits between jobs decides whether the turns are clean:

- Numba's default OpenMP layer (GNU libgomp) *spins* for a while after every parallel loop, so the
  next matrix product finds every core busy with idle spinning threads: a 16-token product that
  takes 20 µs alone took ~0.7 ms on this project's 2-core machine. ``start_numba_pool`` starts
  Numba's pool with ``OMP_WAIT_POLICY=PASSIVE`` (its threads sleep as soon as a loop ends), unless
  the user chose a policy. The variable is read once, when libgomp loads, so it is set only around
  that moment and restored: other libraries (PyTorch bundles its own libgomp) never see it. If
  Numba's pool already runs, or another layer (TBB, workqueue) was chosen, nothing changes.
- Inside a fused kernel's ``prange`` every core already runs a task, so the BLAS calls the tasks make
  (attention's tile products, through SciPy) must not start threads of their own: ``one_blas_thread``
  pins BLAS to one thread for the kernel's duration.
- Work too small to share (a batch of one short sentence) runs on one thread: the encoder runs its
  matrix products on one BLAS thread for a batch of at most ``SMALL_BATCH_TOKENS`` tokens
  (``blas_threads_for``), and each fused kernel has a serial twin below a size threshold.

Where the threads go, as measured on this project's shared 2-core machine: OpenBLAS's products
scale (1.7-2.2× on 2 threads), so BLAS keeps both cores. The elementwise kernels (GELU, LayerNorm,
dropout, Adam) did not: a parallel pass was never faster than the serial one, and up to 5× slower
when it wrote memory just allocated, while BLAS's workers wait between products. They are vectorised
single passes, and run serially below 2²⁴ elements (every shape of the benchmarks); the attention
kernel, whose work per call is larger, goes parallel above 2²¹ (B·H·Tq·Tk·D).

``configure(threads)`` sets the thread count of both pools at once (``numba.set_num_threads`` and
threadpoolctl's BLAS limit), as the benchmarks do.
"""
from __future__ import annotations

import contextlib
import os

_POOL_STARTED = False
_BLAS_CONTROLLER = None


def start_numba_pool():
    """Start Numba's thread pool (once) so that its idle threads sleep instead of spinning.

    Called by the fused kernels before their first parallel loop; cheap afterwards.
    """
    global _POOL_STARTED
    if _POOL_STARTED:
        return
    from numba.np.ufunc import parallel

    if parallel._is_initialized or "OMP_WAIT_POLICY" in os.environ:
        _POOL_STARTED = True
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        _touch_pool()                       # loads the threading layer (libgomp reads the variable)
    finally:
        del os.environ["OMP_WAIT_POLICY"]
    _POOL_STARTED = True


def _touch_pool():
    from numba import njit, prange

    @njit(parallel=True)
    def touch(a):
        for i in prange(a.shape[0]):
            a[i] = i

    import numpy as np

    touch(np.zeros(2))


def one_blas_thread():
    """A context in which BLAS uses one thread (inside a kernel whose ``prange`` uses every core)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


SMALL_BATCH_TOKENS = 32     # at most this many tokens: the encoder's products run on one BLAS thread


def blas_threads_for(tokens: int):
    """The context a stack of layers over ``tokens`` tokens runs in: one BLAS thread for a small
    batch (its products are too small to share: waking a second thread costs more than it saves),
    else BLAS as configured."""
    if tokens <= SMALL_BATCH_TOKENS:
        return one_blas_thread()
    return contextlib.nullcontext()


def configure(threads: int):
    """Use ``threads`` threads in Numba's pool and in BLAS's (returns threadpoolctl's limiter, which
    can also serve as a context manager that restores the BLAS setting)."""
    import numba
    from threadpoolctl import threadpool_limits

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be a positive integer")
    start_numba_pool()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threadpool_limits(threads, user_api="blas")


__all__ = ["start_numba_pool", "one_blas_thread", "blas_threads_for", "configure", "SMALL_BATCH_TOKENS"]
