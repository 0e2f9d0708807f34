"""Attention kernels: one function pair, several implementations (installed as ``tinybert_kernels``).

    attention_forward(q, k, v, mask=None, causal=False, scale=None, backend="auto") -> (out, lse)
    attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None,
                       backend="auto") -> (dq, dk, dv)

q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool (True = key kept);
lse ``[B, H, Tq]``. Backends:

- ``"numpy"``  attention_numpy.py — the reference, the formula unfused.
"""
from __future__ import annotations

from tinybert_kernels import attention_numpy

BACKENDS = ("auto", "numpy")


def resolve_backend(backend: str, q=None) -> str:
    """The concrete backend name for ``backend`` (``"auto"`` picks the best available)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    return "numpy" if backend == "auto" else backend


def _module(backend, q):
    return {"numpy": attention_numpy}[resolve_backend(backend, q)]


def attention_forward(q, k, v, mask=None, causal=False, scale=None, backend="auto"):
    return _module(backend, q).attention_forward(q, k, v, mask=mask, causal=causal, scale=scale)


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, backend="auto"):
    return _module(backend, q).attention_backward(
        q, k, v, out, lse, dout, mask=mask, causal=causal, scale=scale
    )
