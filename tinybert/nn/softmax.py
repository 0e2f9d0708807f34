"""Softmax over the last axis, numerically stable, with an optional mask of kept entries.

    P_ij = exp(S_ij − m_i) / Σ_k exp(S_ik − m_i),   m_i = max_k S_ik      (masked S_ij count as −∞)

Subtracting the row max changes nothing mathematically and keeps exp() from overflowing.
A row whose entries are all masked has nothing to normalise: its P is all zeros (not NaN).

Backward (the Jacobian of softmax applied to dP = dL/dP):

    dS = P ∘ (dP − rowsum(dP ∘ P))

S: [..., N] -> P: [..., N]; mask broadcastable to S, True = kept.
"""
from __future__ import annotations

from tinybert.nn.module import Module
from tinybert.xp import get_array_module


def softmax(s, mask=None):
    """P = softmax(S) over the last axis; masked (False) entries get P = 0."""
    xp = get_array_module(s)
    if mask is not None:
        s = xp.where(mask, s, -xp.inf)
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)           # all-masked row: avoid (−∞) − (−∞) = NaN
    e = xp.exp(s - m)
    z = e.sum(axis=-1, keepdims=True)
    return e / xp.where(z > 0, z, 1)


class Softmax(Module):
    def __init__(self):
        self.p = None

    def forward(self, s, mask=None):
        """s: [..., N] -> p: [..., N]"""
        self.p = softmax(s, mask)
        return self.p

    def backward(self, dp):
        """dp: [..., N] -> ds: [..., N]"""
        self._require_cache("p")
        p = self.p
        return p * (dp - (dp * p).sum(axis=-1, keepdims=True))
