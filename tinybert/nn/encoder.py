"""The Transformer encoder: a stack of identical layers, BERT's backbone.

One layer is **post-norm** as in BERT and the original Transformer (the norm comes *after* the
residual sum; GPT-2 and most modern models moved it before the sublayer):

    a = LayerNorm(x + Dropout(MultiHeadSelfAttention(x)))
    y = LayerNorm(a + Dropout(FFN(a)))

Backward: the residual splits the gradient in two — one copy goes through the sublayer, one skips it:

    da = dLN₂ + FFN'(Dropout'(dLN₂))      dx = dLN₁ + Attn'(Dropout'(dLN₁))

The residual sums are handed to the norms (``LayerNorm.forward(x, residual)`` and
``backward(dout, dout2)``), whose fused kernel adds them while it normalises: the same formulas,
one pass fewer over [B, T, C] each.

x: [B, T, C], keep: [B, T] bool -> y: [B, T, C].

In eval mode a batch with padding runs packed (nn/packing.py): the layers see only the N real
tokens, [1, N, C], and attention alone unpacks them into [B, T]; the output is 0 at the padding.
"""
from __future__ import annotations

import numpy as np

from tinybert_kernels import threads
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.dropout import Dropout
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.module import Module
from tinybert.nn.packing import Packing


class EncoderLayer(Module):
    def __init__(self, config, rng, init_rng, dtype=np.float32, backend="auto"):
        c, std = config.hidden_size, config.initializer_range
        self.attention = MultiHeadSelfAttention(
            c, config.num_attention_heads, config.attention_probs_dropout_prob,
            rng, init_rng, std, dtype, backend)
        self.attention_dropout = Dropout(config.hidden_dropout_prob, rng)
        self.attention_norm = LayerNorm(c, config.layer_norm_eps, dtype)
        self.ffn = FeedForward(c, config.intermediate_size, config.hidden_act, init_rng, std, dtype)
        self.ffn_dropout = Dropout(config.hidden_dropout_prob, rng)
        self.ffn_norm = LayerNorm(c, config.layer_norm_eps, dtype)

    def forward(self, x, keep=None, packing=None):
        """x: [B, T, C] (packed: [1, N, C]), keep: [B, T] bool, packing: a Packing or None -> like x"""
        a = self.attention_norm(x, self.attention_dropout(self.attention(x, keep, packing=packing)))   # LN(x + …)
        return self.ffn_norm(a, self.ffn_dropout(self.ffn(a)))                        # LN(a + …)

    def backward(self, dout):
        """dout: [B, T, C] -> dx: [B, T, C]"""
        d = self.ffn_norm.backward(dout)
        d = self.attention_norm.backward(d, self.ffn.backward(self.ffn_dropout.backward(d)))   # da = d + FFN'
        return d + self.attention.backward(self.attention_dropout.backward(d))


class Encoder(Module):
    """L encoder layers in sequence.  x: [B, T, C] -> [B, T, C]"""

    skip_padding = True     # eval mode, a batch with padding: run the layers on the real tokens only

    def __init__(self, config, rng, init_rng, dtype=np.float32, backend="auto"):
        self.layers = [EncoderLayer(config, rng, init_rng, dtype, backend)
                       for _ in range(config.num_hidden_layers)]
        self.packing = None                       # the last forward's Packing, or None (padded path)
        self._states, self._packed = [], False    # hidden states; whether the layers' are still packed

    def forward(self, x, keep=None):
        self.packing = Packing.of(keep) if self.skip_padding and not self.training else None
        h = x if self.packing is None else self.packing.pack(x)[None]       # [1, N, C]
        with threads.model_blas():        # products split over Numba's threads (kernels/matmul.py)
            self._states = [x]                    # output_hidden_states: the input, then each layer's output
            for layer in self.layers:
                h = layer(h, keep, self.packing)
                self._states.append(h)
        self._packed = self.packing is not None   # the layers' outputs are unpacked when asked for
        if self._packed:
            h = self._states[-1] = self.packing.unpack(h[0])
        return h

    @property
    def hidden_states(self):
        """The input and every layer's output, [B, T, C] each (0 at the padding where packed)."""
        if self._packed:                          # the input and the last output are unpacked already
            self._states[1:-1] = [self.packing.unpack(h[0]) for h in self._states[1:-1]]
            self._packed = False
        return self._states

    def backward(self, dout):
        if self.packing is not None:
            dout = self.packing.pack(dout)[None]
        with threads.model_blas():
            for layer in reversed(self.layers):
                dout = layer.backward(dout)
        return dout if self.packing is None else self.packing.unpack(dout[0])
