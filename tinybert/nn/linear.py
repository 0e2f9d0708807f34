"""Linear: an affine map, the workhorse of every transformer block.

    y = x Wᵀ + b                      x: [..., in]   W: [out, in]   b: [out]   y: [..., out]

Backward, with dy = dL/dy flattened to [N, out] and x to [N, in]:

    dx = dy W         dW += dyᵀ x         db += Σ_n dy

W is stored [out, in] as in PyTorch and HF checkpoints, so weights copy over without transposing.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.module import Module, Parameter
from tinybert.xp import get_array_module


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, rng=None, std: float = 0.02,
                 dtype=np.float32, bias: bool = True):
        rng = np.random.default_rng(0) if rng is None else rng
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.normal(0.0, std, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None
        self.x = None

    def forward(self, x):
        """x: [..., in] -> y: [..., out]"""
        self.x = x
        # one [N, in] x [in, out] product: NumPy runs a 3-D `x @ Wᵀ` as B small products, ~10x slower
        y = x.reshape(-1, self.in_features) @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dout):
        """dout: [..., out] -> dx: [..., in]; accumulates weight.grad [out, in] and bias.grad [out]."""
        self._require_cache("x")
        xp = get_array_module(dout)
        x2 = self.x.reshape(-1, self.in_features)
        d2 = dout.reshape(-1, self.out_features)
        if self.weight.requires_grad:
            self.weight.grad += xp.matmul(d2.T, x2)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += d2.sum(axis=0)
        return (d2 @ self.weight.data).reshape(self.x.shape)
