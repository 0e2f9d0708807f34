"""BERT's input embeddings: token + position + segment, then LayerNorm and dropout.

    E(x_i) = LayerNorm(W_word[x_i] + W_pos[i] + W_type[s_i]),  then Dropout

This is the article's E(x_i) = Embedding(x_i) + PositionalEncoding(i), with two BERT details: the
position table is *learned* (an Embedding over positions 0 … max_position_embeddings−1, not the
fixed sinusoids of ``positional.py``), and a third table marks sentence A / sentence B (s_i, the
``token_type_ids``).

ids, token_type_ids: [B, T] int -> [B, T, C]. Backward: the LayerNorm's input gradient flows
unchanged into all three tables (a sum's gradient is copied to each term); positions reuse the
same rows for every sequence in the batch, so their gradient sums over B.
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

    def forward(self, input_ids, token_type_ids, past_length: int = 0):
        """input_ids, token_type_ids: [B, T] -> [B, T, C]; positions start at ``past_length`` (the
        number of positions a generation's KV cache holds already)."""
        xp = get_array_module(input_ids)
        positions = xp.arange(past_length, past_length + input_ids.shape[1])[None, :]   # [1, T]
        e = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(e))

    def backward(self, dout):
        """dout: [B, T, C] -> None (ids have no gradient)"""
        de = self.norm.backward(self.dropout.backward(dout))
        self.word_embeddings.backward(de)
        self.position_embeddings.backward(de.sum(axis=0, keepdims=True))
        self.token_type_embeddings.backward(de)
        return None
