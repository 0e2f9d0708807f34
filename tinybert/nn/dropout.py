"""Dropout, inverted: zero each entry with probability p and scale the rest by 1/(1−p).

    train:  y = x ∘ M / (1 − p),   M_ij ~ Bernoulli(1 − p)        eval:  y = x
    backward: dx = dy ∘ M / (1 − p)

Scaling at training time keeps E[y] = x, so nothing changes at evaluation. The random generator is
owned by the model and shared by all its dropout layers, so a run is reproducible from its seed
(and resumable: the generator's state is saved with a checkpoint). x: [...] -> [...].
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.module import Module
from tinybert.xp import get_array_module


class Dropout(Module):
    def __init__(self, p: float, rng: np.random.Generator | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p={p} must be in [0, 1)")
        self.p = p
        self.rng = np.random.default_rng(0) if rng is None else rng
        self.scaled_mask = None
        self.active = False

    def forward(self, x):
        """x: [...] -> [...]"""
        self.active = self.training and self.p > 0
        if not self.active:
            return x
        xp = get_array_module(x)
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p      # M
        self.scaled_mask = xp.asarray(keep, dtype=x.dtype) * (1.0 / (1.0 - self.p))
        return x * self.scaled_mask

    def backward(self, dout):
        """dout: [...] -> dx: [...]"""
        if not self.active:
            return dout
        return dout * self.scaled_mask
