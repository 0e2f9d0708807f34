"""Philox4x32-10 (kernels/philox.py): Random123's published known-answer vectors, word for word, in
each of its forms (NumPy, Numba CPU, numba.cuda under the simulator and compiled to PTX), and the
attention dropout mask built from it.

The known answers are Random123's ``kat_vectors`` for philox4x32 with 10 rounds (D. E. Shaw
Research; the same three lines are quoted in DEShawResearch/fs123, core123/ut/ut_philox.cpp, and
in Boost.Random's philox test): counter, key -> output, as 32-bit words in hexadecimal.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tinybert_kernels import philox

KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers_numpy(counter, key, expected):
    assert tuple(int(w) for w in philox.philox4x32_numpy(*counter, *key)) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers_numba_cpu(counter, key, expected):
    words = philox.philox4x32_jit(*(np.uint64(x) for x in counter + key))
    assert tuple(int(w) for w in words) == expected


def test_known_answers_plain_python():
    """The function the CUDA kernels compile (and the simulator runs), called as Python."""
    for counter, key, expected in KAT:
        words = philox.philox4x32_scalar(*(np.uint64(x) for x in counter + key))
        assert tuple(int(w) for w in words) == expected


def test_numpy_and_numba_agree_on_many_counters():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2 ** 32, size=(4, 2000), dtype=np.uint64)
    k = rng.integers(0, 2 ** 32, size=(2, 2000), dtype=np.uint64)
    ref = np.stack(philox.philox4x32_numpy(*c, *k))
    from numba import njit

    @njit
    def all_words(c, k):
        out = np.empty((4, c.shape[1]), dtype=np.uint64)
        for n in range(c.shape[1]):
            r = philox.philox4x32_jit(c[0, n], c[1, n], c[2, n], c[3, n], k[0, n], k[1, n])
            out[0, n], out[1, n], out[2, n], out[3, n] = r
        return out

    np.testing.assert_array_equal(all_words(c, k), ref)


def test_attention_mask_layout_and_rate():
    """Element (b, h, i, j) is word j mod 4 of the counter (j // 4, i, h, b); the drop rate is p."""
    seed, p = 0x0123456789ABCDEF, 0.1
    keep = philox.attention_keep(seed, p, 2, 3, 5, 11)
    assert keep.shape == (2, 3, 5, 11) and keep.dtype == bool
    b, h, i, j = 1, 2, 4, 9
    word = philox.philox4x32_numpy(j // 4, i, h, b, seed & 0xFFFFFFFF, seed >> 32)[j % 4]
    assert keep[b, h, i, j] == (int(word) >= round(p * 2 ** 32))
    big = philox.attention_keep(7, p, 4, 4, 64, 64)                    # 65,536 draws
    rate = 1 - big.mean()
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / big.size), rate   # four standard deviations
    assert not np.array_equal(big, philox.attention_keep(8, p, 4, 4, 64, 64))   # seeds differ
    assert philox.attention_keep(7, 0.0, 1, 1, 3, 3).all()


def test_threshold_and_seed_errors():
    assert philox.dropout_threshold(0.0) == 0 and philox.dropout_threshold(0.5) == 2 ** 31
    with pytest.raises(ValueError, match=r"p=1.0 must be in \[0, 1\)"):
        philox.dropout_threshold(1.0)
    with pytest.raises(ValueError, match=r"p=nan"):
        philox.dropout_threshold(float("nan"))
    with pytest.raises(ValueError, match=r"seed=-1 must be in \[0, 2\*\*64\)"):
        philox.split_seed(-1)
    with pytest.raises(TypeError, match=r"seed must be an integer .* got float"):
        philox.split_seed(1.5)
    assert philox.split_seed(2 ** 64 - 1) == (0xFFFFFFFF, 0xFFFFFFFF)


# ------------------------------------------------------------------------------ numba.cuda -----

CUDA_KAT_SCRIPT = textwrap.dedent('''
    import numpy as np
    from numba import cuda
    from tinybert_kernels import philox

    generate = philox.philox4x32_device()

    @cuda.jit
    def kat_kernel(counters, keys, out):
        n = cuda.grid(1)
        if n < counters.shape[0]:
            r0, r1, r2, r3 = generate(counters[n, 0], counters[n, 1], counters[n, 2], counters[n, 3],
                                      keys[n, 0], keys[n, 1])
            out[n, 0] = r0
            out[n, 1] = r1
            out[n, 2] = r2
            out[n, 3] = r3

    counters = np.array({counters}, dtype=np.uint64)
    keys = np.array({keys}, dtype=np.uint64)
    out = np.zeros((len(counters), 4), dtype=np.uint64)
    kat_kernel[1, 32](counters, keys, out)
    print(" ".join("%08x" % int(w) for w in out.ravel()))
''')


def test_known_answers_cuda_simulator():
    script = CUDA_KAT_SCRIPT.format(counters=[list(c) for c, _, _ in KAT], keys=[list(k) for _, k, _ in KAT])
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["%08x" % w for _, _, e in KAT for w in e]


def test_device_function_compiles_to_ptx(monkeypatch):
    from tests.test_kernels_cudasim import _nvvm_missing_reason, pretend_cuda_device

    reason = _nvvm_missing_reason()
    if reason:
        pytest.skip(reason)
    from numba import cuda, types

    pretend_cuda_device(monkeypatch)
    generate = philox.philox4x32_device()

    def kat_kernel(counters, keys, out):
        n = cuda.grid(1)
        if n < counters.shape[0]:
            r0, r1, r2, r3 = generate(counters[n, 0], counters[n, 1], counters[n, 2], counters[n, 3],
                                      keys[n, 0], keys[n, 1])
            out[n, 0] = r0 ^ r1 ^ r2 ^ r3

    a = types.uint64[:, ::1]
    ptx, _ = cuda.compile_ptx(kat_kernel, types.void(a, a, a), cc=(9, 0))
    assert ".target sm_90" in ptx
    assert "call" not in ptx.split(".entry")[1], "the generator should be inlined into the kernel"
