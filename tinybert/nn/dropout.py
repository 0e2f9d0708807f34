"""Dropout, inverted: zero each entry with probability p and scale the rest by 1/(1−p).

    train:  y = x ∘ M / (1 − p),   M_ij ~ Bernoulli(1 − p)        eval:  y = x
    backward: dx = dy ∘ M / (1 − p)

Scaling at training time keeps E[y] = x, so nothing changes at evaluation. The random generator is
owned by the model and shared by all its dropout layers, so a run is reproducible from its seed
(and resumable: the generator's state is saved with a checkpoint). x: [...] -> [...].

The mask is counter-based: each forward draws one 64-bit seed from the generator, and M is Philox
at each element's index under that seed (``tinybert_kernels.philox.dropout_keep``). So the layer
keeps the seed, not the mask, and the backward regenerates M; on NumPy arrays the fused kernel
(``kernels/dropout.py``) does forward and backward in one pass each, without ever building M.

Data parallel (``tinybert/training/distributed.py``): a rank that holds rows b₀.. of the global
batch sets ``batch_offset = b₀``, and its mask is the global batch's mask at those rows (the leading
axis of x is the batch), so N ranks drop what one process drops.
"""
from __future__ import annotations

import numpy as np

from tinybert_kernels import dispatch
from tinybert.nn.module import Module
from tinybert.xp import get_array_module
from tinybert_kernels import philox

_KERNEL = dispatch.fused("dropout")     # None without Numba


def dropout_reference(x, p: float, seed: int, offset: int = 0):
    """x ∘ M / (1 − p) with the Philox mask of ``seed`` (the formula), x's element 0 being element
    ``offset`` of the mask.  x: [...] -> [...]"""
    xp = get_array_module(x)
    keep = xp.asarray(philox.dropout_keep(seed, p, x.shape, offset))
    return x * xp.where(keep, x.dtype.type(1.0 / (1.0 - p)), x.dtype.type(0))   # NaN · 0 stays NaN


class Dropout(Module):
    def __init__(self, p: float, rng: np.random.Generator | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p={p} must be in [0, 1)")
        self.p = p
        self.rng = np.random.default_rng(0) if rng is None else rng
        self.seed = None                      # the seed of the last forward's mask
        self.active = False
        self.batch_offset = 0                 # data parallel: the global index of x's row 0

    def _apply(self, x):
        # row b of x is row batch_offset + b of the global batch: its mask elements start there
        offset = self.batch_offset * (x.size // x.shape[0]) if x.ndim and x.shape[0] else 0
        if _KERNEL is not None and _KERNEL.supports(x):
            return _KERNEL.apply_mask(x, self.p, self.seed, offset)
        return dropout_reference(x, self.p, self.seed, offset)

    def forward(self, x):
        """x: [...] -> [...]"""
        self.active = self.training and self.p > 0
        if not self.active:
            return x
        self.seed = int(self.rng.integers(0, 2 ** 64, dtype=np.uint64))
        return self._apply(x)

    def backward(self, dout):
        """dout: [...] -> dx: [...]"""
        if not self.active:
            return dout
        return self._apply(dout)
