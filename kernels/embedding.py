"""The embedding's backward on the CPU with Numba: dW[ids[n]] += dy[n], one row after the other.

The readable formula is in ``tinybert/nn/embedding.py``: ``np.add.at(dW, ids, dy)``, which NumPy
runs one element at a time through its generic ufunc loop (11 ms for 2,048 rows of 384 into the
30,522-row table of a fine-tuning step, 7.6 ms into the 2-row token-type table). This loop adds
whole rows, in the same order (n = 0, 1, …), so the sums are the very same, bit for bit; it runs
on one thread, because two rows with one id must be added one after the other, and it takes well
under a millisecond (0.19 ms for those 2,048 rows).

Shapes: grad [V, C] (the table's gradient, added into), ids [N] integers in [-V, V) (negative ids
count from the end, as NumPy indexing does), dy [N, C]; rows that land on row ``skip`` (the padding
row, in [0, V); -1 for none) are left out. float32 or float64, grad and dy of one dtype.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _scatter_add(grad, ids, dy, skip):
    n_cols = grad.shape[1]
    for n in range(ids.shape[0]):
        i = ids[n] if ids[n] >= 0 else ids[n] + grad.shape[0]     # -1: the last row, as NumPy indexes
        if i == skip:
            continue
        row = grad[i]
        src = dy[n]
        for c in range(n_cols):
            row[c] += src[c]


def supports(grad, ids, dy) -> bool:
    """True when the kernel takes these arrays: NumPy, grad and dy C-contiguous of one float dtype and
    width, ids integers [N] matching dy's rows. Anything else takes the layer's ``add.at`` (CuPy too)."""
    return (all(type(a) is np.ndarray for a in (grad, ids, dy)) and grad.dtype in (np.float32, np.float64)
            and dy.dtype == grad.dtype and grad.flags.c_contiguous and dy.flags.c_contiguous
            and grad.ndim == dy.ndim == 2 and grad.shape[1] == dy.shape[1] and ids.ndim == 1
            and ids.shape[0] == dy.shape[0] and ids.dtype.kind in "iu")


def scatter_add(grad, ids, dy, skip=None) -> None:
    """grad[ids[n]] += dy[n] for every n whose id is not ``skip`` (None: every n).

    Raises IndexError for an id outside [-V, V), as NumPy's indexing does, before adding anything."""
    V = grad.shape[0]
    if ids.size and (ids.min() < -V or ids.max() >= V):
        bad = ids[(ids < -V) | (ids >= V)][0]
        raise IndexError(f"index {bad} is out of bounds for the embedding table's {V} rows")
    _scatter_add(grad, ids.astype(np.int64, copy=False), dy, -1 if skip is None else skip)


__all__ = ["scatter_add", "supports"]
