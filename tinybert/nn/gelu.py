"""GELU, the Gaussian Error Linear Unit: y = x · Φ(x), Φ the standard normal CDF.

Exact (BERT's ``"gelu"``, the erf form):

    y  = ½ x (1 + erf(x/√2))
    dy/dx = Φ(x) + x φ(x),      φ(x) = exp(−x²/2)/√(2π)

Tanh approximation (``"gelu_new"`` / ``"gelu_pytorch_tanh"`` in HF configs):

    u = √(2/π) (x + 0.044715 x³),   y = ½ x (1 + tanh u)
    dy/dx = ½ (1 + tanh u) + ½ x (1 − tanh² u) √(2/π) (1 + 3·0.044715 x²)

x: any shape -> same shape.

Fast path: for a NumPy float32/float64 array the exact form runs as one fused, parallel pass
(``kernels/gelu.py``; float64 gives the formula below bit for bit, float32 agrees with it to float32
rounding); the formula below is the reference, and what CuPy arrays (and a machine without Numba)
compute.
"""
from __future__ import annotations

import math

from tinybert_kernels import dispatch
from tinybert.nn.module import Module
from tinybert.special import erf
from tinybert.xp import get_array_module

_KERNEL = dispatch.fused("gelu")     # None without Numba

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def normal_cdf(x, approximate: str = "none"):
    """Φ(x) = ½(1 + erf(x/√2)), or its tanh approximation.  x: [...] -> [...]"""
    if approximate == "none":
        return 0.5 * (1.0 + erf(x * _INV_SQRT_2))
    xp = get_array_module(x)
    return 0.5 * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))


def gelu_reference(x, approximate: str = "none"):
    """y = x Φ(x), the formula (the oracle of the fused kernel).  x: [...] -> [...]"""
    return x * normal_cdf(x, approximate)


def gelu_reference_backward(x, dout, approximate: str = "none"):
    """dx = dout · dy/dx, the formula.  x, dout: [...] -> dx: [...]"""
    xp = get_array_module(dout)
    c = normal_cdf(x, approximate)
    if approximate == "none":
        pdf = xp.exp(-0.5 * x * x) * _INV_SQRT_2PI                    # φ(x)
        return dout * (c + x * pdf)
    t = 2.0 * c - 1.0                                                 # tanh u
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return dout * (c + 0.5 * x * (1.0 - t * t) * du)


class GELU(Module):
    """The layer: the fused kernel where it applies, else the formula. Caches x only; the backward
    recomputes Φ (one erf) instead of keeping a second array of x's size."""

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate={approximate!r}: expected 'none' (erf) or 'tanh'")
        self.approximate = approximate
        self.x = None

    @property
    def cdf(self):
        """Φ(x) of the last forward's input (computed on demand)."""
        self._require_cache("x")
        return normal_cdf(self.x, self.approximate)

    def _fused(self, *arrays):
        return self.approximate == "none" and _KERNEL is not None and _KERNEL.supports(*arrays)

    def forward(self, x):
        """x: [...] -> [...]"""
        self.x = x
        if self._fused(x):
            return _KERNEL.gelu_forward(x)
        return gelu_reference(x, self.approximate)

    def backward(self, dout):
        """dout: [...] -> dx: [...]"""
        self._require_cache("x")
        if self._fused(self.x, dout):
            return _KERNEL.gelu_backward(self.x, dout)
        return gelu_reference_backward(self.x, dout, self.approximate)


class ReLU(Module):
    """y = max(x, 0);  dx = dy · [x > 0].  x: [...] -> [...]"""

    def __init__(self):
        self.x = None

    def forward(self, x):
        self.x = x
        return x * (x > 0)

    def backward(self, dout):
        self._require_cache("x")
        return dout * (self.x > 0)


def activation(name: str) -> Module:
    """The activation layer for an HF ``hidden_act`` name."""
    if name == "gelu":
        return GELU("none")
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return GELU("tanh")
    if name == "relu":
        return ReLU()
    raise ValueError(f"hidden_act={name!r}: expected one of 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu'")
