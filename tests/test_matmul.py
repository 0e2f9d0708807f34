"""kernels/matmul.py: the products split over Numba's threads equal their twin, ``a @ b``.

Sizes are above ``SPLIT_FROM`` (or an operand above ``SPLIT_OPERAND_FROM``) so that the split paths
run (a spy counts the kernels' calls), with row counts that do not divide evenly among the threads.
"""
import numba
import numpy as np
import pytest

from tinybert_kernels import matmul as mm
from tinybert_kernels import threads

TOL = {np.float32: 1e-5, np.float64: 1e-13}


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture
def two_threads():
    old = numba.get_num_threads()
    threads.configure(2)
    yield
    numba.set_num_threads(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["x W^T", "dy W", "dy^T x"])
def test_split_product_equals_the_plain_product(two_threads, monkeypatch, dtype, case):
    rng = np.random.default_rng(0)
    n, c_in, c_out = 515, 96, 352                      # 515 tokens: the threads' blocks are uneven
    assert n * c_in * c_out >= mm.SPLIT_FROM
    x = rng.standard_normal((n, c_in)).astype(dtype)
    w = rng.standard_normal((c_out, c_in)).astype(dtype)
    dy = rng.standard_normal((n, c_out)).astype(dtype)
    a, b, name = {"x W^T": (x, w.T, "_split_rows"), "dy W": (dy, w, "_split_rows"),
                  "dy^T x": (dy.T, x, "_split_inner")}[case]
    calls = []
    kernel = getattr(mm, name)
    monkeypatch.setattr(mm, name, lambda *args: calls.append(args[-1]) or kernel(*args))
    got = mm.matmul(a, b)
    assert calls == [2]                                # the split kernel ran, in two parts
    assert got.shape == (a.shape[0], b.shape[1]) and got.dtype == dtype
    assert _rel(got, a @ b) <= TOL[dtype]
    out = np.full((a.shape[0], b.shape[1]), np.nan, dtype=dtype)
    assert mm.matmul(a, b, out=out) is out and _rel(out, a @ b) <= TOL[dtype]
    strided = np.full((a.shape[0], 2 * b.shape[1]), np.nan, dtype=dtype)[:, ::2]   # a strided out
    mm.matmul(a, b, out=strided)
    assert _rel(strided, a @ b) <= TOL[dtype]
    bias = rng.standard_normal(b.shape[1]).astype(dtype)                 # + bias on every row
    assert _rel(mm.matmul(a, b, bias=bias), a @ b + bias) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["x W^T", "dy^T x", "small", "strided out"])
def test_accumulate_adds_the_product_into_out(two_threads, monkeypatch, dtype, case):
    """accumulate=True: out += a @ b (a weight's gradient), on every path; split by the inner
    dimension, the partial products are summed straight into out (``_sum_parts`` accumulating),
    with no result array of its own."""
    rng = np.random.default_rng(3)
    n, c_in, c_out = 515, 96, 352
    x = rng.standard_normal((n, c_in)).astype(dtype)
    w = rng.standard_normal((c_out, c_in)).astype(dtype)
    dy = rng.standard_normal((n, c_out)).astype(dtype)
    a, b = {"x W^T": (x, w.T), "dy^T x": (dy.T, x), "small": (x[:7, :5], w.T[:5, :3]),
            "strided out": (dy.T, x)}[case]
    start = rng.standard_normal((a.shape[0], b.shape[1])).astype(dtype)
    out = start.copy()
    if case == "strided out":
        out = np.full((a.shape[0], 2 * b.shape[1]), np.nan, dtype=dtype)[:, ::2]
        out[...] = start
    sums = []
    kernel = mm._sum_parts
    monkeypatch.setattr(mm, "_sum_parts", lambda *args: sums.append(args[2]) or kernel(*args))
    assert mm.matmul(a, b, out=out, accumulate=True) is out
    assert _rel(out, start + a @ b) <= TOL[dtype]
    assert sums == {"x W^T": [], "dy^T x": [True], "small": [], "strided out": [False]}[case]
    for bad in (dict(out=None), dict(out=out, bias=np.zeros(b.shape[1], dtype))):
        with pytest.raises(ValueError, match="accumulate=True adds a @ b into out"):
            mm.matmul(a, b, accumulate=True, **bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_few_rows_against_a_large_weight_are_split(two_threads, monkeypatch, dtype):
    """W xᵀ for 3 tokens (``Linear``'s few-rows form) has few multiply-adds but reads the whole
    weight, an operand of at least SPLIT_OPERAND_FROM elements: it is split by the weight's rows,
    and equals the plain product."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((385, 384)).astype(dtype)                # 385 rows: uneven blocks
    x = rng.standard_normal((3, 384)).astype(dtype)
    assert w.shape[0] * w.shape[1] * 3 < mm.SPLIT_FROM and w.size >= mm.SPLIT_OPERAND_FROM
    calls = []
    kernel = mm._split_rows
    monkeypatch.setattr(mm, "_split_rows", lambda *args: calls.append(args[-1]) or kernel(*args))
    got = mm.matmul(w, x.T)
    assert calls == [2]
    assert _rel(got, w @ x.T) <= TOL[dtype]


def test_small_products_and_other_layouts_take_the_plain_path(two_threads):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 384)).astype(np.float32)
    b = rng.standard_normal((384, 32)).astype(np.float32)
    assert a.shape[0] * a.shape[1] * b.shape[1] < mm.SPLIT_FROM and max(a.size, b.size) < mm.SPLIT_OPERAND_FROM
    np.testing.assert_array_equal(mm.matmul(a, b), a @ b)
    big = rng.standard_normal((600, 300)).astype(np.float32)[:, ::2]     # neither C nor F: plain
    w = rng.standard_normal((150, 400)).astype(np.float32)
    np.testing.assert_array_equal(mm.matmul(big, w), big @ w)


def test_blas_runs_on_one_thread_inside_and_the_setting_comes_back(two_threads):
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    with threads.single_threaded_blas():
        assert set(blas_threads().values()) == {1}
        with threads.single_threaded_blas():               # re-entrant
            assert set(blas_threads().values()) == {1}
        assert set(blas_threads().values()) == {1}
    assert blas_threads() == before
