"""Which kernel runs: the attention function pair and its backends, and the fused CPU kernels.

    from tinybert_kernels.dispatch import attention_forward, attention_backward

    attention_forward(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0,
                      dropout_seed=None, backend="auto", dropout_offset=0) -> (out, lse)
    attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None,
                       dropout_p=0.0, dropout_seed=None, backend="auto", dropout_offset=0) -> (dq, dk, dv)

q, out, dout ``[B, H, Tq, D]``; k, v ``[B, H, Tk, D]``; mask ``[B, Tk]`` bool (True = key kept) or
None; lse ``[B, H, Tq]``; float32 or float64, all of one dtype. Backends:

- ``"numpy"``  attention_numpy.py — the reference, the formula unfused (NumPy or CuPy arrays).
- ``"numba"``  attention_numba.py — CPU, FlashAttention-2 tiles with an online softmax.
- ``"cuda"``   attention_cuda_tiled.py — the same algorithm as numba.cuda kernels on CuPy arrays,
  register-tiled for speed (its tiles, layout and PTX in ``attention_cuda_tiles.py``).
- ``"cuda_simple"`` attention_cuda.py — the same kernels one thread per query row: the reading
  twin of ``"cuda"``, slower, on CuPy arrays too.
- ``"auto"``   ``"cuda"`` for CuPy arrays, else ``"numba"`` when Numba (and SciPy, through which
  Numba calls BLAS) imports, else ``"numpy"``.

Attention dropout is inside every backend: ``dropout_p`` > 0 drops each attention weight with that
probability, the mask drawn from Philox4x32-10 at the element's coordinates under ``dropout_seed``
(``philox.py``), so every backend draws the same mask and the backward regenerates it (pass the
forward's seed). ``dropout_offset`` = b₀ (every backend) counts the batch rows from b₀: a
data-parallel rank holding rows b₀.. of the global batch draws exactly what one process draws there.

Beside attention: ``philox.py`` (the generator), the fused CPU kernels ``gelu.py``, ``layernorm.py``,
``dropout.py`` and ``optim.py`` (Adam/AdamW, Σg²), each the twin of a formula kept in its layer file
and reached through ``fused(name)``, and ``threads.py`` (how BLAS and Numba share the cores).
"""
from __future__ import annotations

import importlib

import numpy as np

from tinybert_kernels import attention_numpy, philox
from tinybert_kernels.xp import is_cupy_array

BACKENDS = ("auto", "numpy", "numba", "cuda", "cuda_simple")

_MODULES = {"numpy": "tinybert_kernels.attention_numpy",
            "numba": "tinybert_kernels.attention_numba",
            "cuda": "tinybert_kernels.attention_cuda_tiled",
            "cuda_simple": "tinybert_kernels.attention_cuda"}
_IMPORT_ERRORS: dict = {}
_FUSED = {"gelu": "tinybert_kernels.gelu", "layernorm": "tinybert_kernels.layernorm",
          "optim": "tinybert_kernels.optim", "dropout": "tinybert_kernels.dropout",
          "matmul": "tinybert_kernels.matmul", "embedding": "tinybert_kernels.embedding"}


def _load(name):
    """The module of backend ``name``, or None (with the reason kept) when it cannot import."""
    if name in _IMPORT_ERRORS:
        return None
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:
        _IMPORT_ERRORS[name] = exc
        return None


def fused(name: str):
    """The module of the fused CPU kernel ``name`` ("gelu", "layernorm", "optim", "dropout", "matmul",
    "embedding"), or None when Numba cannot
    import: the layers then compute their NumPy formula, which is also what they do for CuPy
    arrays and for any array the kernel's ``supports(...)`` turns down."""
    module = _FUSED[name]
    key = "fused:" + name
    if key in _IMPORT_ERRORS:
        return None
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _IMPORT_ERRORS[key] = exc
        return None


def available_backends() -> tuple:
    """The concrete backends that import on this machine (``"cuda"`` also needs a GPU to run)."""
    return tuple(name for name in BACKENDS[1:] if _load(name) is not None)


def resolve_backend(backend: str, q=None) -> str:
    """The concrete backend name for ``backend``; ``"auto"`` picks the best one for ``q``.

    Raises ValueError for an unknown name, ImportError (saying what to install) when the named
    backend cannot import.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        if q is not None and is_cupy_array(q):
            return "cuda" if _load("cuda") is not None else "numpy"
        return "numba" if _load("numba") is not None else "numpy"
    if _load(backend) is None:
        hint = {"numba": "pip install numba scipy",
                "cuda": "pip install cupy-cuda12x numba-cuda (and an NVIDIA GPU)"}.get(backend.split("_")[0], "")
        raise ImportError(f"attention backend {backend!r} is unavailable ({_IMPORT_ERRORS[backend]}); "
                          f"{hint}") from _IMPORT_ERRORS[backend]
    return backend


def _check_dropout(dropout_p, dropout_seed):
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float, np.floating, np.integer)):
        raise TypeError(f"dropout_p must be a float in [0, 1), got {type(dropout_p).__name__}")
    philox.dropout_threshold(float(dropout_p))             # ValueError outside [0, 1), NaN included
    if dropout_p > 0:
        if dropout_seed is None:
            raise ValueError(f"dropout_p={dropout_p} needs dropout_seed, a 64-bit integer "
                             "(pass the same seed to attention_backward)")
        philox.split_seed(dropout_seed)


def _check_inputs(backend, q, k, v, mask, out=None, lse=None, dout=None):
    """Clear errors for arrays that do not fit together (names, shapes and dtypes in the message)."""
    named = [("q", q), ("k", k), ("v", v)] + [(n, a) for n, a in (("out", out), ("lse", lse),
                                                                    ("dout", dout)) if a is not None]
    for name, a in named:
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    for name, a in named:
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}.dtype is {a.dtype}; expected float32 or float64")
        if a.dtype != q.dtype:
            raise TypeError(f"{name}.dtype is {a.dtype} but q.dtype is {q.dtype}; all must match")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError(f"{name} must be 4-D [B, H, T, D], got shape {tuple(a.shape)}")
    B, H, Tq, D = q.shape
    if D == 0:
        raise ValueError(f"q.shape {tuple(q.shape)} has head size D = 0: attention needs D >= 1 (scale 1/√D)")
    if k.shape[2] == 0:
        raise ValueError(f"k.shape {tuple(k.shape)} has Tk = 0 keys: every query needs at least one key to "
                         "attend to (mask keys out with mask= instead)")
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"k.shape {tuple(k.shape)} does not fit q.shape {tuple(q.shape)}: "
                         f"expected [B={B}, H={H}, Tk, D={D}]")
    if v.shape != k.shape:
        raise ValueError(f"v.shape {tuple(v.shape)} must equal k.shape {tuple(k.shape)}")
    for name, a in (("out", out), ("dout", dout)):
        if a is not None and a.shape != q.shape:
            raise ValueError(f"{name}.shape {tuple(a.shape)} must equal q.shape {tuple(q.shape)}")
    if lse is not None and lse.shape != (B, H, Tq):
        raise ValueError(f"lse.shape {tuple(lse.shape)} must be [B, H, Tq] = {(B, H, Tq)}")
    if mask is not None:
        if not hasattr(mask, "shape") or mask.shape != (B, k.shape[2]):
            got = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
            raise ValueError(f"mask.shape {got} must be [B, Tk] = {(B, k.shape[2])} "
                             f"(for q.shape {tuple(q.shape)}, k.shape {tuple(k.shape)})")
        if mask.dtype != np.bool_:
            raise TypeError(f"mask.dtype is {mask.dtype}; expected bool (True = key kept)")
    arrays = [a for _, a in named] + ([mask] if mask is not None else [])
    on_gpu = [is_cupy_array(a) for a in arrays]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError("q, k, v (and mask, out, lse, dout) must all be NumPy arrays or all CuPy arrays")
    if backend.startswith("cuda") and not all(on_gpu):
        raise TypeError(f"backend={backend!r} needs CuPy arrays; move them with cupy.asarray(...) "
                        "or choose backend='numba' or 'numpy'")
    if backend == "numba" and any(on_gpu):
        raise TypeError("backend='numba' runs on the CPU and needs NumPy arrays; got CuPy arrays "
                        "(use backend='cuda' or 'auto')")


def check_dropout_offset(dropout_offset) -> int:
    """``dropout_offset`` as an int; ValueError naming it unless it is an integer >= 0 (every backend
    checks it here, the CUDA modules too when called directly)."""
    if (isinstance(dropout_offset, (bool, np.bool_)) or not isinstance(dropout_offset, (int, np.integer))
            or dropout_offset < 0):
        raise ValueError(f"dropout_offset={dropout_offset!r}: expected an integer >= 0 (the global batch "
                         "index of row 0)")
    return int(dropout_offset)


def _offset_argument(backend, dropout_p, dropout_offset) -> dict:
    """{"dropout_offset": b₀} for the backend's call: every backend (numpy, numba, both cuda) takes the
    batch offset, so that a data-parallel rank draws the Philox counters (j // 4, i, h, b₀ + b) of
    its rows of the global batch; {} when it is 0 or dropout is off (the default)."""
    dropout_offset = check_dropout_offset(dropout_offset)
    if not dropout_p or not dropout_offset:
        return {}
    return {"dropout_offset": dropout_offset}


def attention_forward(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, dropout_seed=None,
                      backend="auto", dropout_offset=0):
    """Z = dropout(softmax(Q Kᵀ · scale + mask)) V and the row log-sum-exp, by the chosen backend.

    Args:
        q: [B, H, Tq, D].  k, v: [B, H, Tk, D].  mask: [B, Tk] bool (True = key kept) or None.
        causal: query i sees only keys j <= i + (Tk − Tq).  scale: default 1/√D.
        dropout_p: attention dropout probability in [0, 1).  dropout_seed: an integer in
            [0, 2**64) that fixes the mask (required when dropout_p > 0).
        backend: "auto" | "numpy" | "numba" | "cuda" | "cuda_simple".
        dropout_offset: the global batch index of row 0 (data parallel: a rank's slice of a batch
            draws the mask of those rows of the whole batch); 0 in one process.
    Returns:
        out: [B, H, Tq, D] (0 on a row with no kept key) and lse: [B, H, Tq] (-inf on such a row;
        lse is the log-sum-exp of the scores before dropout).
    """
    name = resolve_backend(backend, q)
    _check_inputs(name, q, k, v, mask)
    _check_dropout(dropout_p, dropout_seed)
    return _load(name).attention_forward(q, k, v, mask=mask, causal=causal, scale=scale,
                                         dropout_p=float(dropout_p), dropout_seed=dropout_seed,
                                         **_offset_argument(name, dropout_p, dropout_offset))


def attention_backward(q, k, v, out, lse, dout, mask=None, causal=False, scale=None, dropout_p=0.0,
                       dropout_seed=None, backend="auto", dropout_offset=0):
    """Gradients of ``attention_forward`` given dout = dL/dout [B, H, Tq, D] (same mask, causal,
    scale, dropout_p, dropout_seed and dropout_offset as the forward).

    Returns:
        dq: [B, H, Tq, D], dk: [B, H, Tk, D], dv: [B, H, Tk, D].
    """
    name = resolve_backend(backend, q)
    _check_inputs(name, q, k, v, mask, out=out, lse=lse, dout=dout)
    _check_dropout(dropout_p, dropout_seed)
    return _load(name).attention_backward(q, k, v, out, lse, dout, mask=mask, causal=causal,
                                          scale=scale, dropout_p=float(dropout_p),
                                          dropout_seed=dropout_seed,
                                          **_offset_argument(name, dropout_p, dropout_offset))


__all__ = ["BACKENDS", "attention_forward", "attention_backward", "available_backends",
           "check_dropout_offset", "resolve_backend", "fused", "attention_numpy", "philox"]
