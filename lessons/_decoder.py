"""The article's decoder, built from the encoder's own layers (used by lesson 10).

"The decoder layer is like the encoder layer, with an extra decoder self-attention and an
encoder-decoder attention": here

    CausalSelfAttention   Z = softmax(QKᵀ/√d + causal mask) V    query i sees keys j ≤ i
    CrossAttention        Q from the decoder [B, Tq, C], K and V from the encoder's output
                          (the "memory") [B, Tk, C];  Tq ≠ Tk is fine
    DecoderLayer          a = LN(x + CausalSelfAttn(x));  [b = LN(a + CrossAttn(a, memory))];
                          y = LN(b + FFN(b))                        (post-norm, as our encoder)
    TinyCausalLM          token + position embeddings -> DecoderLayer × L -> Linear to the vocabulary

Every class has forward/backward like the rest of tinybert; the attention core and its gradient
are ``tinybert_kernels.attention_forward/backward`` with ``causal=True`` (self) or a [B, Tk] mask
(cross). No dropout: lesson 10 trains tiny models for a few hundred steps.
"""
from __future__ import annotations

import math

import numpy as np

import tinybert_kernels
from tinybert.nn.embedding import Embedding
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module


class _Attention(Module):
    """Shared by both attentions: projections, head split/merge, the kernel call."""

    def __init__(self, hidden, heads, rng, std=0.02, dtype=np.float32, backend="numpy"):
        self.h, self.d = heads, hidden // heads
        self.query = Linear(hidden, hidden, rng, std, dtype)
        self.key = Linear(hidden, hidden, rng, std, dtype)
        self.value = Linear(hidden, hidden, rng, std, dtype)
        self.out = Linear(hidden, hidden, rng, std, dtype)
        self.backend = backend
        self.cache = None

    def _split(self, x):                   # [B, T, C] -> [B, H, T, d]
        b, t, _ = x.shape
        return x.reshape(b, t, self.h, self.d).transpose(0, 2, 1, 3)

    def _merge(self, x):                   # [B, H, T, d] -> [B, T, C]
        b, h, t, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)

    def _attend(self, x_q, x_kv, mask, causal):
        q, k, v = self._split(self.query(x_q)), self._split(self.key(x_kv)), self._split(self.value(x_kv))
        z, lse = tinybert_kernels.attention_forward(q, k, v, mask=mask, causal=causal,
                                                    scale=1.0 / math.sqrt(self.d), backend=self.backend)
        self.cache = (q, k, v, z, lse, mask, causal)
        return self.out(self._merge(z))

    def _attend_backward(self, dout):
        q, k, v, z, lse, mask, causal = self.cache
        dz = self._split(self.out.backward(dout))
        dq, dk, dv = tinybert_kernels.attention_backward(q, k, v, z, lse, dz, mask=mask, causal=causal,
                                                         scale=1.0 / math.sqrt(self.d), backend=self.backend)
        dx_q = self.query.backward(self._merge(dq))
        dx_kv = self.key.backward(self._merge(dk)) + self.value.backward(self._merge(dv))
        return dx_q, dx_kv

    def weights(self):
        """The attention probabilities of the last forward: [B, H, Tq, Tk]."""
        q, k, _, _, lse, _, _ = self.cache
        s = q @ np.swapaxes(k, -1, -2) / math.sqrt(self.d)
        p = np.exp(s - np.where(np.isfinite(lse), lse, 0)[..., None])
        tq, tk = s.shape[-2:]
        if self.cache[6]:                                   # causal: zero the future exactly
            p = p * (np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq))
        if self.cache[5] is not None:                       # masked (padding) keys: zero exactly
            p = p * np.asarray(self.cache[5])[:, None, None, :]
        return p


class CausalSelfAttention(_Attention):
    """x: [B, T, C] -> [B, T, C]; position i attends to positions 0 … i only."""

    def forward(self, x):
        return self._attend(x, x, None, True)

    def backward(self, dout):
        dx_q, dx_kv = self._attend_backward(dout)
        return dx_q + dx_kv


class CrossAttention(_Attention):
    """x: [B, Tq, C], memory: [B, Tk, C], memory_mask: [B, Tk] bool or None -> [B, Tq, C].

    backward returns (dx [B, Tq, C], dmemory [B, Tk, C])."""

    def forward(self, x, memory, memory_mask=None):
        return self._attend(x, memory, memory_mask, False)

    def backward(self, dout):
        return self._attend_backward(dout)


class DecoderLayer(Module):
    """Post-norm decoder layer; ``cross=False`` gives a decoder-only (GPT-style) layer."""

    def __init__(self, hidden, heads, ffn, rng, cross=True, std=0.02, dtype=np.float32, backend="numpy"):
        self.self_attn = CausalSelfAttention(hidden, heads, rng, std, dtype, backend)
        self.norm1 = LayerNorm(hidden, 1e-12, dtype)
        self.cross_attn = CrossAttention(hidden, heads, rng, std, dtype, backend) if cross else None
        self.norm2 = LayerNorm(hidden, 1e-12, dtype) if cross else None
        self.ffn = FeedForward(hidden, ffn, "gelu", rng, std, dtype)
        self.norm3 = LayerNorm(hidden, 1e-12, dtype)

    def forward(self, x, memory=None, memory_mask=None):
        a = self.norm1(x + self.self_attn(x))
        if self.cross_attn is not None:
            a = self.norm2(a + self.cross_attn(a, memory, memory_mask))
        return self.norm3(a + self.ffn(a))

    def backward(self, dout):
        """-> dx, or (dx, dmemory) for a layer with cross-attention."""
        d = self.norm3.backward(dout)
        d = d + self.ffn.backward(d)
        dmem = None
        if self.cross_attn is not None:
            d = self.norm2.backward(d)
            dx_q, dmem = self.cross_attn.backward(d)
            d = d + dx_q
        d = self.norm1.backward(d)
        dx = d + self.self_attn.backward(d)
        return dx if dmem is None else (dx, dmem)


class TinyCausalLM(Module):
    """ids [B, T] -> logits [B, T, V]; logits[:, t] predicts token t+1 from tokens 0 … t."""

    def __init__(self, vocab, hidden=64, heads=4, layers=2, max_len=64, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.tok = Embedding(vocab, hidden, rng, 0.02, dtype)
        self.pos = Embedding(max_len, hidden, rng, 0.02, dtype)
        self.norm = LayerNorm(hidden, 1e-12, dtype)
        self.layers = [DecoderLayer(hidden, heads, 2 * hidden, rng, cross=False, dtype=dtype) for _ in range(layers)]
        self.lm_head = Linear(hidden, vocab, rng, 0.02, dtype)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.norm(self.tok(ids) + self.pos(np.arange(t)[None, :]))
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x)

    def backward(self, dlogits):
        d = self.lm_head.backward(dlogits)
        for layer in reversed(self.layers):
            d = layer.backward(d)
        d = self.norm.backward(d)
        self.tok.backward(d)
        self.pos.backward(d.sum(axis=0, keepdims=True))
