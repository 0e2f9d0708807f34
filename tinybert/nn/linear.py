"""Linear: an affine map, the workhorse of every transformer block.

    y = x Wᵀ + b                      x: [..., in]   W: [out, in]   b: [out]   y: [..., out]

Backward, with dy = dL/dy flattened to [N, out] and x to [N, in]:

    dx = dy W         dW += dyᵀ x         db += Σ_n dy

W is stored [out, in] as in PyTorch and HF checkpoints, so weights copy over without transposing.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.module import Module, Parameter
from tinybert_kernels import dispatch
from tinybert.xp import get_array_module


def matmul(a, b, out=None, bias=None, accumulate=False):
    """a @ b (+ bias [N] on every row): [M, K] × [K, N] -> [M, N] (NumPy or CuPy), into ``out`` when
    given; accumulate=True adds it into ``out`` instead (out += a @ b). Every product of
    ``Linear`` and of the Q/K/V projection goes through here, so that ``bench/real_model.py`` can
    time each one by shape. NumPy's are split over Numba's threads (``tinybert_kernels.matmul``,
    whose twin is this plain ``a @ b``)."""
    xp = get_array_module(a)
    split = dispatch.fused("matmul") if xp is np else None
    if split is not None:
        return split.matmul(a, b, out=out, bias=bias, accumulate=accumulate)
    if accumulate:
        out += a @ b
        return out
    y = a @ b if out is None else xp.matmul(a, b, out=out)
    if bias is not None:
        y += bias
    return y


FEW_ROWS = 32     # at most this many rows (tokens): x Wᵀ is computed as (W xᵀ)ᵀ


def few_rows(n: int) -> bool:
    """True when a product over ``n`` rows takes the few-rows form (W xᵀ)ᵀ of ``Linear.forward``."""
    return n <= FEW_ROWS


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
        x2 = x.reshape(-1, self.in_features)
        b = None if self.bias is None else self.bias.data
        if few_rows(x2.shape[0]):
            # the same product as (W xᵀ)ᵀ: OpenBLAS packs its right-hand operand into a buffer, and
            # xᵀ (a few columns) is cheaper to pack than the whole weight: 20–33% less time for 4–32
            # rows on one thread (at 1 row both are a matrix-vector product; from ~64 rows x Wᵀ wins)
            y = get_array_module(x).ascontiguousarray(matmul(self.weight.data, x2.T).T)
            if b is not None:
                y += b
        else:
            y = matmul(x2, self.weight.data.T, bias=b)    # x Wᵀ + b (the product's threads add b)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dout):
        """dout: [..., out] -> dx: [..., in]; accumulates weight.grad [out, in] and bias.grad [out]."""
        self._require_cache("x")
        x2 = self.x.reshape(-1, self.in_features)
        d2 = dout.reshape(-1, self.out_features)
        if self.weight.requires_grad:
            matmul(d2.T, x2, out=self.weight.grad, accumulate=True)     # weight.grad += dyᵀ x
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += d2.sum(axis=0)
        return matmul(d2, self.weight.data).reshape(self.x.shape)
