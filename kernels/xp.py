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
    a copy. Checked, not assumed: the view rebuilt from (a, g) must have x's address and strides.
    """
    base = getattr(x, "base", None)
    if not isinstance(x, np.ndarray) or x.ndim != 4 or not isinstance(base, np.ndarray):
        return None
    B, H, T, D = x.shape
    per_part = B * T * H * D
    if per_part == 0 or base.dtype != x.dtype or not base.flags.c_contiguous or base.size % per_part:
        return None
    a = base.reshape(B, T, base.size // per_part, H, D)
    offset = x.__array_interface__["data"][0] - a.__array_interface__["data"][0]
    part_bytes = H * D * x.itemsize
    if offset % part_bytes or not 0 <= offset // part_bytes < a.shape[2]:
        return None
    g = offset // part_bytes
    view = a[:, :, g].transpose(0, 2, 1, 3)
    if view.strides != x.strides or view.__array_interface__["data"][0] != x.__array_interface__["data"][0]:
        return None
    return a, g
