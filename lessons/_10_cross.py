"""What lesson 10's cross-attention step and its exercise 3 share: a source sentence with padding, read
by a one-layer encoder, and the cross-attention layer that reads it."""
import numpy as np

import tinybert
from tinybert.nn.cross_attention import CrossAttention


def source_and_cross(C: int, H: int):
    """(src [1, 9] ids: 6 real source tokens + 3 padding, src_mask [1, 9] of 0/1, memory [1, Tk=9, C]
    the encoder's output, cross the CrossAttention layer)."""
    cfg = tinybert.BertConfig(vocab_size=40, hidden_size=C, num_hidden_layers=1, num_attention_heads=H,
                              intermediate_size=2 * C, max_position_embeddings=16,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5)
    encoder = tinybert.BertModel(cfg, seed=0, dtype=np.float64, attention_backend="numpy").eval()
    src = np.array([[2, 11, 17, 23, 5, 3, 0, 0, 0]])                   # 6 real tokens + 3 padding
    src_mask = (src != 0).astype(int)
    memory, _ = encoder.forward(src, attention_mask=src_mask)         # [1, Tk=9, C]
    cross = CrossAttention(C, H, init_rng=np.random.default_rng(2), std=0.5, dtype=np.float64,
                           backend="numpy").eval()
    return src, src_mask, memory, cross
