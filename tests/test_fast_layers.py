"""Fast paths inside the layers (not kernels) against their readable twins, on small shapes.

- ``Linear.forward`` computes x Wᵀ as (W xᵀ)ᵀ for a few rows (``linear.FEW_ROWS``): its twin is the
  formula x Wᵀ + b, in float64 (to rounding: the two forms sum in another order).
- The attention layer computes Q, K, V in one [B·T, 3C] array: by one product with the
  concatenated [W_Q | W_K | W_V] for a batch, and for a few tokens by three products W_i xᵀ written
  into the row blocks of its transpose, with no copy of the weights (``MultiHeadSelfAttention._qkv``).
  The twin of both is the three ``Linear`` layers applied one by one; the backward's fused product
  is checked against their three backwards.

Each test runs through both forms (the ``rows`` fixture moves the threshold).
"""
import numpy as np
import pytest

from tinybert.nn import linear
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.linear import Linear

PROJECTIONS = ("query", "key", "value")


@pytest.fixture(params=["few rows", "a batch"])
def rows(request, monkeypatch):
    """Run through the few-rows form ((W xᵀ)ᵀ) or the batch form (x Wᵀ) of the products."""
    monkeypatch.setattr(linear, "FEW_ROWS", 10 ** 6 if request.param == "few rows" else 0)
    return request.param


@pytest.mark.parametrize("shape", [(1, 1, 7), (2, 5, 7), (33, 7)])
def test_linear_forward_is_the_formula(shape, rows):
    rng = np.random.default_rng(0)
    lin = Linear(7, 6, rng, std=1.0, dtype=np.float64)
    lin.bias.data[...] = rng.standard_normal(6)
    x = rng.standard_normal(shape)
    y = lin.forward(x)
    assert y.shape == shape[:-1] + (6,) and y.flags.c_contiguous
    np.testing.assert_allclose(y, x @ lin.weight.data.T + lin.bias.data, rtol=1e-13, atol=1e-13)
    y32 = Linear(7, 6, np.random.default_rng(0), std=1.0).forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, x @ lin.weight.data.T, rtol=1e-5, atol=1e-5)


def make_attention(dtype, seed=1):
    rng = np.random.default_rng(seed)
    att = MultiHeadSelfAttention(16, 4, init_rng=rng, std=0.5, dtype=dtype)
    for name in PROJECTIONS:
        getattr(att, name).bias.data[...] = rng.standard_normal(16).astype(dtype)
    return att, rng.standard_normal((2, 5, 16)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_qkv_is_the_three_linear_layers(dtype, rows):
    att, x = make_attention(dtype)
    for got, name in zip(att._qkv(x), PROJECTIONS):
        want = att._split(getattr(att, name).forward(x))          # the readable twin
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13,
                                   atol=1e-6 if dtype == np.float32 else 1e-13)


def test_qkv_backward_is_three_linear_backwards(rows):
    """dx and the gradients of W_Q, W_K, W_V (and biases) through the fused product equal those of
    the three Linear layers' own backward."""
    att, x = make_attention(np.float64, seed=2)
    rng = np.random.default_rng(3)
    d = [rng.standard_normal((2, 4, 5, 4)) for _ in range(3)]
    att.x = x
    att._qkv(x)
    dx = att._qkv_backward(*d)
    lins = [getattr(att, name) for name in PROJECTIONS]
    fused_grads = [p.grad.copy() for lin in lins for p in (lin.weight, lin.bias)]
    att.zero_grad()
    want = 0
    for lin, g in zip(lins, d):
        lin.forward(x)                                              # caches x for its backward
        want = want + lin.backward(att._merge(g))
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12)
    for got, p in zip(fused_grads, [p for lin in lins for p in (lin.weight, lin.bias)]):
        np.testing.assert_allclose(got, p.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["separate arrays", "parts of one array", "parts out of order"])
def test_merged_gradients_are_the_concatenation(layout):
    """``_merge_qkv`` gives [dQ | dK | dV] [B, T, 3C]: a reshape, without a copy, when the three are
    parts 0, 1, 2 of one [B, T, 3, H, d] array (as the Numba kernel returns them), else the
    concatenation (its readable twin); parts of one array handed over in another order are
    concatenated in the order given."""
    att, _ = make_attention(np.float64)
    dqkv = np.random.default_rng(4).standard_normal((2, 5, 3, 4, 4))
    d = [dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]
    if layout == "separate arrays":
        d = [g.copy() for g in d]
    if layout == "parts out of order":
        d = [d[1], d[0], d[2]]
    merged = att._merge_qkv(*d)
    np.testing.assert_array_equal(merged, np.concatenate([att._merge(g) for g in d], axis=-1))
    assert np.shares_memory(merged, dqkv) == (layout == "parts of one array")
