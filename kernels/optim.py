"""The optimizer's inner loops, fused and parallel on the CPU with Numba: one Adam/AdamW step of a
parameter in one pass, and the sum of squares of the gradients for the global norm.

The readable update is in ``tinybert/optim.py`` (``Adam.step``); written with NumPy it makes about
ten passes over each parameter-sized array (g·g, the products by β, the adds, √v, the division...),
which for a 22M-parameter model is most of a fine-tuning step's optimizer time. Here each element of
θ, g, m, v is read once and θ, m, v written once::

    AdamW:  θ ← θ(1 − ηλ)                 Adam (L2): g ← g + λθ
    m ← β₁m + (1−β₁)g      v ← β₂v + (1−β₂)g²
    θ ← θ − (η/(1−β₁ᵗ)) · m / (√v · (1/√(1−β₂ᵗ)) + ε)

The operations are the reference's, in its order and in the parameter's dtype (the scalars are cast
to it first, as NumPy does), with no fast-math: θ, m and v come out equal to the reference's bit for
bit. A NaN or inf in g reaches θ exactly as in the reference.

``sum_of_squares(g)`` accumulates Σ g² in float64 (as the reference's ``astype(float64)`` does)
without the float64 copy.

Shapes: θ, g, m, v are C-contiguous arrays of one shape and dtype (float32 or float64), seen flat.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from tinybert_kernels import threads

# elements: smaller arrays run on one thread. Adam reads and writes its arrays in place (no fresh
# memory) and is bound by memory bandwidth, which a second core adds to: all-MiniLM-L6-v2's word
# embedding (11.7M) took 28.1 ms serially and 14.8 ms on 2 threads, a 384 × 1536 weight 1.43 and
# 1.31 ms (measured once no BLAS thread spun beside it, kernels/threads.py)
SERIAL_BELOW = 1 << 17
_CHUNK = 1 << 14           # elements per parallel task


@njit
def _adam_range(p, g, m, v, b1, b2, one_minus_b1, one_minus_b2, eps, wd, decay_factor, mode,
                step_size, inv_sqrt_bc2, start, stop):
    for i in range(start, stop):
        gi = g[i]
        pi = p[i]
        if mode == 1:
            pi = pi * decay_factor                       # AdamW: θ ← θ(1 − ηλ)
        elif mode == 2:
            gi = gi + wd * pi                            # Adam: g ← g + λθ
        mi = m[i] * b1
        mi = mi + one_minus_b1 * gi                      # m ← β₁m + (1−β₁)g
        vi = v[i] * b2
        vi = vi + one_minus_b2 * (gi * gi)               # v ← β₂v + (1−β₂)g²
        denom = math.sqrt(vi) * inv_sqrt_bc2
        denom = denom + eps                              # √v̂ + ε
        p[i] = pi - step_size * (mi / denom)             # θ ← θ − η m̂ / (√v̂ + ε)
        m[i] = mi
        v[i] = vi


@njit(parallel=True, cache=True)
def _adam_parallel(p, g, m, v, b1, b2, one_minus_b1, one_minus_b2, eps, wd, decay_factor, mode,
                   step_size, inv_sqrt_bc2):
    n = p.shape[0]
    for task in prange((n + _CHUNK - 1) // _CHUNK):
        s, e = task * _CHUNK, min(n, (task + 1) * _CHUNK)      # each task works on its own slices
        _adam_range(p[s:e], g[s:e], m[s:e], v[s:e], b1, b2, one_minus_b1, one_minus_b2, eps, wd,
                    decay_factor, mode, step_size, inv_sqrt_bc2, 0, e - s)


@njit(cache=True)
def _adam_serial(p, g, m, v, b1, b2, one_minus_b1, one_minus_b2, eps, wd, decay_factor, mode,
                 step_size, inv_sqrt_bc2):
    _adam_range(p, g, m, v, b1, b2, one_minus_b1, one_minus_b2, eps, wd, decay_factor, mode,
                step_size, inv_sqrt_bc2, 0, p.shape[0])


@njit(fastmath={"reassoc", "contract"})
def _squares_range(g, start, stop):
    total = 0.0
    for i in range(start, stop):
        x = np.float64(g[i])
        total += x * x
    return total


@njit(parallel=True, cache=True)
def _squares_parallel(g):
    n = g.shape[0]
    n_tasks = (n + _CHUNK - 1) // _CHUNK
    partial = np.zeros(n_tasks)
    for task in prange(n_tasks):
        s, e = task * _CHUNK, min(n, (task + 1) * _CHUNK)
        partial[task] = _squares_range(g[s:e], 0, e - s)
    return partial.sum()


@njit(cache=True)
def _squares_serial(g):
    return _squares_range(g, 0, g.shape[0])


def supports(*arrays) -> bool:
    """True for NumPy arrays of one shape and dtype (float32 or float64), C-contiguous."""
    first = arrays[0]
    return (first.dtype in (np.float32, np.float64)
            and all(type(a) is np.ndarray and a.dtype == first.dtype and a.shape == first.shape
                    and a.flags.c_contiguous for a in arrays))


def adam_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """One Adam (``decoupled=False``) or AdamW step of one parameter, in place on param, exp_avg and
    exp_avg_sq (see the module docstring). ``step`` is t ≥ 1, for the bias corrections."""
    if not supports(param, grad, exp_avg, exp_avg_sq):
        raise TypeError("adam_step needs param, grad, exp_avg, exp_avg_sq as C-contiguous NumPy arrays "
                        f"of one shape and dtype (float32/float64), got {param.dtype}{list(param.shape)}, "
                        f"{grad.dtype}{list(grad.shape)}, {exp_avg.dtype}{list(exp_avg.shape)}, "
                        f"{exp_avg_sq.dtype}{list(exp_avg_sq.shape)}")
    real = param.dtype.type
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    # the reference's scalars, each as NumPy makes it (a Python float becomes the array's dtype)
    mode = 0 if not weight_decay else (1 if decoupled else 2)    # none, AdamW decay, Adam L2
    args = (real(beta1), real(beta2), real(1.0 - beta1), real(1.0 - beta2), real(eps),
            real(weight_decay), real(1.0 - lr * weight_decay), mode, real(lr / bc1),
            real(1.0 / math.sqrt(bc2)))
    flat = [a.reshape(-1) for a in (param, grad, exp_avg, exp_avg_sq)]
    if param.size >= SERIAL_BELOW:
        threads.start_numba_pool()
    (_adam_serial if param.size < SERIAL_BELOW else _adam_parallel)(*flat, *args)


def sum_of_squares(grad) -> float:
    """Σ g² over every element of one array, accumulated in float64."""
    if not supports(grad):
        raise TypeError(f"sum_of_squares needs a C-contiguous float32/float64 NumPy array, got "
                        f"{type(grad).__name__} {getattr(grad, 'dtype', '')}")
    flat = grad.reshape(-1)
    if flat.size >= SERIAL_BELOW:
        threads.start_numba_pool()
    return float((_squares_serial if flat.size < SERIAL_BELOW else _squares_parallel)(flat))


__all__ = ["adam_step", "sum_of_squares", "supports", "SERIAL_BELOW"]
