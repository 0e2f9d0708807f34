"""Multi-head self-attention — the article's Q = W_Q·E(x), K = W_K·E(x), V = W_V·E(x),
S = softmax(QKᵀ/√d_k), Z = S·V, done for H heads at once.

Forward (x: [B, T, C], C = H·d, d = d_k; ``keep``: [B, T] bool, True = a real token):

    Q = x W_Qᵀ + b_Q,  K = x W_Kᵀ + b_K,  V = x W_Vᵀ + b_V          [B, T, C]
    split heads: [B, T, C] -> [B, H, T, d]
    S = Q Kᵀ / √d  (+ −∞ where the key is padding)                    [B, H, T, T]
    P = softmax(S);   P̃ = dropout(P)                                  [B, H, T, T]
    Z = P̃ V;   merge heads: [B, H, T, d] -> [B, T, C]
    y = Z W_Oᵀ + b_O                                                   [B, T, C]

Backward runs it in reverse: dZ -> (dP̃ = dZ Vᵀ, dV = P̃ᵀ dZ) -> dropout -> dS = P ∘ (dP − rowsum(dP∘P))
-> dQ = dS K/√d, dK = dSᵀ Q/√d -> each projection's backward, and dx is the sum of the three.

Two ways to compute the core ``softmax(QKᵀ/√d + mask) V``:

* the **kernel path** (``tinybert_kernels.attention_forward/backward``, backend chosen by
  ``backend``): used in eval mode and whenever attention dropout is 0. The kernels keep only the
  row log-sum-exp and recompute P in the backward; the fused ones never build the T×T matrix.
* the **explicit path** (Softmax and Dropout layers, P kept): used when training with
  ``attention_probs_dropout_prob > 0``, because dropout on P needs P itself.

Padding is masked with −∞ (HF adds ``finfo.min``; for any row with one real key the two give the
same probabilities, exactly). A row whose keys are all padding gets Z = 0, not NaN.
"""
from __future__ import annotations

import math

import numpy as np

import tinybert_kernels
from tinybert.nn.dropout import Dropout
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module
from tinybert.nn.softmax import Softmax
from tinybert.xp import get_array_module


class MultiHeadSelfAttention(Module):
    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0,
                 rng=None, init_rng=None, std: float = 0.02, dtype=np.float32,
                 backend: str = "auto"):
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        init_rng = np.random.default_rng(0) if init_rng is None else init_rng
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.query = Linear(hidden_size, hidden_size, init_rng, std, dtype)    # W_Q
        self.key = Linear(hidden_size, hidden_size, init_rng, std, dtype)      # W_K
        self.value = Linear(hidden_size, hidden_size, init_rng, std, dtype)    # W_V
        self.out = Linear(hidden_size, hidden_size, init_rng, std, dtype)      # W_O
        self.softmax = Softmax()
        self.dropout = Dropout(attention_dropout, rng)
        tinybert_kernels.resolve_backend(backend)   # validates the name now, not at the first forward
        self.backend = backend                      # "auto" is resolved per call, from the arrays
        self.cache = None

    # [B, T, C] <-> [B, H, T, d]
    def _split(self, x):
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge(self, x):
        b, h, t, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)

    def forward(self, x, keep=None):
        """x: [B, T, C], keep: [B, T] bool or None -> y: [B, T, C]"""
        xp = get_array_module(x)
        scale = 1.0 / math.sqrt(self.head_dim)
        q = self._split(self.query(x))
        k = self._split(self.key(x))
        v = self._split(self.value(x))
        explicit = self.training and self.dropout.p > 0
        if explicit:
            s = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale                 # S = QKᵀ/√d
            p = self.softmax(s, None if keep is None else keep[:, None, None, :])
            z = xp.matmul(self.dropout(p), v)                                 # Z = dropout(P) V
            self.cache = ("explicit", q, k, v, scale, keep, None, None)
        else:
            backend = tinybert_kernels.resolve_backend(self.backend, q)
            z, lse = tinybert_kernels.attention_forward(q, k, v, mask=keep, scale=scale, backend=backend)
            self.cache = ("kernel", q, k, v, scale, keep, z, lse)
        return self.out(self._merge(z))

    def backward(self, dout):
        """dout: [B, T, C] -> dx: [B, T, C]; accumulates the four projections' gradients."""
        self._require_cache("cache")
        xp = get_array_module(dout)
        path, q, k, v, scale, keep, z, lse = self.cache
        dz = self._split(self.out.backward(dout))
        if path == "explicit":
            pd = self.dropout.scaled_mask * self.softmax.p if self.dropout.active else self.softmax.p
            dv = xp.matmul(xp.swapaxes(pd, -1, -2), dz)                       # dV = P̃ᵀ dZ
            dp = self.dropout.backward(xp.matmul(dz, xp.swapaxes(v, -1, -2)))  # dP = dropout'(dZ Vᵀ)
            ds = self.softmax.backward(dp) * scale                           # dS (with the 1/√d)
            dq = xp.matmul(ds, k)                                             # dQ = dS K
            dk = xp.matmul(xp.swapaxes(ds, -1, -2), q)                        # dK = dSᵀ Q
        else:
            backend = tinybert_kernels.resolve_backend(self.backend, q)
            dq, dk, dv = tinybert_kernels.attention_backward(
                q, k, v, z, lse, dz, mask=keep, scale=scale, backend=backend)
        dx = self.query.backward(self._merge(dq))
        dx = dx + self.key.backward(self._merge(dk))
        dx = dx + self.value.backward(self._merge(dv))
        return dx
