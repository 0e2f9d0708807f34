"""The array module (NumPy or CuPy) of an array, without importing CuPy unless it is in use.

Layers call ``xp = get_array_module(x)`` and then only ``xp.<numpy API>``, so the same code runs on
NumPy arrays on the CPU and on CuPy arrays on a GPU. The functions are defined once, in
``kernels/xp.py`` (``tinybert_kernels.xp``), which the kernels share.
"""
from tinybert_kernels.xp import get_array_module, head_views_of, is_cupy_array, to_numpy

__all__ = ["get_array_module", "head_views_of", "is_cupy_array", "to_numpy"]
