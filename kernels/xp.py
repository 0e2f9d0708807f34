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
