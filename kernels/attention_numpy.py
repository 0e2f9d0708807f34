"""Scaled dot-product attention, the reference: the formula, unfused, written to be read.

Forward, for each batch b and head h (the article's notation, with a padding mask added)::

    S   = Q Kᵀ · scale              [Tq, Tk]   scale = 1/√d_k by default
    S   = S + mask_bias              masked keys get -inf (True in `mask` = key kept)
    lse = log Σ_j exp(S_ij)          [Tq]       the row's log-sum-exp, kept for the backward
    P   = softmax(S) = exp(S - lse)  [Tq, Tk]
    Z   = P V                        [Tq, D]

Backward, given dZ = dL/dZ::

    dV = Pᵀ dZ
    dP = dZ Vᵀ
    D  = rowsum(dZ ∘ Z)              (= rowsum(P ∘ dP), the softmax's correction term)
    dS = P ∘ (dP − D)
    dQ = dS K · scale,   dK = dSᵀ Q · scale

The backward recomputes P from q, k and lse instead of keeping it, exactly as the fused kernels do,
so this file and ``attention_numba.py`` can be read side by side.

A query row whose keys are all masked has nothing to attend to: its output is 0 and its gradients
are 0 (lse = -inf there), never NaN. (HF's additive ``finfo.min`` mask would instead average all
keys uniformly in that degenerate case.)

Shapes: q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool or None;
lse ``[B, H, Tq]``.
"""
from __future__ import annotations

import math

import numpy as np


def get_array_module(x):
    """``cupy`` for a CuPy array, else ``numpy`` (the rule of ``tinybert.xp``, repeated here so that
    the kernels never import ``tinybert``, which itself imports the kernels)."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _scores(q, k, mask, causal, scale):
    """S = Q Kᵀ · scale with masked entries at -inf. [B,H,Tq,D],[B,H,Tk,D] -> [B,H,Tq,Tk]"""
    xp = get_array_module(q)
    s = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale
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
    """P = exp(S - lse), with fully masked rows (lse = -inf) giving P = 0."""
    xp = get_array_module(s)
    safe = xp.where(xp.isfinite(lse), lse, 0)[..., None]
    return xp.exp(s - safe)  # exp(-inf) = 0 for masked keys; all-masked rows are all -inf -> 0


def attention_forward(q, k, v, mask=None, causal=False, scale=None):
    """Z = softmax(Q Kᵀ · scale + mask) V.

    Args:
        q: [B, H, Tq, D] queries.  k, v: [B, H, Tk, D] keys and values.
        mask: [B, Tk] bool, True where the key is kept (a real token), or None.
        causal: when True, query i sees only keys j <= i (+ Tk - Tq).
        scale: multiplies QKᵀ; default 1/√D.
    Returns:
        out: [B, H, Tq, D] and lse: [B, H, Tq] (log-sum-exp of each scaled, masked score row).
    """
    xp = get_array_module(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, mask, causal, scale)
    m = s.max(axis=-1)
    row_kept = xp.isfinite(m)                                # False where every key is masked
    m_safe = xp.where(row_kept, m, 0)
    row_sum = xp.exp(s - m_safe[..., None]).sum(axis=-1)     # >= 1 on kept rows, 0 on empty rows
    lse = xp.where(row_kept, xp.log(xp.where(row_kept, row_sum, 1)) + m_safe, -xp.inf)
    p = _probs(s, lse)
    out = xp.matmul(p, v)
    return out, lse.astype(q.dtype, copy=False)


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None):
    """Gradients of ``attention_forward``. Returns (dq [B,H,Tq,D], dk [B,H,Tk,D], dv [B,H,Tk,D])."""
    xp = get_array_module(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    p = _probs(_scores(q, k, mask, causal, scale), lse)   # recompute P
    dv = xp.matmul(xp.swapaxes(p, -1, -2), dout)          # dV = Pᵀ dZ
    dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))          # dP = dZ Vᵀ
    d = (dout * out).sum(axis=-1, keepdims=True)          # D = rowsum(dZ ∘ Z)
    ds = p * (dp - d)                                     # dS = P ∘ (dP − D)
    dq = xp.matmul(ds, k) * scale                         # dQ = dS K · scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q) * scale    # dK = dSᵀ Q · scale
    return dq, dk, dv


__all__ = ["attention_forward", "attention_backward"]
