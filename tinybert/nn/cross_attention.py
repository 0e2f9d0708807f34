"""Cross-attention (the Transformer's encoder-decoder attention): the decoder asks, the encoder answers.

Queries come from the decoder's hidden states x, keys and values from the encoder's output m (the
"memory"); the sequences may differ in length (Tq ≠ Tk):

    Q = x W_Qᵀ + b_Q   [B, Tq, C]          K = m W_Kᵀ + b_K,  V = m W_Vᵀ + b_V   [B, Tk, C]
    split heads -> [B, H, T·, d]
    S = Q Kᵀ / √d  (+ −∞ where the encoder's token is padding)     [B, H, Tq, Tk]
    Z = dropout(softmax(S)) V;   merge heads;   y = Z W_Oᵀ + b_O      [B, Tq, C]

No causal mask: every decoder position may look at the whole source. The core is the same kernel
call as self-attention (``tinybert_kernels.dispatch.attention_forward/backward``), which allows Tq ≠ Tk.

Backward: dZ -> the kernel's (dQ, dK, dV) -> dx = dQ W_Q (the queries' path) and
dm = dK W_K + dV W_V (the keys' and values' path): the gradient reaching the encoder.

In generation the memory does not change from one step to the next, so its keys and values are
computed once (``memory_kv(m)``) and passed to every later ``forward(x, memory_kv=...)``.

Attention dropout draws its mask at the Philox counters (j // 4, i, h, b₀ + b), as self-attention's
does: a data-parallel rank holding rows b₀.. of the global batch has ``batch_offset = b₀`` (set by
``distributed.set_batch_offset``), so its masks are those rows' masks of the whole batch.
"""
from __future__ import annotations

import math

import numpy as np

from tinybert_kernels import dispatch
from tinybert.nn.attention import MultiHeadSelfAttention, check_attention_sizes
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module


class CrossAttention(Module):
    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0,
                 rng=None, init_rng=None, std: float = 0.02, dtype=np.float32, backend: str = "auto"):
        check_attention_sizes(hidden_size, num_heads, attention_dropout)
        init_rng = np.random.default_rng(0) if init_rng is None else init_rng
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.query = Linear(hidden_size, hidden_size, init_rng, std, dtype)    # W_Q, on the decoder
        self.key = Linear(hidden_size, hidden_size, init_rng, std, dtype)      # W_K, on the encoder
        self.value = Linear(hidden_size, hidden_size, init_rng, std, dtype)    # W_V, on the encoder
        self.out = Linear(hidden_size, hidden_size, init_rng, std, dtype)      # W_O
        self.dropout_p = attention_dropout
        self.rng = np.random.default_rng(0) if rng is None else rng
        dispatch.resolve_backend(backend)
        self.backend = backend
        self.cache = None
        self.dropout_draw = (0.0, None)             # (p, seed) of the last forward's dropout mask
        self.batch_offset = 0                       # data parallel: the global index of row 0

    # [B, T, C] <-> [B, H, T, d]: the self-attention layer's own head split and merge
    _split = MultiHeadSelfAttention._split
    _merge = MultiHeadSelfAttention._merge

    def memory_kv(self, memory):
        """memory: [B, Tk, C] -> (K, V): [B, H, Tk, d] each (what generation computes once)."""
        return self._split(self.key(memory)), self._split(self.value(memory))

    def forward(self, x, memory=None, memory_keep=None, memory_kv=None):
        """x: [B, Tq, C], memory: [B, Tk, C], memory_keep: [B, Tk] bool or None -> y: [B, Tq, C].

        ``memory_kv``: (K, V) from ``memory_kv(memory)`` instead of ``memory`` (generation; no backward)."""
        scale = 1.0 / math.sqrt(self.head_dim)
        q = self._split(self.query(x))
        from_memory = memory_kv is None
        k, v = self.memory_kv(memory) if from_memory else memory_kv
        p = self.dropout_p if self.training else 0.0
        seed = int(self.rng.integers(0, 2 ** 64, dtype=np.uint64)) if p > 0 else None
        backend = dispatch.resolve_backend(self.backend, q)
        z, lse = dispatch.attention_forward(q, k, v, mask=memory_keep, scale=scale, dropout_p=p,
                                                    dropout_seed=seed, backend=backend,
                                                    dropout_offset=self.batch_offset)
        self.cache = (backend, q, k, v, scale, memory_keep, z, lse) if from_memory else None
        self.dropout_draw = (p, seed)
        return self.out(self._merge(z))

    def backward(self, dout):
        """dout: [B, Tq, C] -> (dx: [B, Tq, C], dmemory: [B, Tk, C]); accumulates the four projections."""
        self._require_cache("cache")
        backend, q, k, v, scale, keep, z, lse = self.cache
        p, seed = self.dropout_draw
        dz = self._split(self.out.backward(dout))
        dq, dk, dv = dispatch.attention_backward(
            q, k, v, z, lse, dz, mask=keep, scale=scale, dropout_p=p, dropout_seed=seed, backend=backend,
            dropout_offset=self.batch_offset)
        dx = self.query.backward(self._merge(dq))                                      # dQ W_Q
        dmemory = self.key.backward(self._merge(dk)) + self.value.backward(self._merge(dv))   # dK W_K + dV W_V
        return dx, dmemory
