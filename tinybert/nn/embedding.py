"""Embedding: a lookup table, the article's Embedding(x_i).

    y[b, t] = W[ids[b, t]]            ids: [B, T] int   W: [V, C]   y: [B, T, C]

Backward: the rows that were read receive the upstream gradient, summed when an id repeats:

    dW[v] += Σ_{(b,t): ids[b,t] = v} dy[b, t]

Ids are integers, so there is no input gradient (backward returns None). As in PyTorch's
``nn.Embedding(padding_idx=...)``, the row of the padding id never receives gradient.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.module import Module, Parameter
from tinybert.xp import get_array_module


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, rng=None, std: float = 0.02,
                 dtype=np.float32, padding_idx: int | None = None):
        rng = np.random.default_rng(0) if rng is None else rng
        w = rng.normal(0.0, std, (num_embeddings, embedding_dim)).astype(dtype)
        if padding_idx is not None:
            w[padding_idx] = 0  # BERT/HF initialise the padding row to zero
        self.weight = Parameter(w)
        self.padding_idx = padding_idx
        self.ids = None

    def forward(self, ids):
        """ids: [...] int in [0, V) -> [..., C]"""
        self.ids = ids
        return self.weight.data[ids]

    def backward(self, dout):
        """dout: [..., C] -> None (ids have no gradient); scatter-adds into weight.grad [V, C]."""
        self._require_cache("ids")
        if not self.weight.requires_grad:
            return None
        xp = get_array_module(dout)
        ids = self.ids.reshape(-1)
        d2 = dout.reshape(-1, dout.shape[-1])
        if self.padding_idx is not None:
            d2 = xp.where((ids != self.padding_idx)[:, None], d2, 0)
        xp.add.at(self.weight.grad, ids, d2)
        return None
