"""LayerNorm over the last axis, as BERT uses it (biased variance, eps = 1e-12).

Forward, per row x of length C:

    μ = mean(x)      σ² = mean((x − μ)²)   (biased: divide by C, not C−1)
    rstd = 1/√(σ² + eps)     x̂ = (x − μ)·rstd      y = γ ∘ x̂ + β

Backward, with dx̂ = dy ∘ γ (means over the last axis):

    dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂))
    dγ += Σ dy ∘ x̂        dβ += Σ dy

``weight`` is γ and ``bias`` is β (PyTorch's names; old TF checkpoints call them gamma/beta).
x: [..., C] -> y: [..., C]. The cache keeps exactly x̂ and rstd.

A post-norm block computes LayerNorm(x + sublayer(x)): ``forward(x, residual)`` normalises the sum
without building it first, and ``backward(dout, dout2)`` takes a second upstream gradient and adds
it in (the residual stream's). Both return the gradient of the normalised sum, which is the gradient
of x and of the residual alike.

Fast path: for NumPy float32/float64 arrays the forward and the backward are one fused, parallel
pass each (``kernels/layernorm.py``); the functions below are the reference, and what CuPy arrays
(and a machine without Numba) compute.
"""
from __future__ import annotations

import math

import numpy as np

from tinybert_kernels import dispatch
from tinybert.errors import InvalidValue
from tinybert.nn.module import Module, Parameter

_KERNEL = dispatch.fused("layernorm")     # None without Numba


def layernorm_reference(x, weight, bias, eps):
    """The formula.  x: [..., C], weight, bias: [C] -> y, x̂: [..., C], rstd: [..., 1]"""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)          # biased variance
    rstd = 1.0 / (var + eps) ** 0.5
    xhat = xc * rstd
    return xhat * weight + bias, xhat, rstd


def layernorm_reference_backward(dout, xhat, rstd, weight):
    """The formula.  dout, x̂: [..., C], rstd: [..., 1], weight: [C] -> dx [..., C], dγ [C], dβ [C]"""
    c = dout.shape[-1]
    dweight = (dout * xhat).reshape(-1, c).sum(axis=0)
    dbias = dout.reshape(-1, c).sum(axis=0)
    dxhat = dout * weight
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dweight, dbias


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-12, dtype=np.float32):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidValue(f"LayerNorm dim={dim!r}: expected an integer >= 1 (the size C of the last axis)")
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0 <= eps < math.inf:
            raise InvalidValue(f"LayerNorm eps={eps!r}: expected a finite number >= 0 (BERT's is 1e-12; 0 "
                               "leaves a constant row 0/0)")
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))
        self.eps = eps
        self.xhat = self.rstd = None

    def forward(self, x, residual=None):
        """x: [..., C] (residual: [..., C] or None) -> LayerNorm(x + residual): [..., C]"""
        w, b = self.weight.data, self.bias.data
        arrays = (x, w, b) if residual is None else (x, residual, w, b)
        if _KERNEL is not None and _KERNEL.supports(*arrays) and (residual is None or residual.shape == x.shape):
            y, self.xhat, self.rstd = _KERNEL.layernorm_forward(x, w, b, self.eps, residual)
            return y
        v = x if residual is None else x + residual
        y, self.xhat, self.rstd = layernorm_reference(v, w, b, self.eps)
        return y

    def backward(self, dout, dout2=None):
        """dout (+ dout2): [..., C] -> dx: [..., C]; accumulates weight.grad and bias.grad [C]."""
        self._require_cache("xhat")
        w = self.weight.data
        arrays = (dout, self.xhat, self.rstd, w) + (() if dout2 is None else (dout2,))
        if _KERNEL is not None and _KERNEL.supports(*arrays) and (dout2 is None or dout2.shape == dout.shape):
            dx, dweight, dbias = _KERNEL.layernorm_backward(dout, self.xhat, self.rstd, w, dout2)
        else:
            g = dout if dout2 is None else dout + dout2
            dx, dweight, dbias = layernorm_reference_backward(g, self.xhat, self.rstd, w)
        self.weight.accumulate(dweight)
        self.bias.accumulate(dbias)
        return dx
