"""erf, the one special function BERT needs (its GELU is x·Φ(x) = ½x(1 + erf(x/√2))).

NumPy has no ``erf``. We use the C library's through Numba (``math.erf``, exact to the last bit of
float64) when Numba imports, else ``math.erf`` elementwise in Python (correct, slower), and CuPy's
``cupyx.scipy.special.erf`` for CuPy arrays. Shape in = shape out.
"""
from __future__ import annotations

import math

import numpy as np

from tinybert.xp import is_cupy_array

try:  # the fast CPU path
    from numba import vectorize

    @vectorize(["float32(float32)", "float64(float64)"], cache=True)
    def _erf_numba(x):
        return math.erf(x)

except Exception:  # pragma: no cover - exercised only where numba fails to import
    _erf_numba = None

_erf_python = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """Elementwise error function erf(x) = 2/√π ∫₀ˣ exp(−t²) dt.  x: any shape -> same shape and dtype."""
    if is_cupy_array(x):
        from cupyx.scipy.special import erf as erf_cupy

        return erf_cupy(x)
    x = np.asarray(x)
    if _erf_numba is not None and x.dtype in (np.float32, np.float64):
        return _erf_numba(x)
    return _erf_python(x).astype(x.dtype if x.dtype.kind == "f" else np.float64)
