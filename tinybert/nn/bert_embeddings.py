"""BERT's input embeddings: token + position + segment, then LayerNorm and dropout.

    E(x_i) = LayerNorm(W_word[x_i] + W_pos[i] + W_type[s_i]),  then Dropout

This is the article's E(x_i) = Embedding(x_i) + PositionalEncoding(i), with two BERT details: the
position table is *learned* (an Embedding over positions 0 … max_position_embeddings−1, not the
fixed sinusoids of ``positional.py``), and a third table marks sentence A / sentence B (s_i, the
``token_type_ids``).

ids, token_type_ids: [B, T] int -> [B, T, C]. Backward: the LayerNorm's input gradient flows
unchanged into all three tables (a sum's gradient is copied to each term); positions reuse the
same rows for every sequence in the batch, so their gradient sums over B.

``inputs_embeds`` [B, T, C] (as in HF transformers) stands in for the word vectors W_word[x_i]:
explanations (``tinybert.pipelines.explain``) feed points between a text's word vectors and a
baseline's. The backward returns dL/d(word vectors) [B, T, C], which is the same gradient the word
table receives (the sum's gradient again), whichever way the vectors came in.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.dropout import Dropout
from tinybert.nn.embedding import Embedding
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.module import Module
from tinybert.xp import get_array_module


class BertEmbeddings(Module):
    def __init__(self, config, rng, init_rng, dtype=np.float32):
        c, std = config.hidden_size, config.initializer_range
        self.word_embeddings = Embedding(config.vocab_size, c, init_rng, std, dtype,
                                         padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, c, init_rng, std, dtype)
        self.token_type_embeddings = Embedding(config.type_vocab_size, c, init_rng, std, dtype)
        self.norm = LayerNorm(c, config.layer_norm_eps, dtype)
        self.dropout = Dropout(config.hidden_dropout_prob, rng)
        self.from_ids = True                    # the last forward looked the word vectors up

    def forward(self, input_ids, token_type_ids, inputs_embeds=None, past_length: int = 0):
        """input_ids, token_type_ids: [B, T] (or inputs_embeds [B, T, C] instead of input_ids) -> [B, T, C];
        positions start at ``past_length`` (the number of positions a generation's KV cache holds already)."""
        xp = get_array_module(token_type_ids)
        t = token_type_ids.shape[1]
        positions = xp.arange(past_length, past_length + t)[None, :]            # [1, T]
        self.from_ids = inputs_embeds is None
        words = self.word_embeddings(input_ids) if self.from_ids else inputs_embeds
        e = words + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(e))

    def backward(self, dout):
        """dout: [B, T, C] -> dL/d(word vectors) [B, T, C] (ids have no gradient; the vectors do)"""
        de = self.norm.backward(self.dropout.backward(dout))
        if self.from_ids:
            self.word_embeddings.backward(de)
        self.position_embeddings.backward(de.sum(axis=0, keepdims=True))
        self.token_type_embeddings.backward(de)
        return de
