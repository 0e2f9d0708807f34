"""The Transformer decoder: the encoder's layer with a causal mask, and (optionally) a cross-attention
sublayer between the self-attention and the feed-forward network. HF's BertLayer with
``is_decoder=True`` and ``add_cross_attention=True``; post-norm like the encoder:

    a = LayerNorm(x + Dropout(CausalSelfAttention(x)))                 query i sees positions j <= i
    b = LayerNorm(a + Dropout(CrossAttention(a, m)))                   (only with cross-attention)
    y = LayerNorm(b + Dropout(FFN(b)))

x: [B, T, C], keep: [B, T] bool (the decoder's padding), m: [B, S, C] the encoder's output
("memory"), m_keep: [B, S] bool (the encoder's padding) -> y: [B, T, C].

Backward: as the encoder layer's, with one more residual branch; the cross-attention's key and
value path returns dm, the gradient that flows into the encoder. The stack sums dm over its layers
(each layer reads the same m): dm = Σ_layers dm_layer.

With a ``KVCache`` (generation) each layer appends the new positions' keys and values to its cache,
and computes the memory's keys and values only once.
"""
from __future__ import annotations

import numpy as np

from tinybert_kernels import threads
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.cross_attention import CrossAttention
from tinybert.nn.dropout import Dropout
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.module import Module


class DecoderLayer(Module):
    def __init__(self, config, rng, init_rng, dtype=np.float32, backend="auto"):
        c, std = config.hidden_size, config.initializer_range
        heads, p_attn = config.num_attention_heads, config.attention_probs_dropout_prob
        self.attention = MultiHeadSelfAttention(c, heads, p_attn, rng, init_rng, std, dtype, backend, causal=True)
        self.attention_dropout = Dropout(config.hidden_dropout_prob, rng)
        self.attention_norm = LayerNorm(c, config.layer_norm_eps, dtype)
        self.crossattention = self.crossattention_dropout = self.crossattention_norm = None
        if config.add_cross_attention:
            self.crossattention = CrossAttention(c, heads, p_attn, rng, init_rng, std, dtype, backend)
            self.crossattention_dropout = Dropout(config.hidden_dropout_prob, rng)
            self.crossattention_norm = LayerNorm(c, config.layer_norm_eps, dtype)
        self.ffn = FeedForward(c, config.intermediate_size, config.hidden_act, init_rng, std, dtype)
        self.ffn_dropout = Dropout(config.hidden_dropout_prob, rng)
        self.ffn_norm = LayerNorm(c, config.layer_norm_eps, dtype)

    def forward(self, x, memory=None, memory_keep=None, keep=None, cache=None, index=0):
        """x: [B, T, C], memory: [B, S, C], memory_keep: [B, S], keep: [B, Tp + T] -> [B, T, C].
        ``cache``: a KVCache (generation), this layer's entry ``index``."""
        past = None if cache is None else cache.self_kv[index]
        a = self.attention_norm(x, self.attention_dropout(self.attention(x, keep, past)))     # LN(x + …)
        if cache is not None:
            cache.self_kv[index] = self.attention.present
        if self.crossattention is not None:
            if cache is None:
                c = self.crossattention(a, memory, memory_keep)
            else:
                if cache.cross_kv[index] is None:                   # the memory's K, V: once
                    cache.cross_kv[index] = self.crossattention.memory_kv(memory)
                c = self.crossattention(a, memory_keep=memory_keep, memory_kv=cache.cross_kv[index])
            a = self.crossattention_norm(a, self.crossattention_dropout(c))                   # LN(a + …)
        return self.ffn_norm(a, self.ffn_dropout(self.ffn(a)))                                # LN(b + …)

    def backward(self, dout):
        """dout: [B, T, C] -> (dx: [B, T, C], dmemory: [B, S, C] or None without cross-attention)"""
        d = self.ffn_norm.backward(dout)
        dmemory = None
        if self.crossattention is not None:
            d = self.crossattention_norm.backward(d, self.ffn.backward(self.ffn_dropout.backward(d)))  # db
            dx_q, dmemory = self.crossattention.backward(self.crossattention_dropout.backward(d))
            d = self.attention_norm.backward(d, dx_q)                                                  # da
        else:
            d = self.attention_norm.backward(d, self.ffn.backward(self.ffn_dropout.backward(d)))       # da
        return d + self.attention.backward(self.attention_dropout.backward(d)), dmemory


class Decoder(Module):
    """L decoder layers in sequence.  x: [B, T, C] -> [B, T, C]; backward -> (dx, dmemory)."""

    def __init__(self, config, rng, init_rng, dtype=np.float32, backend="auto"):
        self.layers = [DecoderLayer(config, rng, init_rng, dtype, backend)
                       for _ in range(config.num_hidden_layers)]

    def forward(self, x, keep=None, memory=None, memory_keep=None, cache=None):
        with threads.model_blas():
            self.hidden_states = [x]              # output_hidden_states: the input, then each layer's output
            for i, layer in enumerate(self.layers):
                x = layer(x, memory, memory_keep, keep, cache, i)
                self.hidden_states.append(x)
        return x

    def backward(self, dout):
        dmemory = None
        with threads.model_blas():
            for layer in reversed(self.layers):
                dout, dm = layer.backward(dout)
                if dm is not None:
                    dmemory = dm if dmemory is None else dmemory + dm      # every layer reads the memory
        return dout, dmemory
