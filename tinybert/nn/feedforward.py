"""The position-wise feed-forward network (FFN) of a transformer block.

    FFN(x) = GELU(x W_1ᵀ + b_1) W_2ᵀ + b_2       x: [B, T, C] -> h: [B, T, I] -> y: [B, T, C]

I (``intermediate_size``) is 4·C in BERT. Backward chains the three layers in reverse.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.gelu import activation
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module


class FeedForward(Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "gelu",
                 init_rng=None, std: float = 0.02, dtype=np.float32):
        init_rng = np.random.default_rng(0) if init_rng is None else init_rng
        self.fc1 = Linear(hidden_size, intermediate_size, init_rng, std, dtype)   # W_1
        self.act = activation(hidden_act)
        self.fc2 = Linear(intermediate_size, hidden_size, init_rng, std, dtype)   # W_2

    def forward(self, x):
        """x: [B, T, C] -> [B, T, C]"""
        return self.fc2(self.act(self.fc1(x)))

    def backward(self, dout):
        """dout: [B, T, C] -> dx: [B, T, C]"""
        return self.fc1.backward(self.act.backward(self.fc2.backward(dout)))
