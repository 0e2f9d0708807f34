"""The fused CPU kernels beside attention (kernels/gelu.py, layernorm.py, optim.py, dropout.py, embedding.py) against the
readable formulas they replace (the layer files' reference functions), NaN and infinity, the serial
and the parallel path of each, and clear errors for what they do not take.

Metrics. float64 GELU's forward and Adam do the reference's operations in its order with the same
functions (erf is the C library's on both sides; +, −, ×, ÷ and √ are correctly rounded everywhere),
so they must equal it bit for bit on every CPU. GELU's backward takes exp(−x²/2): the kernel calls
the C library's exp, the reference NumPy's, which NumPy chooses by CPU (on AVX-512 it is a SIMD exp
that differs from the C library's in the last bit: 23 of 1,000 values on an EPYC reported as
SkylakeX), so that one is bounded in ulps (below). Elsewhere the kernel sums in another order than NumPy, and the error is measured relative to
the tensor's scale, max|a − b| / max|b|: a rounding error of a sum is bounded by ε·Σ|terms|, the
scale of the tensor, not of an entry that cancels to near zero (an elementwise relative error
divides that rounding by a tiny entry). Bounds: float64 1e-12, float32 1e-6.
"""
import math

import numpy as np
import pytest

from tinybert.nn.dropout import Dropout, dropout_reference
from tinybert.nn.gelu import GELU, gelu_reference, gelu_reference_backward
from tinybert.nn.layernorm import LayerNorm, layernorm_reference, layernorm_reference_backward
from tinybert.optim import adam_update
from tinybert.special import erf
from tinybert.nn import embedding as embedding_layer
from tinybert.nn.embedding import Embedding
from tinybert_kernels import dropout, embedding, gelu, layernorm, optim, philox

TOL = {np.float32: 1e-6, np.float64: 1e-12}


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """Run a test through each kernel's serial twin and through its parallel version (which real
    shapes take only above SERIAL_BELOW elements, too big for a test: the threshold is lowered)."""
    if request.param == "parallel":
        for module in (gelu, layernorm, optim, dropout):
            monkeypatch.setattr(module, "SERIAL_BELOW", 1)
    return request.param


def scaled_error(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def same_nonfinite(a, ref):
    return np.array_equal(np.isnan(a), np.isnan(ref)) and np.array_equal(np.isposinf(a), np.isposinf(ref)) \
        and np.array_equal(np.isneginf(a), np.isneginf(ref))


# ------------------------------------------------------------------------------------ GELU ----

def gelu_inputs(dtype, n):
    """A spread of x (|x| up to 14, where Φ underflows), zeros, and random values, n in total."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-14, 14, n // 2), rng.standard_normal(n - n // 2 - 2) * 3, [0.0, -0.0]])
    return x.astype(dtype)


@pytest.mark.parametrize("n", [1000, 3 * 4096 + 7])      # one parallel task, several
def test_gelu_float64_forward_is_the_formula_bit_for_bit(n, path):
    x = gelu_inputs(np.float64, n)
    np.testing.assert_array_equal(gelu.gelu_forward(x), gelu_reference(x))


@pytest.mark.parametrize("n", [1000, 3 * 4096 + 7])
def test_gelu_float64_backward_is_the_formula_within_4_ulps_of_its_terms(n, path):
    """dx = dy·(Φ + x·φ): the two sides' exp may each be up to 1 ulp from the truth, so their φ differ
    by up to 2 ulps; x·φ, the sum with Φ (the same on both sides) and the product with dy each round
    once more. So |ours − ref| ≤ 4 ulps of |dy|·(|Φ| + |x·φ|), the size of the terms (not of dx,
    which cancels to near 0 at x ≈ −0.75, where a relative bound would be meaningless)."""
    x = gelu_inputs(np.float64, n)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    terms = np.abs(dy) * (np.abs(cdf) + np.abs(x * pdf))
    ours, ref = gelu.gelu_backward(x, dy), gelu_reference_backward(x, dy)
    ulps = np.abs(ours - ref) / np.spacing(terms)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= 4, f"x = {x[worst]!r}: {ours[worst]!r} vs the formula's {ref[worst]!r} ({ulps[worst]:.1f} ulps)"


@pytest.mark.parametrize("n", [1000, 3 * 4096 + 7])
def test_gelu_float32_matches_the_formula_and_float64(n, path):
    """Against the float32 formula (1e-6 of the tensor's scale), and as close as the float32 formula
    to the float64 truth (erfc form, no cancellation), to half a float32 ulp of the scale."""
    x = gelu_inputs(np.float32, n)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    y, dx = gelu.gelu_forward(x), gelu.gelu_backward(x, dy)
    assert y.dtype == dx.dtype == np.float32
    assert scaled_error(y, gelu_reference(x)) <= TOL[np.float32]
    assert scaled_error(dx, gelu_reference_backward(x, dy)) <= TOL[np.float32]
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    erfc = np.vectorize(math.erfc)
    cdf = 0.5 * erfc(-x64 / math.sqrt(2))
    y_true = x64 * cdf
    dx_true = dy64 * (cdf + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2 * math.pi))
    for ours, ref, truth in ((y, gelu_reference(x), y_true), (dx, gelu_reference_backward(x, dy), dx_true)):
        # no further from the truth than the float32 formula, give or take half a float32 ulp of scale
        assert scaled_error(ours, truth) <= scaled_error(ref, truth) + 2 ** -24
    body = np.abs(x64) < 4      # y itself, entry by entry, away from the tail: a few float32 ulps
    assert np.max(np.abs(y - y_true)[body] / np.maximum(np.abs(y_true[body]), 1e-30)) < 2e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_nan_and_inf_as_the_formula(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30, 3.0, -3.0], dtype=dtype)
    dy = np.array([1.0, 1.0, 1.0, np.nan, 1.0, 1.0, np.inf, 2.0], dtype=dtype)
    with np.errstate(all="ignore"):
        pairs = [(gelu.gelu_forward(x), gelu_reference(x)),
                 (gelu.gelu_backward(x, dy), gelu_reference_backward(x, dy))]
    for ours, ref in pairs:
        assert same_nonfinite(ours, ref), (ours, ref)
        fin = np.isfinite(ref)
        assert scaled_error(ours[fin], ref[fin]) <= TOL[dtype]
    assert np.isnan(pairs[0][0][0]) and np.isnan(pairs[1][0][0]) and np.isnan(pairs[1][0][3])


def test_gelu_layer_takes_the_kernel_and_falls_back():
    """NumPy float32 → the kernel; a non-contiguous view, float16 or the tanh form → the formula."""
    x = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    layer = GELU()
    np.testing.assert_array_equal(layer.forward(x), gelu.gelu_forward(x))
    view = x[:, ::2]
    np.testing.assert_array_equal(layer.forward(view), gelu_reference(view))
    half = x.astype(np.float16)
    assert layer.forward(half).dtype == np.float16
    np.testing.assert_array_equal(layer.backward(half), gelu_reference_backward(half, half))
    tanh = GELU("tanh")
    np.testing.assert_array_equal(tanh.forward(x), gelu_reference(x, "tanh"))


def test_gelu_kernel_bad_input_gives_clear_errors():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match=r"x must be a NumPy array, got list"):
        gelu.gelu_forward([1.0, 2.0])
    with pytest.raises(TypeError, match=r"x.dtype is float16; the GELU kernel takes float32 or float64"):
        gelu.gelu_forward(x.astype(np.float16))
    with pytest.raises(ValueError, match=r"x must be C-contiguous"):
        gelu.gelu_forward(x.T)
    with pytest.raises(ValueError, match=r"dy is float32\[4, 3\] but x is float32\[3, 4\]"):
        gelu.gelu_backward(x, np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy is float64\[3, 4\] but x is float32"):
        gelu.gelu_backward(x, x.astype(np.float64))


# ------------------------------------------------------------------------------- LayerNorm ----

def ln_inputs(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    w, b = (rng.standard_normal(shape[-1]).astype(dtype) for _ in range(2))
    dy, dy2 = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    return x, r, w, b, dy, dy2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7), (130, 384), (2, 300, 64)])
@pytest.mark.parametrize("residual", [False, True])
def test_layernorm_matches_the_formula(dtype, shape, residual, path):
    x, r, w, b, dy, dy2 = ln_inputs(dtype, shape)
    y, xhat, rstd = layernorm.layernorm_forward(x, w, b, 1e-12, r if residual else None)
    y_ref, xhat_ref, rstd_ref = layernorm_reference(x + r if residual else x, w, b, 1e-12)
    assert rstd.shape == rstd_ref.shape and y.dtype == dtype
    dx, dw, db = layernorm.layernorm_backward(dy, xhat, rstd, w, dy2 if residual else None)
    dx_ref, dw_ref, db_ref = layernorm_reference_backward(dy + dy2 if residual else dy, xhat_ref, rstd_ref, w)
    errors = {name: scaled_error(a, ref) for name, a, ref in [
        ("y", y, y_ref), ("xhat", xhat, xhat_ref), ("rstd", rstd, rstd_ref),
        ("dx", dx, dx_ref), ("dweight", dw, dw_ref), ("dbias", db, db_ref)]}
    print(errors)
    assert max(errors.values()) <= TOL[dtype], errors


def test_layernorm_nan_stays_in_its_row():
    x, r, w, b, dy, _ = ln_inputs(np.float32, (6, 9))
    x[2, 4] = np.nan
    x[4, 1] = np.inf
    with np.errstate(all="ignore"):
        y, xhat, rstd = layernorm.layernorm_forward(x, w, b, 1e-12)
        y_ref, xhat_ref, rstd_ref = layernorm_reference(x, w, b, 1e-12)
        dx, dw, db = layernorm.layernorm_backward(dy, xhat, rstd, w)
        dx_ref, dw_ref, db_ref = layernorm_reference_backward(dy, xhat_ref, rstd_ref, w)
    for ours, ref in ((y, y_ref), (rstd, rstd_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        assert same_nonfinite(ours, ref)
    assert np.isnan(y[2]).all() and np.isnan(y[4]).all() and np.isfinite(np.delete(y, [2, 4], 0)).all()


def test_layernorm_layer_falls_back_and_keeps_its_cache():
    x, r, w, b, dy, dy2 = ln_inputs(np.float32, (2, 3, 8))
    ln = LayerNorm(8)
    ln.weight.data[:], ln.bias.data[:] = w, b
    y = ln.forward(x, r)
    assert ln.xhat.shape == x.shape and ln.rstd.shape == (2, 3, 1)         # what lessons read
    view_y = ln.forward(x[:, :, :], r[..., ::-1].copy()[..., ::-1])        # a non-contiguous residual
    assert scaled_error(view_y, y) <= 1e-6
    dx = ln.backward(dy, dy2[..., ::-1][..., ::-1])
    assert scaled_error(dx, layernorm_reference_backward(dy + dy2, ln.xhat, ln.rstd, w)[0]) <= 1e-6


def test_layernorm_kernel_bad_input_gives_clear_errors():
    x, r, w, b, dy, _ = ln_inputs(np.float32, (4, 6))
    with pytest.raises(ValueError, match=r"gamma \(5,\) and beta \(6,\) must be \[C\] = \(6,\)"):
        layernorm.layernorm_forward(x, w[:5], b, 1e-12)
    with pytest.raises(ValueError, match=r"residual.shape \(4, 3\) must equal x.shape \(4, 6\)"):
        layernorm.layernorm_forward(x, w, b, 1e-12, r[:, :3].copy())
    with pytest.raises(TypeError, match=r"gamma.dtype is float64; the LayerNorm kernel takes"):
        layernorm.layernorm_forward(x, w.astype(np.float64), b, 1e-12)
    with pytest.raises(ValueError, match=r"x must be C-contiguous"):
        layernorm.layernorm_forward(x.T, w[:4], b[:4], 1e-12)
    _, xhat, rstd = layernorm.layernorm_forward(x, w, b, 1e-12)
    with pytest.raises(ValueError, match=r"rstd \(3, 1\) must hold one value per row \(4\)"):
        layernorm.layernorm_backward(dy, xhat, rstd[:3], w)


# ---------------------------------------------------------------------------- Adam, norm ------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled,weight_decay", [(True, 0.01), (False, 0.01), (False, 0.0), (True, 0.0)])
@pytest.mark.parametrize("n", [500, 3 * (1 << 14) + 3])
def test_adam_step_is_the_formula_bit_for_bit(dtype, decoupled, weight_decay, n, path):
    rng = np.random.default_rng(0)
    p, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    m, v = (rng.standard_normal(n) * 0.1).astype(dtype), (rng.random(n) * 0.1).astype(dtype)
    p[3], g[5], g[8] = np.inf, np.nan, -np.inf                      # they land where the formula puts them
    ours, ref = [a.copy() for a in (p, g, m, v)], [a.copy() for a in (p, g, m, v)]
    with np.errstate(all="ignore"):
        for t in (1, 2, 9):
            optim.adam_step(*ours, 1e-3, 0.9, 0.999, 1e-8, weight_decay, decoupled, t)
            adam_update(*ref, 1e-3, 0.9, 0.999, 1e-8, weight_decay, decoupled, t)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(ours[0][5]) and np.isnan(ours[0][8])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [100, 5 * (1 << 14) + 1])
def test_sum_of_squares(dtype, n, path):
    g = (np.random.default_rng(0).standard_normal(n) * 1e3).astype(dtype)
    ref = float((g.astype(np.float64) ** 2).sum())
    assert abs(optim.sum_of_squares(g) - ref) <= 1e-12 * ref
    g[7] = np.nan
    assert math.isnan(optim.sum_of_squares(g))


def test_optim_kernel_bad_input_gives_clear_errors():
    a = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"adam_step needs param, grad, exp_avg, exp_avg_sq"):
        optim.adam_step(a, a.astype(np.float64), a, a, 1e-3, 0.9, 0.999, 1e-8, 0.0, True, 1)
    with pytest.raises(TypeError, match=r"sum_of_squares needs a C-contiguous float32/float64"):
        optim.sum_of_squares(np.zeros(4, np.int64))


# ---------------------------------------------------------------------------------- dropout ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 1000, 3 * 4096 + 5])      # partial groups of 4, tasks
def test_dropout_kernel_is_the_formula_bit_for_bit(dtype, n, path):
    """The kernel's mask is philox.dropout_keep's, element for element (a product by 0 or 1/(1−p),
    so equal outputs mean equal masks), and the drop rate is p."""
    x = (np.random.default_rng(0).standard_normal(n) + 3).astype(dtype)     # no zeros of its own
    seed, p = 0xDEADBEEF_12345678, 0.1
    y = dropout.apply_mask(x, p, seed)
    np.testing.assert_array_equal(y, dropout_reference(x, p, seed))
    np.testing.assert_array_equal(y != 0, philox.dropout_keep(seed, p, x.shape))
    if n > 1000:
        assert abs((y == 0).mean() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_dropout_layer_regenerates_its_mask_and_keeps_nan():
    x = np.random.default_rng(0).standard_normal((4, 5, 6)).astype(np.float32)
    x[0, 0, 0] = np.nan
    layer = Dropout(0.5, np.random.default_rng(3))
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(y == 0, dx == 0)                # the same mask, regenerated
    assert set(np.unique(dx)) == {0.0, 2.0}
    assert np.isnan(y[0, 0, 0])                                   # kept or dropped: NaN · (0 or 2)
    np.testing.assert_array_equal(y, dropout_reference(x, 0.5, layer.seed))
    assert not np.array_equal(layer.forward(x) == 0, y == 0)      # a new seed each forward
    with pytest.raises(TypeError, match=r"dropout kernel needs a C-contiguous float32/float64"):
        dropout.apply_mask(x.astype(np.float16), 0.5, 1)


# ------------------------------------------------------------------------------- embedding ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_embedding_backward_is_add_at_bit_for_bit(dtype, padding_idx, monkeypatch):
    """The layer's backward through the kernel equals its ``np.add.at`` twin bit for bit (the same
    rows added in the same order): ids repeated many times, negative ids (from the end, as NumPy
    indexes), the padding row left without gradient, a gradient already accumulated, NaN in dout
    at a padding position (the twin zeroes it, the kernel skips it: the same row)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(-7, 7, (5, 40))
    ids[0, :3] = 0
    dout = rng.standard_normal((5, 40, 6)).astype(dtype)
    if padding_idx == 0:
        dout[0, 0] = np.nan
    grads = []
    for kernel in (embedding, None):
        monkeypatch.setattr(embedding_layer, "_KERNEL", kernel)
        layer = Embedding(7, 6, np.random.default_rng(0), dtype=dtype, padding_idx=padding_idx)
        layer.weight.grad[...] = 0.25
        layer.forward(ids)
        layer.backward(dout)
        grads.append(layer.weight.grad)
    np.testing.assert_array_equal(grads[0], grads[1])
    assert not np.isnan(grads[0]).any()
    if padding_idx is not None:
        assert np.all(grads[0][padding_idx] == 0.25)


def test_embedding_kernel_takes_only_what_it_can_and_checks_ids():
    """``supports`` turns down what the loop cannot take (the layer then runs ``add.at``), and an id
    outside the table raises IndexError before any row is added."""
    grad = np.zeros((4, 3), np.float32)
    ids = np.array([0, 3, 1])
    dy = np.ones((3, 3), np.float32)
    assert embedding.supports(grad, ids, dy)
    assert not embedding.supports(grad, ids, dy.astype(np.float64))           # dtypes differ
    assert not embedding.supports(grad, ids.astype(np.float32), dy)           # float ids
    assert not embedding.supports(grad, ids[:2], dy)                          # rows differ
    assert not embedding.supports(np.zeros((3, 4), np.float32).T, ids, dy)    # not C-contiguous
    for bad in (4, -5):
        with pytest.raises(IndexError, match=f"index {bad} is out of bounds"):
            embedding.scatter_add(grad, np.array([0, bad]), np.ones((2, 3), np.float32))
        assert not grad.any()
