"""The attention weights of every layer and head, for plots and for attention rollout.

    attention_maps(model, input_ids) -> P [L, A, T, T]

Read back from what each attention layer cached in an eval-mode forward pass (its Q, K and mask), so
the weights are the ones the model used, recomputed in float64.
"""
from __future__ import annotations

import numpy as np

from tinybert.nn.softmax import softmax
from tinybert.xp import to_numpy


def attention_maps(model, input_ids, attention_mask=None) -> np.ndarray:
    """Eval-mode attention probabilities of every layer and head for one sequence.

    input_ids: [T] or [1, T] -> P: [L, A, T, T], P[l, h, i, j] = how much token i attends to token j
    in layer l, head h: softmax_j(q_i·k_j/√d) over the unmasked keys, recomputed from the Q and K
    that each attention layer cached during the forward pass.
    """
    ids = np.asarray(input_ids).reshape(1, -1)
    with model.evaluating():
        model.forward(ids, attention_mask=None if attention_mask is None else np.asarray(attention_mask).reshape(1, -1))
    bert = model.bert if hasattr(model, "bert") else model
    maps = []
    for layer in bert.encoder.layers:
        _, q, k, _, scale, keep, _, _ = layer.attention.cache
        q, k = to_numpy(q).astype(np.float64), to_numpy(k).astype(np.float64)     # CuPy on a GPU
        s = (q @ np.swapaxes(k, -1, -2))[0] * scale                                  # [A, T, T]
        maps.append(softmax(s, None if keep is None else to_numpy(keep)[0][None, None, :]))
    return np.stack(maps)
