"""Multi-head self-attention — the article's Q = W_Q·E(x), K = W_K·E(x), V = W_V·E(x),
S = softmax(QKᵀ/√d_k), Z = S·V, done for H heads at once.

Forward (x: [B, T, C], C = H·d, d = d_k; ``keep``: [B, T] bool, True = a real token):

    Q = x W_Qᵀ + b_Q,  K = x W_Kᵀ + b_K,  V = x W_Vᵀ + b_V          [B, T, C]
      (computed as one product [Q | K | V] = x [W_Q | W_K | W_V]ᵀ + [b_Q | b_K | b_V])
    split heads: [B, T, C] -> [B, H, T, d]
    S = Q Kᵀ / √d  (+ −∞ where the key is padding)                    [B, H, T, T]
    P = softmax(S);   P̃ = dropout(P) = P ∘ M / (1 − p)                [B, H, T, T]
    Z = P̃ V;   merge heads: [B, H, T, d] -> [B, T, C]
    y = Z W_Oᵀ + b_O                                                   [B, T, C]

Backward runs it in reverse: dZ -> (dP̃ = dZ Vᵀ, dV = P̃ᵀ dZ) -> dP = dP̃ ∘ M/(1−p)
-> dS = P ∘ (dP − rowsum(dP∘P)) -> dQ = dS K/√d, dK = dSᵀ Q/√d -> the projections' backward, again as
one product each: dx = [dQ | dK | dV] [W_Q | W_K | W_V] (the sum of the three), and
d[W_Q | W_K | W_V] += [dQ | dK | dV]ᵀ x. One product of width 3C instead of three of width C makes
BLAS read x once and saves the two sums of dx.

The core ``dropout(softmax(QKᵀ/√d + mask)) V`` and its backward are one call to the attention
kernels (``tinybert_kernels.dispatch.attention_forward/backward``, backend chosen by ``backend``): the NumPy
reference writes the formula above out; the fused ones (Numba, CUDA) never build the T×T matrix
and keep only the row log-sum-exp. Attention dropout happens inside the kernels: in training, each
forward draws a 64-bit seed from the model's generator ``rng`` and the kernels derive the mask M
from Philox at each element's (batch, head, query, key) coordinates, so the backward regenerates
it and a run resumed from the generator's saved state draws the same masks. A data-parallel rank
sets ``batch_offset`` to the global index of its first row, so its masks are those rows' masks.

Packed (nn/packing.py: eval mode, a batch with padding), x and y hold only the N real tokens,
[1, N, C]: the projections run on them, and [Q | K | V] is unpacked into [B, T] for the kernel
(0 at the padding) and Z packed back; the backward does the transpose.

Padding is masked with −∞ (HF adds ``finfo.min``; for any row with one real key the two give the
same probabilities, exactly). A row whose keys are all padding gets Z = 0, not NaN.

The decoder's self-attention is this layer with ``causal=True``: query i sees keys j ≤ i only
(S_ij = −∞ for j > i), passed to the same kernels. In generation, ``forward(x, keep, past=(K, V))``
prepends the keys and values of the earlier positions (the KV cache) and attends from the T new
queries to all Tp + T keys (the kernels' causal rule j ≤ i + (Tk − Tq) places the new queries at the
end); ``self.present`` holds the Tp + T keys and values for the next step. Its backward treats
``past`` as constants (dK, dV of the past positions are dropped).
"""
from __future__ import annotations

import math

import numpy as np

from tinybert_kernels import dispatch
from tinybert.nn.linear import Linear, few_rows, matmul
from tinybert.nn.module import Module
from tinybert.xp import get_array_module, head_views_of


def check_attention_sizes(hidden_size: int, num_heads: int, attention_dropout: float) -> None:
    """C must split into H heads of d = C/H each; the dropout probability must lie in [0, 1)."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    if not 0.0 <= attention_dropout < 1.0:
        raise ValueError(f"attention dropout probability p={attention_dropout} must be in [0, 1)")


class MultiHeadSelfAttention(Module):
    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0,
                 rng=None, init_rng=None, std: float = 0.02, dtype=np.float32,
                 backend: str = "auto", causal: bool = False):
        check_attention_sizes(hidden_size, num_heads, attention_dropout)
        init_rng = np.random.default_rng(0) if init_rng is None else init_rng
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.query = Linear(hidden_size, hidden_size, init_rng, std, dtype)    # W_Q
        self.key = Linear(hidden_size, hidden_size, init_rng, std, dtype)      # W_K
        self.value = Linear(hidden_size, hidden_size, init_rng, std, dtype)    # W_V
        self.out = Linear(hidden_size, hidden_size, init_rng, std, dtype)      # W_O
        self.dropout_p = attention_dropout          # p of the dropout on P (training only)
        self.rng = np.random.default_rng(0) if rng is None else rng   # draws one seed per forward
        dispatch.resolve_backend(backend)   # validates the name now, not at the first forward
        self.backend = backend                      # "auto" is resolved per call, from the arrays
        self.causal = bool(causal)                  # the decoder's mask: query i sees keys j <= i
        self.cache = None
        self.present = None                         # (K, V) [B, H, Tp + T, d] of the last forward
        self.x = self.w_qkv = None                  # the input and [W_Q | W_K | W_V] of the last forward
        self.packing = None                         # the last forward's Packing (nn/packing.py) or None
        self.dropout_draw = (0.0, None)             # (p, seed) of the last forward's dropout mask
        self.batch_offset = 0                       # data parallel: the global index of row 0

    # [B, T, C] <-> [B, H, T, d]
    def _split(self, x):
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge(self, x):
        b, h, t, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)

    def _projections(self):
        return self.query, self.key, self.value

    def _qkv(self, x, packing=None):
        """Q, K, V: [B, H, T, d] from x: [B, T, C] in one product (views of one [B, T, 3, H, d] array);
        packed x [1, N, C] gives them unpacked to [B, T] (0 at the padding).

        [Q | K | V] = x [W_Q | W_K | W_V]ᵀ + [b_Q | b_K | b_V]. For a few tokens (``Linear``'s
        few-rows case: one short sentence) the three products W_i xᵀ write straight into the row
        blocks of [Q | K | V]ᵀ instead, as ``Linear.forward`` does it there: no copy of the weights
        (~1.8 MB a layer, which costs as much as the product itself there)."""
        xp = get_array_module(x)
        b, t, c = x.shape
        x2 = x.reshape(-1, c)
        b_qkv = xp.concatenate([lin.bias.data for lin in self._projections()])   # [b_Q | b_K | b_V]
        if few_rows(x2.shape[0]):
            qkv_t = xp.empty((3 * c, x2.shape[0]), dtype=x.dtype)                  # [3C, B·T]
            for i, lin in enumerate(self._projections()):
                matmul(lin.weight.data, x2.T, out=qkv_t[i * c:(i + 1) * c])     # W_i xᵀ
            qkv = xp.ascontiguousarray(qkv_t.T)                                  # [B·T, 3C]
            qkv += b_qkv
            self.w_qkv = None
        else:
            self.w_qkv = xp.concatenate([lin.weight.data for lin in self._projections()])   # [3C, C]
            qkv = matmul(x2, self.w_qkv.T, bias=b_qkv)          # [B·T, 3C] = x [W_Q | W_K | W_V]ᵀ + b
        if packing is not None:
            qkv = packing.unpack(qkv)                           # [N, 3C] -> [B, T, 3C]
            b, t = packing.shape
        qkv = qkv.reshape(b, t, 3, self.num_heads, self.head_dim)
        return tuple(qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))

    def _merge_qkv(self, dq, dk, dv):
        """[dQ | dK | dV]: [B, T, 3C] from three [B, H, T, d]. A reshape when they are the three parts
        of one [B, T, 3, H, d] array (the Numba kernel writes them so, in the layout of [Q | K | V]),
        else a concatenation."""
        parts = [head_views_of(g) for g in (dq, dk, dv)]
        if all(p is not None and p[0].shape[2] == 3 and p[1] == i and g.base is dq.base
               for i, (p, g) in enumerate(zip(parts, (dq, dk, dv)))):
            b, _, t, _ = dq.shape
            return parts[0][0].reshape(b, t, -1)
        return get_array_module(dq).concatenate([self._merge(g) for g in (dq, dk, dv)], axis=-1)

    def _qkv_backward(self, dq, dk, dv):
        """dq, dk, dv: [B, H, T, d] -> dx: [B, T, C]; accumulates W_Q, W_K, W_V and their biases."""
        xp = get_array_module(dq)
        x = self.x
        c = x.shape[-1]
        dqkv = self._merge_qkv(dq, dk, dv)                     # [B, T, 3C]
        dqkv = dqkv.reshape(-1, 3 * c) if self.packing is None else self.packing.pack(dqkv)   # [B·T or N, 3C]
        w_qkv = self.w_qkv                                     # [W_Q | W_K | W_V] [3C, C] of the forward
        if w_qkv is None:                                       # (which built it only for a batch)
            w_qkv = xp.concatenate([lin.weight.data for lin in self._projections()])
        if any(lin.weight.requires_grad for lin in self._projections()):
            dw = matmul(dqkv.T, x.reshape(-1, c))              # d[W_Q | W_K | W_V] = [dQ|dK|dV]ᵀ x
            db = dqkv.sum(axis=0)
            for i, lin in enumerate(self._projections()):
                lin.weight.accumulate(dw[i * c:(i + 1) * c])
                lin.bias.accumulate(db[i * c:(i + 1) * c])
        return matmul(dqkv, w_qkv).reshape(x.shape)            # dx = [dQ|dK|dV] [W_Q | W_K | W_V]

    def forward(self, x, keep=None, past=None, packing=None):
        """x: [B, T, C], keep: [B, Tp + T] bool or None, past: (K, V) [B, H, Tp, d] or None -> y: [B, T, C]

        packing (nn/packing.py): x holds the real tokens only, [1, N, C], and so does y."""
        if packing is not None and past is not None:
            raise ValueError("packing and past cannot be combined: the KV cache is kept padded")
        scale = 1.0 / math.sqrt(self.head_dim)
        self.x, self.packing = x, packing
        q, k, v = self._qkv(x, packing)
        if past is not None:                        # the KV cache: earlier positions' keys and values
            xp = get_array_module(x)
            k, v = xp.concatenate([past[0], k], axis=2), xp.concatenate([past[1], v], axis=2)
        self.present = (k, v)
        p = self.dropout_p if self.training else 0.0
        seed = int(self.rng.integers(0, 2 ** 64, dtype=np.uint64)) if p > 0 else None
        backend = dispatch.resolve_backend(self.backend, q)
        z, lse = dispatch.attention_forward(q, k, v, mask=keep, causal=self.causal, scale=scale,
                                                    dropout_p=p, dropout_seed=seed, backend=backend,
                                                    dropout_offset=self.batch_offset)
        self.cache = (backend, q, k, v, scale, keep, z, lse)
        self.dropout_draw = (p, seed)
        z = self._merge(z)                                       # [B, T, C]
        return self.out(z if packing is None else packing.pack(z)[None])

    def backward(self, dout):
        """dout: [B, T, C] -> dx: [B, T, C]; accumulates the four projections' gradients."""
        self._require_cache("cache")
        backend, q, k, v, scale, keep, z, lse = self.cache
        p, seed = self.dropout_draw                 # the backward regenerates the forward's mask
        dz = self.out.backward(dout)
        dz = self._split(dz if self.packing is None else self.packing.unpack(dz[0]))
        dq, dk, dv = dispatch.attention_backward(
            q, k, v, z, lse, dz, mask=keep, causal=self.causal, scale=scale, dropout_p=p, dropout_seed=seed,
            backend=backend, dropout_offset=self.batch_offset)
        t = q.shape[2]                              # with a past, only the last T keys came from x
        return self._qkv_backward(dq, dk[:, :, -t:], dv[:, :, -t:])
