"""Cross-entropy, the loss of both pretraining (MLM) and fine-tuning (classification).

For logits z of one row and its target class y:

    log p_y = z_y − logsumexp(z),   logsumexp(z) = m + log Σ_j exp(z_j − m),  m = max_j z_j
    L = −(1/N) Σ_rows log p_y                     (mean over the N rows whose target ≠ ignore_index)
    dL/dz = (softmax(z) − onehot(y)) / N           (and 0 on ignored rows)

Subtracting m keeps exp() from overflowing. Only the rows that count are computed: in MLM that is
the ~15% of positions that were masked.
"""
from __future__ import annotations

import numpy as np

from tinybert.errors import InvalidType, InvalidValue
from tinybert.xp import get_array_module


def cross_entropy(logits, labels, ignore_index: int = -100):
    """Mean cross-entropy and its gradient.

    Args:
        logits: [..., K] float (e.g. [B, T, V] for MLM, [B, num_labels] for classification).
        labels: [...] int, the target class of each row in [0, K), or ``ignore_index``.
    Returns:
        (loss, dlogits): a Python float, and dL/dlogits with the shape and dtype of ``logits``.
        With no counted row the loss is 0.0 and the gradient 0.
    """
    xp = get_array_module(logits)
    if not hasattr(logits, "ndim") or logits.ndim < 1 or logits.dtype.kind != "f":
        raise InvalidType(f"logits must be a float array [..., K], got {type(logits).__name__} "
                        f"{getattr(logits, 'dtype', '')}")
    labels = xp.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise InvalidType(f"labels must be integers (class ids), got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise InvalidValue(f"labels has shape {tuple(labels.shape)}; expected {tuple(logits.shape[:-1])} "
                         f"(logits.shape[:-1] for logits of shape {tuple(logits.shape)})")
    k = logits.shape[-1]
    z = logits.reshape(-1, k)
    y = labels.reshape(-1)
    counted = y != ignore_index
    bad = counted & ((y < 0) | (y >= k))
    if bool(bad.any()):
        v = int(y[bad][0])
        raise InvalidValue(f"labels contains {v}, outside [0, {k}) and not ignore_index={ignore_index}")
    rows = xp.nonzero(counted)[0]
    n = int(rows.shape[0])
    dlogits = xp.zeros(z.shape, dtype=z.dtype)
    if n == 0:
        return 0.0, dlogits.reshape(logits.shape)
    zr = z[rows]                                            # [N, K] (a copy of the counted rows)
    yr = y[rows]
    zr -= zr.max(axis=-1, keepdims=True)                    # z − m
    z_y = zr[xp.arange(n), yr]                              # z_y − m
    xp.exp(zr, out=zr)                                      # exp(z − m), in place
    sum_exp = zr.sum(axis=-1)
    loss = float((xp.log(sum_exp) - z_y).mean())
    zr *= (1.0 / n) / sum_exp[:, None]                      # softmax / N
    zr[xp.arange(n), yr] -= 1.0 / n                         # − onehot / N
    dlogits[rows] = zr
    return loss, dlogits.reshape(logits.shape)


def next_token_loss(logits, labels, ignore_index: int = -100):
    """The causal LM loss (HF's BertLMHeadModel): the logits at position t predict the label at t+1.

        L = cross_entropy(logits[:, :-1], labels[:, 1:])     (mean over counted positions)

    Args:
        logits: [B, T, V] float; labels: [B, T] int (usually the input ids; ``ignore_index`` where
            no loss is wanted, e.g. padding).
    Returns:
        (loss, dlogits [B, T, V]); the last position predicts nothing and gets gradient 0.
    """
    xp = get_array_module(logits)
    if not hasattr(logits, "ndim") or logits.ndim != 3:
        raise InvalidValue(f"logits must be [B, T, V], got shape {tuple(getattr(logits, 'shape', ()))}")
    labels = xp.asarray(labels)
    if labels.shape != logits.shape[:2]:
        raise InvalidValue(f"labels has shape {tuple(labels.shape)}; expected {tuple(logits.shape[:2])} "
                           "(logits' [B, T])")
    loss, d = cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index)
    dlogits = xp.zeros_like(logits)
    dlogits[:, :-1] = d
    return loss, dlogits
