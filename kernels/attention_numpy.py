"""Scaled dot-product attention, the reference: the formula, unfused, written to be read.

Forward, for each batch b and head h (the article's notation, with a padding mask and dropout added)::

    S   = Q Kᵀ · scale              [Tq, Tk]   scale = 1/√d_k by default
    S   = S + mask_bias              masked keys get -inf (True in `mask` = key kept)
    lse = log Σ_j exp(S_ij)          [Tq]       the row's log-sum-exp, kept for the backward
    P   = softmax(S) = exp(S - lse)  [Tq, Tk]
    P̃   = P ∘ M / (1 − p)            dropout: M_ij ∈ {0, 1} from Philox (kernels/philox.py)
    Z   = P̃ V                        [Tq, D]

Backward, given dZ = dL/dZ::

    dV = P̃ᵀ dZ
    dP = (dZ Vᵀ) ∘ M / (1 − p)
    D  = rowsum(dZ ∘ Z)              (= rowsum(P ∘ dP), the softmax's correction term)
    dS = P ∘ (dP − D)
    dQ = dS K · scale,   dK = dSᵀ Q · scale

The backward recomputes P from q, k and lse, and M from the same counters, instead of keeping
either, exactly as the fused kernels do, so this file and ``attention_numba.py`` can be read side by
side. Without dropout (p = 0) M is all ones and P̃ = P. The dropout mask M is a pure function of
(seed, b, h, i, j) — ``philox.attention_keep`` — so every backend draws the same one.

A query row whose keys are all masked has nothing to attend to: its output is 0 and its gradients
are 0 (lse = -inf there), never NaN. (HF's additive ``finfo.min`` mask would instead average all
keys uniformly in that degenerate case.) A masked key does not enter the function: its P and dS are
exactly 0 and its dK and dV are 0.

NaN and infinity: a NaN (or a +inf score, or scale = NaN) in a query row's kept scores makes that
row's lse, out and P NaN, and it spreads through the backward as the formulas say (every kept key
that row sees gets a NaN gradient); it never becomes a number. Whether a NaN sitting only in a
masked position (a padded key, a key after the causal limit) reaches other rows through 0·NaN in a
product is left unspecified: the fused kernels skip whole blocks of such keys.

Shapes: q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool or None;
lse ``[B, H, Tq]``.
"""
from __future__ import annotations

import math

import numpy as np

from tinybert_kernels import philox
from tinybert_kernels.xp import get_array_module


def _scores(q, k, mask, causal, scale):
    """S = (Q · scale) Kᵀ with masked entries at -inf. [B,H,Tq,D],[B,H,Tk,D] -> [B,H,Tq,Tk]

    The scale multiplies Q before the product, as in every kernel, so that scores overflow to ±inf
    at the same places in all of them."""
    xp = get_array_module(q)
    s = xp.matmul(q * q.dtype.type(scale), xp.swapaxes(k, -1, -2))
    keep = None
    if mask is not None:
        keep = mask[:, None, None, :]  # [B,1,1,Tk]
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        # query i (aligned to the end of the keys) may see keys j <= i + (tk - tq)
        c = xp.arange(tk)[None, :] <= (xp.arange(tq)[:, None] + (tk - tq))
        keep = c if keep is None else (keep & c)
    if keep is not None:
        s = xp.where(keep, s, -xp.inf)
    return s


def _probs(s, lse):
    """P = exp(S - lse); exactly 0 where S is -inf (masked), also on rows with no kept key
    (lse = -inf) and on rows whose lse is NaN (where every other entry is NaN)."""
    xp = get_array_module(s)
    safe = xp.where(lse == -xp.inf, 0, lse)[..., None]
    return xp.where(s == -xp.inf, 0, xp.exp(s - safe))


def attention_probs(q, k, lse, mask=None, causal=False, scale=None):
    """P = exp(S − lse) [B, H, Tq, Tk]: the attention probabilities a forward used, recomputed from its
    q, k and the lse it returned, exactly as every backward recomputes them (before dropout).
    What ``model(..., output_attentions=True)`` reports; P V equals the forward's out when p = 0."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _probs(_scores(q, k, mask, causal, scale), lse)


def _dropout_scale(shape, dtype, dropout_p, dropout_seed, xp, batch_offset=0):
    """M / (1 − p) as an array of 0 and 1/(1 − p), [B, H, Tq, Tk], or None when p = 0."""
    if not dropout_p:
        return None
    keep = xp.asarray(philox.attention_keep(dropout_seed, dropout_p, *shape, batch_offset=batch_offset))
    return xp.where(keep, dtype.type(1.0 / (1.0 - dropout_p)), dtype.type(0))


def attention_forward(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, dropout_seed=None,
                      dropout_offset=0):
    """Z = dropout(softmax(Q Kᵀ · scale + mask)) V.

    Args:
        q: [B, H, Tq, D] queries.  k, v: [B, H, Tk, D] keys and values.
        mask: [B, Tk] bool, True where the key is kept (a real token), or None.
        causal: when True, query i sees only keys j <= i (+ Tk - Tq).
        scale: multiplies QKᵀ; default 1/√D.
        dropout_p: probability of dropping each attention weight (0 = no dropout).
        dropout_seed: 64-bit integer that fixes the dropout mask (needed when dropout_p > 0).
        dropout_offset: the global batch index of row 0 (data parallel; ``philox.attention_keep``).
    Returns:
        out: [B, H, Tq, D] and lse: [B, H, Tq] (log-sum-exp of each scaled, masked score row).
    """
    xp = get_array_module(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, mask, causal, scale)
    m = s.max(axis=-1)                                       # NaN if the row holds a NaN
    row_kept = m != -xp.inf                                  # False where every key is masked
    m_safe = xp.where(row_kept, m, 0)
    row_sum = xp.exp(s - m_safe[..., None]).sum(axis=-1)     # >= 1 on kept rows, 0 on empty rows
    lse = xp.where(row_kept, xp.log(xp.where(row_kept, row_sum, 1)) + m_safe, -xp.inf)
    p = _probs(s, lse)
    drop = _dropout_scale(p.shape, q.dtype, dropout_p, dropout_seed, xp, dropout_offset)
    if drop is not None:
        p = p * drop                                         # P̃ = P ∘ M/(1−p)  (NaN · 0 stays NaN)
    out = xp.matmul(p, v)
    return out, lse.astype(q.dtype, copy=False)


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                       dropout_seed=None, dropout_offset=0):
    """Gradients of ``attention_forward``. Returns (dq [B,H,Tq,D], dk [B,H,Tk,D], dv [B,H,Tk,D])."""
    xp = get_array_module(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, mask, causal, scale)
    p = _probs(s, lse)                                    # recompute P
    drop = _dropout_scale(p.shape, q.dtype, dropout_p, dropout_seed, xp, dropout_offset)   # regenerate M/(1−p)
    p_dropped = p if drop is None else p * drop           # P̃
    dv = xp.matmul(xp.swapaxes(p_dropped, -1, -2), dout)  # dV = P̃ᵀ dZ
    dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))          # dP̃ = dZ Vᵀ
    if drop is not None:
        dp = dp * drop                                    # dP = dP̃ ∘ M/(1−p)
    d = (dout * out).sum(axis=-1, keepdims=True)          # D = rowsum(dZ ∘ Z)
    ds = xp.where(s == -xp.inf, 0, p * (dp - d))          # dS = P ∘ (dP − D), exactly 0 where masked
    dq = xp.matmul(ds, k) * scale                         # dQ = dS K · scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q) * scale    # dK = dSᵀ Q · scale
    if mask is not None:                                  # a masked key is not an input of Z
        keep = mask[:, None, :, None]
        dk = xp.where(keep, dk, 0)
        dv = xp.where(keep, dv, 0)
    return dq, dk, dv


__all__ = ["attention_forward", "attention_backward"]
