"""The array module (NumPy or CuPy) of an array, without importing CuPy unless it is in use.

Layers call ``xp = get_array_module(x)`` and then only ``xp.<numpy API>``, so the same code runs on
NumPy arrays on the CPU and on CuPy arrays on a GPU. The module is always taken from the input,
never from a global setting.

The one definition, here beside the kernels because they never import ``tinybert`` (which imports
them); ``tinybert.xp`` gives the same functions to the library.
"""
from __future__ import annotations

import numpy as np


def is_cupy_array(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if is_cupy_array(a):
            import cupy

            return cupy
    return np


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    return x.get() if is_cupy_array(x) else np.asarray(x)


def head_views_of(x):
    """(a, g) when x [B, H, T, D] is the view ``a[:, :, g].transpose(0, 2, 1, 3)`` of a C-contiguous
    NumPy array a [B, T, G, H, D], else None.

    That is how the attention layer's Q, K, V lie: three parts (G = 3) of its one [Q | K | V]
    product [B·T, 3·H·D]; a single projection [B, T, H·D] split into heads is G = 1. Kernels read
    such views through ``a`` in memory order, and the layer merges gradients written there without
    a copy. Checked, not assumed: x's strides must be a part's, and its address that of part g.
    """
    base = getattr(x, "base", None)
    if type(x) is not np.ndarray or type(base) is not np.ndarray or x.ndim != 4:
        return None
    B, H, T, D = x.shape
    per_part = B * T * H * D
    if per_part == 0 or base.dtype != x.dtype or base.size % per_part or not base.flags.c_contiguous:
        return None
    G = base.size // per_part
    size = x.itemsize
    s_b, s_h, s_t, s_d = x.strides                                     # a part's: [T·G·H·D, D, G·H·D, 1]·size
    if ((D > 1 and s_d != size) or (H > 1 and s_h != D * size) or (T > 1 and s_t != G * H * D * size)
            or (B > 1 and s_b != T * G * H * D * size)):
        return None
    offset = x.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if offset % (H * D * size) or not 0 <= offset // (H * D * size) < G:
        return None
    return base.reshape(B, T, G, H, D), offset // (H * D * size)
