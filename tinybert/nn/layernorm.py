"""LayerNorm over the last axis, as BERT uses it (biased variance, eps = 1e-12).

Forward, per row x of length C:

    μ = mean(x)      σ² = mean((x − μ)²)   (biased: divide by C, not C−1)
    rstd = 1/√(σ² + eps)     x̂ = (x − μ)·rstd      y = γ ∘ x̂ + β

Backward, with dx̂ = dy ∘ γ (means over the last axis):

    dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂))
    dγ += Σ dy ∘ x̂        dβ += Σ dy

``weight`` is γ and ``bias`` is β (PyTorch's names; old TF checkpoints call them gamma/beta).
x: [..., C] -> y: [..., C]. The cache keeps exactly x̂ and rstd.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.module import Module, Parameter


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-12, dtype=np.float32):
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))
        self.eps = eps
        self.xhat = self.rstd = None

    def forward(self, x):
        """x: [..., C] -> [..., C]"""
        mu = x.mean(axis=-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(axis=-1, keepdims=True)          # biased variance
        self.rstd = 1.0 / (var + self.eps) ** 0.5
        self.xhat = xc * self.rstd
        return self.xhat * self.weight.data + self.bias.data

    def backward(self, dout):
        """dout: [..., C] -> dx: [..., C]; accumulates weight.grad and bias.grad [C]."""
        self._require_cache("xhat")
        c = dout.shape[-1]
        xhat, rstd = self.xhat, self.rstd
        self.weight.accumulate((dout * xhat).reshape(-1, c).sum(axis=0))
        self.bias.accumulate(dout.reshape(-1, c).sum(axis=0))
        dxhat = dout * self.weight.data
        return rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                       - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
