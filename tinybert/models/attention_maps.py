"""The attention weights of every layer and head, for ``output_attentions``, plots and attention rollout.

    layer_attention_probs(attention_layer) -> P [B, A, Tq, Tk]    what that layer's last forward used
    model_attentions(body)                 -> (P of layer 1, ..., P of layer L)
    attention_maps(model, input_ids)       -> P [L, A, T, T]      one sequence, eval mode, float64

Nothing here computes attention a second way: each layer's forward cached the q, k the kernel read
and the log-sum-exp ``lse`` the kernel returned, and P = exp(q·kᵀ·scale − lse) (masked keys 0) is the
recomputation every attention backward already does (``tinybert_kernels.attention_numpy.attention_probs``).
So P·V is the layer's attention output (tests/test_transformers_idioms.py proves it). Attention
dropout, when the model trains, is applied after P and is not in these maps.
"""
from __future__ import annotations

import numpy as np

from tinybert_kernels.attention_numpy import attention_probs
from tinybert.xp import to_numpy


def layer_attention_probs(attention, dtype=None):
    """P [B, A, Tq, Tk] of the last forward of a MultiHeadSelfAttention (or CrossAttention), from its
    cache; computed in ``dtype`` (default: the cached arrays'), as NumPy."""
    if attention.cache is None:
        raise RuntimeError(f"{type(attention).__name__} has not run forward yet: no attention to report")
    _, q, k, _, scale, keep, _, lse = attention.cache
    q, k, lse = to_numpy(q), to_numpy(k), to_numpy(lse)                 # CuPy on a GPU
    keep = None if keep is None else to_numpy(keep)
    if dtype is not None:
        q, k, lse = q.astype(dtype), k.astype(dtype), lse.astype(dtype)
    return attention_probs(q, k, lse, keep, getattr(attention, "causal", False), scale)


def model_attentions(body) -> tuple:
    """Every layer's self-attention P [B, A, T, T] from a BertModel's last forward, layer 1 first."""
    return tuple(layer_attention_probs(layer.attention) for layer in body.encoder.layers)


def attention_maps(model, input_ids, attention_mask=None) -> np.ndarray:
    """Eval-mode attention probabilities of every layer and head for one sequence.

    input_ids: [T] or [1, T] -> P: [L, A, T, T], P[l, h, i, j] = how much token i attends to token j
    in layer l, head h: softmax_j(q_i·k_j/√d) over the unmasked keys, from the q, k and lse of the
    forward pass (in float64).
    """
    ids = np.asarray(input_ids).reshape(1, -1)
    with model.evaluating():
        model.forward(ids, attention_mask=None if attention_mask is None else np.asarray(attention_mask).reshape(1, -1))
    bert = model.bert if hasattr(model, "bert") else model
    return np.stack([layer_attention_probs(layer.attention, np.float64)[0] for layer in bert.encoder.layers])
