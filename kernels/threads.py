"""Threads: one pool, Numba's, runs tinybert's parallel work, and no thread spins while it waits.

Two thread pools could run tinybert on the CPU: OpenBLAS's (NumPy's matrix products) and Numba's
(the fused kernels' ``prange``). How a pool waits between jobs decides whether they share the cores
cleanly, and OpenBLAS's does not:

- OpenBLAS's workers *spin* for 2²⁸ cycles (~0.1 s) after every threaded product
  (``OPENBLAS_THREAD_TIMEOUT``, read only when the library loads). Measured on this project's
  2-core machine: one 2-thread product, then 300 ms of sleep, cost the process 100 ms of CPU. A
  layer runs a product every few milliseconds, so a spinning thread held one core through every
  fused kernel in between: the attention kernel took 24 ms a layer at 64 × 64 after a product
  against 12–17 ms alone, and a parallel GELU or LayerNorm was never faster than a serial one.
  So tinybert never lets BLAS start its threads: the model runs inside ``single_threaded_blas``
  (BLAS on one thread, the user's setting restored after), and ``tinybert_kernels.matmul`` splits
  each large product over Numba's threads, each calling BLAS on its share (as fast as OpenBLAS's
  own 2-thread product on the model's shapes: 180–190 GFLOP/s on both cores).
- Numba's default OpenMP layer (GNU libgomp) spins too, for a while after every parallel loop:
  a 16-token product that takes 20 µs alone took ~0.7 ms right after one. ``start_numba_pool``
  starts Numba's pool with ``OMP_WAIT_POLICY=PASSIVE`` (its threads sleep as soon as a loop ends),
  unless the user chose a policy. The variable is read once, when libgomp loads, so it is set only
  around that moment and restored: other libraries (PyTorch bundles its own libgomp) never see it.
  If Numba's pool already runs, or another layer (TBB, workqueue) was chosen, nothing changes.
- Inside a fused kernel's ``prange`` every core already runs a task, so the BLAS calls the tasks
  make (attention's tile products, through SciPy) run on one thread (``single_threaded_blas``).
- Work too small to share (a batch of one short sentence) runs on one thread: a product below
  ``matmul.SPLIT_FROM`` multiply-adds whose operands are all small (under
  ``matmul.SPLIT_OPERAND_FROM`` elements) is one BLAS call, and each fused kernel has a serial twin
  below a size threshold.

The elementwise kernels (GELU, LayerNorm, dropout, Adam) are vectorised passes, parallel from 2¹⁶
elements (2¹⁷ for Adam). While OpenBLAS's threads spun, a parallel pass was never faster than a
serial one, and they ran serially below 2²⁴ elements; without the spinning, and with each task
given its own slices (kernels/gelu.py says why), GELU on 3.1M elements takes 1.9 ms on 2 threads
against 3.6 serially, LayerNorm with its residual on [4096, 384] 0.61 against 0.85 ms, dropout 1.1
against 2.0 ms, Adam on the 11.7M word embedding 15 against 28 ms (bandwidth-bound, in place); the
64 × 64 forward of all-MiniLM-L6-v2 took 562 ms against 584, a fine-tuning step 1,015 against
1,044. The attention kernel, whose work per call is larger, goes parallel above 2²¹ (B·H·Tq·Tk·D).

``configure(threads)`` sets the thread count of both pools at once (``numba.set_num_threads`` and
threadpoolctl's BLAS limit, which applies outside the model), as the benchmarks do.
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


def _one_blas_thread():
    """threadpoolctl's limiter of BLAS to one thread (applied now, undone by its restore)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


_SINGLE_DEPTH = 0          # how many single_threaded_blas contexts are open (re-entrant)


@contextlib.contextmanager
def single_threaded_blas():
    """A context in which BLAS runs on one thread: the model's products are split over Numba's
    threads by ``tinybert_kernels.matmul`` instead (its docstring says why). Re-entrant, and cheap
    when already inside one (a layer's product inside the encoder's context)."""
    global _SINGLE_DEPTH
    if _SINGLE_DEPTH:
        yield
        return
    limiter = _one_blas_thread()
    _SINGLE_DEPTH += 1
    try:
        yield
    finally:
        _SINGLE_DEPTH -= 1
        limiter.restore_original_limits()


def model_blas():
    """The context a model's forward and backward run in: ``single_threaded_blas`` when the
    products are split over Numba's threads (Numba imports), else BLAS as configured."""
    from tinybert_kernels import dispatch

    if dispatch.fused("matmul") is None:
        return contextlib.nullcontext()
    return single_threaded_blas()


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


__all__ = ["start_numba_pool", "single_threaded_blas", "model_blas", "configure"]
