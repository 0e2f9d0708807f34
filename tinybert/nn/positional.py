"""The sinusoidal positional encoding of "Attention Is All You Need" — the article's PositionalEncoding(i).

    PE[i, 2k]   = sin(i / 10000^(2k/C))
    PE[i, 2k+1] = cos(i / 10000^(2k/C))         i: position, k: 0 … C/2−1, C: hidden size

The article writes E(x_i) = Embedding(x_i) + PositionalEncoding(i). BERT itself *learns* its position
table instead (an ``Embedding`` over positions, see ``bert_embeddings.py``); this fixed table is the
original Transformer's choice and what lesson 02 compares it with. It has no parameters, so its
backward passes the gradient straight through.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.module import Module
from tinybert.xp import get_array_module


def sinusoidal_table(num_positions: int, dim: int, dtype=np.float64) -> np.ndarray:
    """The table PE: [num_positions, dim] (dim must be even)."""
    if dim % 2:
        raise ValueError(f"dim={dim} must be even for the sin/cos pairs")
    i = np.arange(num_positions)[:, None]                  # [P, 1]
    freq = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)     # [C/2]  1/10000^(2k/C)
    pe = np.empty((num_positions, dim))
    pe[:, 0::2] = np.sin(i * freq)
    pe[:, 1::2] = np.cos(i * freq)
    return pe.astype(dtype)


class PositionalEncoding(Module):
    """y = x + PE[:T].   x: [B, T, C] -> y: [B, T, C];  backward: dx = dy."""

    def __init__(self, max_positions: int, dim: int):
        self.table = sinusoidal_table(max_positions, dim)
        self.max_positions = max_positions

    def forward(self, x):
        t = x.shape[-2]
        if t > self.max_positions:
            raise ValueError(f"sequence length {t} exceeds max_positions={self.max_positions}")
        xp = get_array_module(x)
        return x + xp.asarray(self.table[:t], dtype=x.dtype)

    def backward(self, dout):
        return dout
