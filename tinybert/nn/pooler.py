"""BERT's pooler: a summary vector of the sequence, read from the [CLS] token.

    pooled = tanh(h[:, 0] W_Pᵀ + b_P)          h: [B, T, C] -> pooled: [B, C]

Backward: d(pre) = d(pooled) ∘ (1 − pooled²);  dh[:, 0] = d(pre) W_P, dh elsewhere = 0.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.linear import Linear
from tinybert.nn.module import Module
from tinybert.xp import get_array_module


class Pooler(Module):
    def __init__(self, hidden_size: int, init_rng=None, std: float = 0.02, dtype=np.float32):
        self.dense = Linear(hidden_size, hidden_size, init_rng, std, dtype)
        self.pooled = None
        self.input_shape = None

    def forward(self, h):
        """h: [B, T, C] -> [B, C]"""
        xp = get_array_module(h)
        self.input_shape = h.shape
        self.pooled = xp.tanh(self.dense(h[:, 0]))
        return self.pooled

    def backward(self, dout):
        """dout: [B, C] -> dh: [B, T, C] (non-zero only at position 0)"""
        self._require_cache("pooled")
        xp = get_array_module(dout)
        dh = xp.zeros(self.input_shape, dtype=dout.dtype)
        dh[:, 0] = self.dense.backward(dout * (1.0 - self.pooled * self.pooled))
        return dh
