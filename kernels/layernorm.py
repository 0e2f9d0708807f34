"""LayerNorm over the last axis, fused and parallel on the CPU with Numba, with the residual sum of a
post-norm block folded in (forward and backward).

The readable formula and the reference are in ``tinybert/nn/layernorm.py``. Per row of length C,
with an optional residual r (BERT's LN(x + sublayer(x)))::

    v = x (+ r)     μ = mean(v)    σ² = mean((v − μ)²)    rstd = 1/√(σ² + eps)
    x̂ = (v − μ)·rstd    y = γ ∘ x̂ + β

    backward, dy (+ dy2: a second upstream gradient, summed in), dx̂ = dy ∘ γ:
    dv = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂))      dγ = Σ_rows dy ∘ x̂     dβ = Σ_rows dy

One task handles a block of rows: it reads each row once into cache, so the forward is one pass
over x (and r) that writes y, x̂ and rstd, and the backward one pass over dy (and dy2), x̂ that
writes dx and adds the task's share of dγ and dβ into its own row of a [tasks, C] buffer (summed
at the end: no two threads write the same memory). Means are accumulated in the working dtype, as
NumPy does; a row is short (C ≤ a few thousand) and read from cache twice.

NaN and inf: nothing compares or clamps, so a NaN anywhere in a row gives NaN in that row's y
(and dx), as in the reference.

Shapes: x, r, y, x̂, dy, dy2, dx [N, C] C-contiguous (callers flatten [..., C]); rstd [N];
γ, β, dγ, dβ [C]; float32 or float64, all one dtype.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from tinybert_kernels import threads

SERIAL_BELOW = 1 << 16     # elements: smaller arrays run on one thread (see kernels/threads.py)
_ROWS_PER_TASK = 16


@njit(fastmath={"reassoc", "contract", "nsz"})
def _forward_rows(x, r, has_r, gamma, beta, eps, inv_c, y, xhat, rstd, start, stop):
    C = x.shape[1]
    one = inv_c / inv_c                                        # 1 in the working dtype
    for i in range(start, stop):
        xi = x[i]
        yi = y[i]
        hi = xhat[i]
        if has_r:
            ri = r[i]
            for c in range(C):
                hi[c] = xi[c] + ri[c]                          # v = x + r (kept in x̂'s row)
        else:
            for c in range(C):
                hi[c] = xi[c]
        total = hi[0] - hi[0]
        for c in range(C):
            total += hi[c]
        mu = total * inv_c                                     # μ = mean(v)
        sq = total - total
        for c in range(C):
            d = hi[c] - mu
            sq += d * d
        s = one / math.sqrt(sq * inv_c + eps)                  # rstd = 1/√(σ² + eps)
        rstd[i] = s
        for c in range(C):
            h = (hi[c] - mu) * s                               # x̂ = (v − μ)·rstd
            hi[c] = h
            yi[c] = h * gamma[c] + beta[c]                     # y = γ x̂ + β


@njit(fastmath={"reassoc", "contract", "nsz"})
def _backward_rows(dy, dy2, has_dy2, xhat, rstd, gamma, inv_c, dx, dgamma, dbeta, start, stop):
    C = dy.shape[1]
    for i in range(start, stop):
        gi = dx[i]                                             # dy (+ dy2), kept in dx's row
        di = dy[i]
        if has_dy2:
            d2 = dy2[i]
            for c in range(C):
                gi[c] = di[c] + d2[c]
        else:
            for c in range(C):
                gi[c] = di[c]
        hi = xhat[i]
        m1 = gi[0] - gi[0]
        m2 = m1
        for c in range(C):
            g = gi[c]
            dgamma[c] += g * hi[c]                             # dγ += dy ∘ x̂
            dbeta[c] += g                                      # dβ += dy
            dxh = g * gamma[c]                                 # dx̂ = dy ∘ γ
            m1 += dxh
            m2 += dxh * hi[c]
        m1 *= inv_c                                            # mean(dx̂)
        m2 *= inv_c                                            # mean(dx̂ ∘ x̂)
        s = rstd[i]
        for c in range(C):
            gi[c] = s * (gi[c] * gamma[c] - m1 - hi[c] * m2)   # dx = rstd (dx̂ − m1 − x̂ m2)


@njit(parallel=True, cache=True)
def _forward_parallel(x, r, has_r, gamma, beta, eps, inv_c, y, xhat, rstd):
    N = x.shape[0]
    for task in prange((N + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        start = task * _ROWS_PER_TASK
        _forward_rows(x, r, has_r, gamma, beta, eps, inv_c, y, xhat, rstd, start, min(N, start + _ROWS_PER_TASK))


@njit(cache=True)
def _forward_serial(x, r, has_r, gamma, beta, eps, inv_c, y, xhat, rstd):
    _forward_rows(x, r, has_r, gamma, beta, eps, inv_c, y, xhat, rstd, 0, x.shape[0])


@njit(parallel=True, cache=True)
def _backward_parallel(dy, dy2, has_dy2, xhat, rstd, gamma, inv_c, dx, partial):
    """partial: [n_tasks, 2, C] zeros; task t adds its dγ into partial[t, 0] and dβ into partial[t, 1]."""
    N = dy.shape[0]
    n_tasks = partial.shape[0]
    rows = (N + n_tasks - 1) // n_tasks
    for t in prange(n_tasks):
        start = t * rows
        _backward_rows(dy, dy2, has_dy2, xhat, rstd, gamma, inv_c, dx, partial[t, 0], partial[t, 1],
                       start, min(N, start + rows))


@njit(cache=True)
def _backward_serial(dy, dy2, has_dy2, xhat, rstd, gamma, inv_c, dx, partial):
    _backward_rows(dy, dy2, has_dy2, xhat, rstd, gamma, inv_c, dx, partial[0, 0], partial[0, 1], 0, dy.shape[0])


def supports(x, *others) -> bool:
    """True when the kernel takes these arrays: NumPy, float32 or float64 (all one dtype),
    C-contiguous, 1-D or more. Anything else takes the layer's NumPy formula (CuPy arrays too)."""
    return (type(x) is np.ndarray and x.dtype in (np.float32, np.float64) and x.ndim >= 1
            and x.shape[-1] >= 1
            and all(type(a) is np.ndarray and a.dtype == x.dtype and a.flags.c_contiguous
                    for a in (x,) + others))


def _check(**arrays):
    first_name, first = next(iter(arrays.items()))
    for name, a in arrays.items():
        if type(a) is not np.ndarray:
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64) or a.dtype != first.dtype:
            raise TypeError(f"{name}.dtype is {a.dtype}; the LayerNorm kernel takes float32 or float64, "
                            f"all like {first_name} ({first.dtype})")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray) for the LayerNorm kernel")


def _n_tasks(N, C):
    """1 (the serial kernel) for small work, else a few tasks per thread."""
    if N * C < SERIAL_BELOW:
        return 1
    import numba

    threads.start_numba_pool()
    return min(N, 4 * numba.get_num_threads())


def layernorm_forward(x, gamma, beta, eps, residual=None):
    """y, x̂, rstd of LayerNorm(x + residual) over the last axis.

    Args:
        x: [..., C]; residual: [..., C] or None; gamma, beta: [C]; eps: float.
    Returns:
        y, xhat: [..., C] and rstd: [..., 1] (the reference's keepdims shape).
    """
    arrays = dict(x=x, gamma=gamma, beta=beta) if residual is None else dict(x=x, residual=residual,
                                                                           gamma=gamma, beta=beta)
    _check(**arrays)
    C = x.shape[-1]
    if gamma.shape != (C,) or beta.shape != (C,):
        raise ValueError(f"gamma {gamma.shape} and beta {beta.shape} must be [C] = ({C},) for x {x.shape}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual.shape {residual.shape} must equal x.shape {x.shape}")
    x2 = x.reshape(-1, C)
    r2 = x2 if residual is None else residual.reshape(-1, C)
    y = np.empty_like(x2)
    xhat = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    kernel = _forward_serial if _n_tasks(*x2.shape) == 1 else _forward_parallel
    kernel(x2, r2, residual is not None, gamma, beta, x.dtype.type(eps), x.dtype.type(1.0 / C), y, xhat, rstd)
    return y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)


def layernorm_backward(dy, xhat, rstd, gamma, dy2=None):
    """dx, dγ, dβ of LayerNorm given dy (+ dy2, a second upstream gradient summed in).

    Args:
        dy, xhat: [..., C]; rstd: [..., 1]; gamma: [C]; dy2: [..., C] or None.
    Returns:
        dx: [..., C], dgamma: [C], dbeta: [C].
    """
    arrays = dict(dy=dy, xhat=xhat, rstd=rstd, gamma=gamma) if dy2 is None else dict(
        dy=dy, dy2=dy2, xhat=xhat, rstd=rstd, gamma=gamma)
    _check(**arrays)
    C = dy.shape[-1]
    if xhat.shape != dy.shape or (dy2 is not None and dy2.shape != dy.shape):
        raise ValueError(f"xhat {xhat.shape} (and dy2) must have dy's shape {dy.shape}")
    dy_2 = dy.reshape(-1, C)
    N = dy_2.shape[0]
    if rstd.size != N or gamma.shape != (C,):
        raise ValueError(f"rstd {rstd.shape} must hold one value per row ({N}) and gamma {gamma.shape} be ({C},)")
    dx = np.empty_like(dy_2)
    n_tasks = _n_tasks(N, C)
    partial = np.zeros((n_tasks, 2, C), dtype=dy.dtype)
    kernel = _backward_serial if n_tasks == 1 else _backward_parallel
    kernel(dy_2, dy_2 if dy2 is None else dy2.reshape(-1, C), dy2 is not None, xhat.reshape(-1, C),
           rstd.reshape(-1), gamma, dy.dtype.type(1.0 / C), dx, partial)
    sums = partial.sum(axis=0) if n_tasks > 1 else partial[0]
    return dx.reshape(dy.shape), sums[0], sums[1]


__all__ = ["layernorm_forward", "layernorm_backward", "supports", "SERIAL_BELOW"]
