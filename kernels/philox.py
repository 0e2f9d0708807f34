"""Philox4x32-10, the counter-based random generator of attention dropout (and of cuRAND and
FlashAttention), in three forms that give the same bits: a vectorised NumPy reference, a Numba CPU
function and a numba.cuda device function, all compiled from one Python function.

A counter-based generator is a keyed bijection: 4 words of counter in, 4 random words out,

    (r0, r1, r2, r3) = philox4x32_10(counter=(c0, c1, c2, c3), key=(k0, k1))

with no state carried from one call to the next. So any element of a random tensor can be computed
on its own from its coordinates, in any order, by any thread, and computed *again* later: the
backward of a fused attention kernel regenerates the dropout mask instead of storing it.

The function (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11;
the Random123 library): ten rounds of

    (hi0, lo0) = M0 · c0,   (hi1, lo1) = M1 · c2              32×32 → 64-bit products
    c = (hi1 ⊕ c1 ⊕ k0,  lo1,  hi0 ⊕ c3 ⊕ k1,  lo0)
    k = (k0 + W0, k1 + W1) mod 2³²                            (the key is bumped between rounds)

M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9 (the golden ratio), W1 = 0xBB67AE85 (√3 − 1).

Why the 4×32 variant rather than NumPy's Philox4x64-10: its products are 32×32 bits, which fit in
one 64-bit multiply on every target (Numba CPU, numba.cuda, NumPy's uint64 arrays); the 4×64 one
needs the high half of a 64×64 product, several instructions on a GPU and not expressible with
NumPy integer arrays. It is the variant cuRAND (curand_Philox4x32_10) and FlashAttention use, it
passes BigCrush, and Random123 publishes known-answer vectors for it (tests/test_philox.py checks
all three, word for word).

Attention dropout (``attention_keep``): for attention layer call with a 64-bit ``seed`` (drawn from
the model's generator, one per layer per forward), the element (b, h, i, j) of the [B, H, Tq, Tk]
probability matrix is kept when

    word = philox4x32_10((j // 4, i, h, b), (seed mod 2³², seed // 2³²))[j mod 4]
    keep = word >= threshold,        threshold = round(p · 2³²)

so one call serves four neighbouring keys of a query row, the drop probability is p to within 2⁻³³,
and the mask never depends on tiling, thread count or backend. Kept entries are scaled by 1/(1 − p).
"""
from __future__ import annotations

import numpy as np

M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85
ROUNDS = 10
_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# the NumPy reference: any broadcastable arrays of counters and keys at once
# ---------------------------------------------------------------------------------------------

def philox4x32_numpy(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of every counter (c0, c1, c2, c3) under key (k0, k1), elementwise.

    Args:
        c0..c3, k0, k1: integers or integer arrays with values in [0, 2³²), broadcastable together.
    Returns:
        r0, r1, r2, r3: uint32 arrays of the broadcast shape.
    """
    c0, c1, c2, c3, k0, k1 = (np.asarray(a).astype(np.uint64) for a in (c0, c1, c2, c3, k0, k1))
    m0, m1, mask = np.uint64(M0), np.uint64(M1), np.uint64(_MASK32)
    for r in range(ROUNDS):
        if r:                                               # bump the key between rounds
            k0 = (k0 + np.uint64(W0)) & mask
            k1 = (k1 + np.uint64(W1)) & mask
        p0 = m0 * c0                                        # < 2⁶⁴: no overflow in uint64
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask)
    return tuple(np.asarray(c).astype(np.uint32) for c in (c0, c1, c2, c3))


# ---------------------------------------------------------------------------------------------
# one counter at a time, for the kernels (compiled by Numba for the CPU and by numba.cuda)
# ---------------------------------------------------------------------------------------------

def philox4x32_scalar(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of one counter: six uint64 scalars holding 32-bit values -> four such scalars.

    Plain Python on purpose: ``philox4x32_jit`` (Numba CPU) and ``philox4x32_device`` (numba.cuda)
    are compiled from this very function, and Numba's CUDA simulator runs it as written. Every
    constant is a uint64, so Numba never mixes signed and unsigned integers (which would give float).
    """
    m0 = np.uint64(M0)
    m1 = np.uint64(M1)
    w0 = np.uint64(W0)
    w1 = np.uint64(W1)
    mask = np.uint64(_MASK32)
    shift = np.uint64(32)
    for r in range(ROUNDS):
        if r > 0:
            k0 = (k0 + w0) & mask
            k1 = (k1 + w1) & mask
        p0 = m0 * c0
        p1 = m1 * c2
        n0 = (p1 >> shift) ^ c1 ^ k0
        n2 = (p0 >> shift) ^ c3 ^ k1
        c1 = p1 & mask
        c3 = p0 & mask
        c0 = n0
        c2 = n2
    return c0, c1, c2, c3


def dropout_threshold(p: float) -> int:
    """The 32-bit threshold of drop probability p: a word w (uniform on [0, 2³²)) is kept when
    w >= threshold, so P(drop) = threshold / 2³² = p to within 2⁻³³."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p!r} must be in [0, 1)")
    return min(int(round(p * 2.0 ** 32)), _MASK32)


def split_seed(seed) -> tuple:
    """The Philox key (k0, k1) of a 64-bit seed: its low and high 32-bit halves."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"dropout seed must be an integer in [0, 2**64), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"dropout seed={seed} must be in [0, 2**64)")
    return seed & _MASK32, seed >> 32


def attention_keep(seed, p: float, B: int, H: int, Tq: int, Tk: int, batch_offset: int = 0):
    """The dropout mask of attention probabilities [B, H, Tq, Tk], True = kept (reference).

    Element (b, h, i, j) is word j mod 4 of philox4x32_10((j // 4, i, h, b₀ + b), key(seed)) compared
    with ``dropout_threshold(p)``; the kernels compute the same words one tile at a time.
    b₀ = ``batch_offset`` is 0 in one process; a data-parallel rank holding rows b₀.. of the batch
    passes b₀, so that it draws what one process draws for those rows.
    """
    k0, k1 = split_seed(seed)
    threshold = np.uint32(dropout_threshold(p))
    groups = (Tk + 3) // 4
    c0 = np.arange(groups, dtype=np.uint64)[None, None, None, :]
    c1 = np.arange(Tq, dtype=np.uint64)[None, None, :, None]
    c2 = np.arange(H, dtype=np.uint64)[None, :, None, None]
    c3 = np.arange(batch_offset, batch_offset + B, dtype=np.uint64)[:, None, None, None]
    words = np.stack(philox4x32_numpy(c0, c1, c2, c3, k0, k1), axis=-1)   # [B, H, Tq, groups, 4]
    return words.reshape(B, H, Tq, groups * 4)[..., :Tk] >= threshold


def dropout_keep(seed, p: float, shape, offset: int = 0):
    """The mask of plain (hidden-state) dropout on an array of ``shape``, True = kept (reference).

    Element n of the flattened array is element m = offset + n of the whole mask: word m mod 4 of
    philox4x32_10((m // 4 mod 2³², m // 2³⁴, 0, 0), key(seed)) compared with
    ``dropout_threshold(p)``; ``kernels/dropout.py`` computes the same words on the fly. ``offset``
    (0 in one process) lets a data-parallel rank holding rows r0.. of a batch draw what one process
    draws for them: offset = r0 · (elements per row)."""
    k0, k1 = split_seed(seed)
    size = int(np.prod(shape))
    offset = int(offset)
    first, last = offset // 4, (offset + size + 3) // 4
    groups = np.arange(first, last, dtype=np.uint64)
    words = np.stack(philox4x32_numpy(groups & np.uint64(_MASK32), groups >> np.uint64(32), 0, 0, k0, k1),
                     axis=-1)
    start = offset - 4 * first
    return (words.reshape(-1)[start:start + size] >= np.uint32(dropout_threshold(p))).reshape(shape)


try:  # the compiled forms; the reference above works without Numba
    import numba

    philox4x32_jit = numba.njit(inline="always", cache=True)(philox4x32_scalar)
except ImportError:  # pragma: no cover - depends on the environment
    philox4x32_jit = None


def philox4x32_device():
    """The numba.cuda device function compiled from ``philox4x32_scalar`` (built on first use, so
    that importing this module never touches CUDA)."""
    global _DEVICE
    if _DEVICE is None:
        from numba import cuda

        _DEVICE = cuda.jit(device=True, inline=True)(philox4x32_scalar)
    return _DEVICE


_DEVICE = None

__all__ = ["philox4x32_numpy", "philox4x32_scalar", "philox4x32_jit", "philox4x32_device",
           "attention_keep", "dropout_keep", "dropout_threshold", "split_seed", "M0", "M1", "W0", "W1",
           "ROUNDS"]
