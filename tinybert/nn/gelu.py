"""GELU, the Gaussian Error Linear Unit: y = x · Φ(x), Φ the standard normal CDF.

Exact (BERT's ``"gelu"``, the erf form):

    y  = ½ x (1 + erf(x/√2))
    dy/dx = Φ(x) + x φ(x),      φ(x) = exp(−x²/2)/√(2π)

Tanh approximation (``"gelu_new"`` / ``"gelu_pytorch_tanh"`` in HF configs):

    u = √(2/π) (x + 0.044715 x³),   y = ½ x (1 + tanh u)
    dy/dx = ½ (1 + tanh u) + ½ x (1 − tanh² u) √(2/π) (1 + 3·0.044715 x²)

x: any shape -> same shape.
"""
from __future__ import annotations

import math

from tinybert.nn.module import Module
from tinybert.special import erf
from tinybert.xp import get_array_module

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate={approximate!r}: expected 'none' (erf) or 'tanh'")
        self.approximate = approximate
        self.x = self.cdf = None

    def forward(self, x):
        """x: [...] -> [...]"""
        xp = get_array_module(x)
        self.x = x
        if self.approximate == "none":
            self.cdf = 0.5 * (1.0 + erf(x * _INV_SQRT_2))       # Φ(x)
        else:
            self.cdf = 0.5 * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))
        return x * self.cdf

    def backward(self, dout):
        """dout: [...] -> dx: [...]"""
        self._require_cache("x")
        xp = get_array_module(dout)
        x, cdf = self.x, self.cdf
        if self.approximate == "none":
            pdf = xp.exp(-0.5 * x * x) * _INV_SQRT_2PI               # φ(x)
            return dout * (cdf + x * pdf)
        t = 2.0 * cdf - 1.0                                           # tanh u
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return dout * (cdf + 0.5 * x * (1.0 - t * t) * du)


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
