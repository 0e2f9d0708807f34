"""The attention kernels: every CPU backend against the NumPy reference and against float64 finite
differences, edge cases (padding, causal, causal + padding, rows with no kept key, T not a multiple
of the block size, Tq ≠ Tk, D up to 128, float32 and float64), attention dropout (the reference's
Philox mask bit for bit, gradients by finite differences with dropout on), NaN and infinity
propagated exactly as the reference does, clear errors for bad input, and the Numba forward's own
record of the tiles it computed, masked and skipped (``attention_forward_tiles``).

The CUDA kernels are tested in tests/test_kernels_cudasim.py (simulator, PTX, real GPU).
"""
import numpy as np
import pytest

from tinybert_kernels import attention_numba, attention_numpy, dispatch, philox
from tinybert_kernels.xp import head_views_of
from tinybert_kernels.dispatch import attention_backward, attention_forward

CPU_BACKENDS = ["numpy", "numba"]
TOL = {np.float32: 2e-5, np.float64: 1e-11}   # max |ours − ref| / (1 + |ref|)


def make_inputs(B, H, Tq, Tk, D, mask_kind, dtype, seed=0):
    """q, k, v, dout from N(0, 1) and a [B, Tk] mask: None, 'pad' (a padded tail in each sequence
    but the last) or 'empty' (as 'pad', and the last sequence has no kept key at all)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    k = rng.standard_normal((B, H, Tk, D)).astype(dtype)
    v = rng.standard_normal((B, H, Tk, D)).astype(dtype)
    dout = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    mask = None
    if mask_kind is not None:
        mask = np.ones((B, Tk), dtype=bool)
        for b in range(B - 1):
            mask[b, Tk - (b + 1) * Tk // (B + 2):] = False
        if mask_kind == "empty":
            mask[B - 1, :] = False
    return q, k, v, mask, dout


def worst_difference(a, ref):
    """max |a − ref| / (1 + |ref|) over finite entries; -inf must sit at the same places."""
    assert not np.isnan(a).any()
    assert np.array_equal(np.isneginf(a), np.isneginf(ref))
    finite = np.isfinite(ref)
    return float(np.max(np.abs(a[finite] - ref[finite]) / (1 + np.abs(ref[finite])), initial=0.0))


# (B, H, Tq, Tk, D, causal, mask): BLOCK_Q = 128 and BLOCK_K = 64 in the numba kernel, so 70, 150
# and 200 leave partial tiles; Tq ≠ Tk is cross-attention (and with causal, the diagonal shifts).
CASES = [
    (2, 3, 70, 70, 16, False, "pad"),
    (2, 2, 70, 70, 32, True, None),
    (3, 2, 70, 150, 8, True, "pad"),         # causal + padding, Tq < Tk
    (2, 2, 150, 40, 8, True, "pad"),         # Tq > Tk: the first rows see no key
    (2, 2, 200, 200, 16, True, "pad"),       # the causal diagonal across several tiles
    (2, 1, 37, 200, 128, False, "empty"),    # D = 128, a sequence with no kept key
    (1, 1, 1, 1, 4, False, None),
]


SEED = 0x5EED_0123_4567_89AB


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}Tq{}Tk{}D{}{}-{}".format(*c))
def test_numba_matches_reference(case, dtype, dropout_p):
    B, H, Tq, Tk, D, causal, mask_kind = case
    q, k, v, mask, dout = make_inputs(B, H, Tq, Tk, D, mask_kind, dtype)
    kw = dict(mask=mask, causal=causal, dropout_p=dropout_p, dropout_seed=SEED)
    out_ref, lse_ref = attention_numpy.attention_forward(q, k, v, **kw)
    grads_ref = attention_numpy.attention_backward(q, k, v, out_ref, lse_ref, dout, **kw)
    out, lse = attention_forward(q, k, v, backend="numba", **kw)
    grads = attention_backward(q, k, v, out, lse, dout, backend="numba", **kw)
    report = {}
    for name, a, ref in zip(["out", "lse", "dq", "dk", "dv"], [out, lse, *grads], [out_ref, lse_ref, *grads_ref]):
        assert a.dtype == dtype and a.shape == ref.shape, name
        report[name] = worst_difference(a, ref)
    print(report)
    assert max(report.values()) <= TOL[dtype], report


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("heads_per_task", [1, 2, 3])
def test_numba_any_grouping_of_heads_gives_the_same_bits(heads_per_task, parallel, monkeypatch):
    """A task takes a group of heads of one batch row (all H, or fewer when the batch is small:
    ``_heads_per_task``). Every grouping, including one whose last group is short (H = 3 in groups
    of 2), on the serial and the parallel path, gives the very same bits as the reference grouping
    (all heads in one task, serially), with [Q | K | V] as one [B, T, 3, H, D] array, padding, causal
    and dropout."""
    rng = np.random.default_rng(11)
    B, T, H, D = 2, 150, 3, 8
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    dout = rng.standard_normal((B, H, T, D)).astype(np.float32)
    mask = np.ones((B, T), bool)
    mask[1, 100:] = False
    kw = dict(mask=mask, causal=True, dropout_p=0.1, dropout_seed=SEED)

    def run():
        out, lse = attention_numba.attention_forward(q, k, v, **kw)
        return (out, lse, *attention_numba.attention_backward(q, k, v, out, lse, dout, **kw))

    monkeypatch.setattr(attention_numba, "SERIAL_BELOW", 1 << 62)
    monkeypatch.setattr(attention_numba, "_heads_per_task", lambda shape, n_row_tasks: H)
    reference = run()
    monkeypatch.setattr(attention_numba, "SERIAL_BELOW", 0 if parallel else 1 << 62)
    monkeypatch.setattr(attention_numba, "_heads_per_task", lambda shape, n_row_tasks: heads_per_task)
    for got, want in zip(run(), reference):
        np.testing.assert_array_equal(got, want)


def numerical_gradients(q, k, v, dout, mask, causal, backend, eps=1e-6, dropout_p=0.0):
    """Central differences of L = Σ out ∘ dout with respect to q, k and v (float64); with dropout the
    seed fixes the mask, so L is a deterministic function of q, k, v."""
    kw = dict(mask=mask, causal=causal, backend=backend, dropout_p=dropout_p, dropout_seed=SEED)
    grads = []
    for x in (q, k, v):
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            plus = np.sum(attention_forward(q, k, v, **kw)[0] * dout)
            x[idx] = old - eps
            minus = np.sum(attention_forward(q, k, v, **kw)[0] * dout)
            x[idx] = old
            g[idx] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal,mask_kind,Tq,Tk,dropout_p", [(False, "empty", 5, 7, 0.0), (True, "pad", 6, 6, 0.0),
                                                              (True, None, 4, 7, 0.0), (False, "pad", 5, 9, 0.3)])
def test_gradients_match_finite_differences(backend, causal, mask_kind, Tq, Tk, dropout_p):
    q, k, v, mask, dout = make_inputs(2, 2, Tq, Tk, 3, mask_kind, np.float64, seed=1)
    kw = dict(mask=mask, causal=causal, backend=backend, dropout_p=dropout_p, dropout_seed=SEED)
    out, lse = attention_forward(q, k, v, **kw)
    analytic = attention_backward(q, k, v, out, lse, dout, **kw)
    numeric = numerical_gradients(q, k, v, dout, mask, causal, backend, dropout_p=dropout_p)
    for name, a, n in zip(["dq", "dk", "dv"], analytic, numeric):
        rel = np.abs(a - n).max() / max(np.abs(a).max() + np.abs(n).max(), 1e-12)
        print(name, rel)
        assert rel < 1e-7, (name, rel)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fully_masked_rows_give_zero_not_nan(backend, dtype):
    q, k, v, _, dout = make_inputs(2, 2, 9, 130, 8, None, dtype)
    mask = np.ones((2, 130), dtype=bool)
    mask[1] = False                                   # the second sequence: no key kept
    for causal in (False, True):
        out, lse = attention_forward(q, k, v, mask=mask, causal=causal, backend=backend)
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, mask=mask, causal=causal, backend=backend)
        for a in (out, dq, dk, dv):
            assert not np.isnan(a).any()
            assert np.all(a[1] == 0)
        assert np.all(np.isneginf(lse[1])) and np.all(np.isfinite(lse[0]))
        assert np.abs(out[0]).max() > 0 and np.abs(dk[0]).max() > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_masked_keys_get_exactly_zero_weight(backend):
    """Changing a masked key or value changes nothing, and its gradients are exactly 0.

    Exact equality is safe on every CPU: both calls run the same code on the same kept keys, and a
    masked key's weight is exp(−inf) = 0 exactly, so its value never enters a sum."""
    q, k, v, mask, dout = make_inputs(2, 2, 20, 150, 8, "pad", np.float32)
    out, lse = attention_forward(q, k, v, mask=mask, backend=backend)
    k2, v2 = k.copy(), v.copy()
    k2[~mask.astype(bool)[:, None, :].repeat(2, 1)] = 1e4
    v2[~mask.astype(bool)[:, None, :].repeat(2, 1)] = 1e4
    out2, lse2 = attention_forward(q, k2, v2, mask=mask, backend=backend)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(lse, lse2)
    _, dk, dv = attention_backward(q, k, v, out, lse, dout, mask=mask, backend=backend)
    masked = ~mask[:, None, :].repeat(2, 1)
    assert np.all(dk[masked] == 0) and np.all(dv[masked] == 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n", [24, 130])
def test_dropout_mask_is_the_references_bit_for_bit(backend, n):
    """With q = 0 every kept weight is 1/Tk; with V = I the forward's out is P̃ itself and with
    dZ = I the backward's dV is P̃ᵀ: their nonzero patterns are the mask the kernel drew, and must
    be ``philox.attention_keep``'s, element for element (n = 130 spans three key blocks)."""
    B, H, p = 2, 3, 0.3
    q = np.zeros((B, H, n, n))
    k = np.random.default_rng(1).standard_normal((B, H, n, n))
    eye = np.broadcast_to(np.eye(n), (B, H, n, n)).copy()
    want = philox.attention_keep(SEED, p, B, H, n, n)
    out, lse = attention_forward(q, k, eye, dropout_p=p, dropout_seed=SEED, backend=backend)
    _, _, dv = attention_backward(q, k, eye, out, lse, eye, dropout_p=p, dropout_seed=SEED, backend=backend)
    np.testing.assert_array_equal(out > 0, want)
    np.testing.assert_array_equal(np.swapaxes(dv, -1, -2) > 0, want)
    np.testing.assert_allclose(out[want], 1 / (n * (1 - p)), rtol=1e-14)
    assert abs((1 - want.mean()) - p) < 4 * np.sqrt(p * (1 - p) / want.size)


def nan_case(name, backend):
    """Outputs of forward + backward for one way a NaN or an infinity gets in, float32, padded."""
    q, k, v, mask, dout = make_inputs(2, 2, 9, 70, 8, "pad", np.float32, seed=4)
    scale = None
    if name == "nan_q":
        q[0, 1, 3, 2] = np.nan                 # one query element
    elif name == "nan_k":
        k[1, 0, 2, 0] = np.nan                 # one kept key element
    elif name == "nan_v":
        v[0, 0, 1, 5] = np.nan                 # one kept value element
    elif name == "nan_dout":
        dout[1, 1, 6, 0] = np.nan
    elif name == "overflow":
        k = np.abs(k) + 1                      # positive terms, so q·k overflows to +inf in any order
        q[1, 0, 4] = 3e38
    elif name == "scale_nan":
        scale = float("nan")
    elif name == "scale_inf":
        scale = float("inf")
    with np.errstate(all="ignore"):
        out, lse = attention_forward(q, k, v, mask=mask, scale=scale, backend=backend)
        grads = attention_backward(q, k, v, out, lse, dout, mask=mask, scale=scale, backend=backend)
    return (out, lse) + tuple(grads)


NAN_CASES = ["nan_q", "nan_k", "nan_v", "nan_dout", "overflow", "scale_nan", "scale_inf"]


@pytest.mark.parametrize("name", NAN_CASES)
def test_nan_and_inf_propagate_exactly_as_the_reference(name):
    """Every output NaN (and inf) where the reference has one, and the finite rest equal."""
    ref = nan_case(name, "numpy")
    ours = nan_case(name, "numba")
    for t, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r), err_msg=f"{name}: NaN places of {t}")
        np.testing.assert_array_equal(np.isinf(a), np.isinf(r), err_msg=f"{name}: inf places of {t}")
        fin = np.isfinite(r)
        assert worst_difference(np.where(fin, a, 0), np.where(fin, r, 0)) <= TOL[np.float32], (name, t)
    assert sum(int(np.isnan(a).sum()) for a in ours) > 0, f"{name}: no NaN came out"


def test_reference_nan_semantics():
    """What the reference does with a NaN (and so what every backend must do): a NaN in query row i
    makes that row's out and lse NaN and no other row's; every kept key the row sees gets NaN dK and
    dV; masked keys keep dK = dV = 0 and rows of other heads stay finite. scale = NaN poisons every
    row that has a kept key, and a row with no kept key stays out = 0, lse = -inf."""
    out, lse, dq, dk, dv = nan_case("nan_q", "numpy")
    _, _, _, mask, _ = make_inputs(2, 2, 9, 70, 8, "pad", np.float32, seed=4)
    assert np.isnan(out[0, 1, 3]).all() and np.isnan(lse[0, 1, 3])
    assert np.isfinite(np.delete(out[0, 1], 3, axis=0)).all() and np.isfinite(out[1]).all()
    assert np.isnan(dk[0, 1][mask[0]]).all() and np.all(dk[0, 1][~mask[0]] == 0)
    assert np.isfinite(dq[0, 0]).all() and np.isfinite(dk[1]).all()
    q, k, v, _, _ = make_inputs(2, 2, 9, 70, 8, "empty", np.float32, seed=4)
    with np.errstate(all="ignore"):
        out, lse = attention_numpy.attention_forward(q, k, v, mask=np.array([[True] * 70, [False] * 70]),
                                                     scale=float("nan"))
    assert np.isnan(out[0]).all() and np.isnan(lse[0]).all()
    assert np.all(out[1] == 0) and np.all(lse[1] == -np.inf)


@pytest.mark.parametrize("parts", [1, 3])
def test_numba_takes_strided_views_and_returns_btHd_layout(parts):
    """The layer hands the kernel its projections seen as [B, H, T, D]: views of [B, T, H, D] memory
    (parts = 1, one projection) or the three parts of one [B, T, 3, H, D] array (parts = 3, the fused
    [Q | K | V] product). The results equal those of contiguous copies, out is a [B, H, T, D] view
    of [B, T, H, D] memory (so merging heads is a reshape), and for [Q | K | V] the gradients are the
    three parts of one [B, T, 3, H, D] array (so the layer takes [dQ | dK | dV] without a copy).

    Exact equality is safe on every CPU: the kernel reads every input into the same contiguous
    [heads, rows, D] buffers (``_load_heads``) before its ``np.dot`` calls, whatever the layout, so
    BLAS sees the same values in the same layout and shape either way."""
    rng = np.random.default_rng(5)
    B, T, H, D = 2, 150, 3, 8
    if parts == 1:
        q, k, v = (rng.standard_normal((B, T, H, D)).transpose(0, 2, 1, 3) for _ in range(3))
    else:
        qkv = rng.standard_normal((B, T, 3, H, D))
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    dout = rng.standard_normal((B, T, H, D)).transpose(0, 2, 1, 3)
    mask = np.ones((B, T), bool)
    mask[1, 90:] = False
    kw = dict(mask=mask, dropout_p=0.1, dropout_seed=SEED, backend="numba")
    out, lse = attention_forward(q, k, v, **kw)
    grads = attention_backward(q, k, v, out, lse, dout, **kw)
    contiguous = [np.ascontiguousarray(a) for a in (q, k, v, dout)]
    out_c, lse_c = attention_forward(*contiguous[:3], **kw)
    grads_c = attention_backward(*contiguous[:3], out_c, lse_c, contiguous[3], **kw)
    for a, c in zip((out, lse) + tuple(grads), (out_c, lse_c) + tuple(grads_c)):
        np.testing.assert_array_equal(a, c)
    for a in (out,) + tuple(grads_c):
        assert a.transpose(0, 2, 1, 3).flags.c_contiguous
    if parts == 3:
        found = [head_views_of(g) for g in grads]
        assert [f[1] for f in found] == [0, 1, 2] and found[0][0].shape == (B, T, 3, H, D)
        assert grads[0].base is grads[1].base is grads[2].base


def test_head_views_of_finds_the_part_and_nothing_else():
    """``head_views_of`` names (array, part) only for a true part view of a C-contiguous
    [B, T, G, H, D] array (a slice of heads is one, of the same memory read with fewer heads a
    part): copies, slices of T, other dtypes and [B, H, T, D] arrays give None."""
    qkv = np.zeros((2, 5, 3, 4, 6), np.float32)
    for g in range(3):
        a, found = head_views_of(qkv[:, :, g].transpose(0, 2, 1, 3))
        assert found == g and a.shape == qkv.shape and np.shares_memory(a, qkv)
    assert head_views_of(qkv[:, :, 1].transpose(0, 2, 1, 3).copy()) is None          # C-contiguous [B, H, T, D]
    assert head_views_of(qkv[:, :4, 1].transpose(0, 2, 1, 3)) is None               # a slice of T
    some_heads = qkv[:, :, 1, :2].transpose(0, 2, 1, 3)     # the same memory read as [B, T, 6, 2, D]: part 2
    a, found = head_views_of(some_heads)
    assert a.shape == (2, 5, 6, 2, 6) and found == 2 and np.shares_memory(a, qkv)
    assert a[:, :, found].transpose(0, 2, 1, 3).strides == some_heads.strides
    assert head_views_of(qkv.view(np.int32)[:, :, 1].transpose(0, 2, 1, 3)) is None  # another dtype's view
    assert head_views_of(qkv[:, :, 1]) is None                                      # [B, T, H, D] as is
    assert head_views_of(np.zeros((2, 4, 5, 6))) is None                            # no base


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_query_weights_give_a_nan_loss(backend):
    """Issue 11's case: NaN in W_Q used to come out of the Numba kernel as finite logits and a loss
    of log 2; now every backend gives NaN, as the reference does."""
    import tinybert

    config = tinybert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=20, num_labels=2)
    model = tinybert.BertForSequenceClassification(config, seed=0, attention_backend=backend).eval()
    model.bert.encoder.layers[0].attention.query.weight.data[:] = np.nan
    ids = np.random.default_rng(0).integers(1, 50, size=(2, 12))
    with np.errstate(all="ignore"):
        logits = model.forward(ids, attention_mask=np.ones((2, 12), np.int64))
        loss, _ = tinybert.cross_entropy(logits, np.array([0, 1]))
    assert np.isnan(logits).all() and np.isnan(loss)


@pytest.mark.parametrize("dtype,ulps", [(np.float32, 2), (np.float64, 2)])
def test_vectorized_exp(dtype, ulps):
    """The kernel's polynomial exp: within a few ulp of np.exp, exactly 0 for -inf."""
    x = np.concatenate([-np.logspace(-8, np.log10(79.0), 4000), [0.0, -1e-30, -np.inf, -np.inf]])
    S = x.astype(dtype).reshape(4, -1)
    shift = np.zeros(4, dtype=dtype)
    P_flat = np.empty(S.size, dtype=dtype)
    int_type = np.int32 if dtype == np.float32 else np.int64
    attention_numba._exp_tile(S, shift, P_flat.reshape(S.shape), P_flat.view(int_type),
                              np.empty(S.size, dtype=int_type), attention_numba._exp_constants(dtype))
    P = P_flat.reshape(S.shape)
    exact = np.exp(S.astype(np.float64))
    finite = np.isfinite(S)
    ulp = np.spacing(exact[finite].astype(dtype)).astype(np.float64)
    assert np.max(np.abs(P[finite] - exact[finite]) / ulp) <= ulps
    assert np.all(P[~finite] == 0)


def test_auto_backend_and_unknown_name():
    q, k, v, mask, _ = make_inputs(1, 1, 3, 3, 4, None, np.float32)
    assert dispatch.resolve_backend("auto", q) == "numba"
    assert dispatch.resolve_backend("numpy", q) == "numpy"
    with pytest.raises(ValueError, match=r"backend='flash'.*'auto', 'numpy', 'numba', 'cuda'"):
        attention_forward(q, k, v, backend="flash")


def test_bad_inputs_give_clear_errors():
    q, k, v, mask, dout = make_inputs(2, 3, 5, 7, 4, "pad", np.float32)
    with pytest.raises(ValueError, match=r"k.shape \(2, 3, 7, 8\) does not fit q.shape \(2, 3, 5, 4\)"):
        attention_forward(q, np.zeros((2, 3, 7, 8), np.float32), v)
    with pytest.raises(ValueError, match=r"v.shape \(2, 3, 6, 4\) must equal k.shape \(2, 3, 7, 4\)"):
        attention_forward(q, k, v[:, :, :6])
    with pytest.raises(ValueError, match=r"must be 4-D"):
        attention_forward(q[0], k, v)
    with pytest.raises(ValueError, match=r"mask.shape \(2, 5\) must be \[B, Tk\] = \(2, 7\)"):
        attention_forward(q, k, v, mask=np.ones((2, 5), bool))
    with pytest.raises(TypeError, match=r"mask.dtype is int64; expected bool"):
        attention_forward(q, k, v, mask=np.ones((2, 7), np.int64))
    with pytest.raises(TypeError, match=r"k.dtype is float64 but q.dtype is float32"):
        attention_forward(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match=r"q.dtype is float16; expected float32 or float64"):
        attention_forward(q.astype(np.float16), k, v)
    with pytest.raises(TypeError, match=r"q must be a NumPy or CuPy array, got list"):
        attention_forward(q.tolist(), k, v)
    with pytest.raises(ValueError, match=r"dropout probability p=1.0 must be in \[0, 1\)"):
        attention_forward(q, k, v, dropout_p=1.0, dropout_seed=1)
    with pytest.raises(ValueError, match=r"p=nan"):
        attention_forward(q, k, v, dropout_p=float("nan"), dropout_seed=1)
    with pytest.raises(ValueError, match=r"dropout_p=0.1 needs dropout_seed"):
        attention_forward(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"dropout seed=-3 must be in \[0, 2\*\*64\)"):
        attention_forward(q, k, v, dropout_p=0.1, dropout_seed=-3)
    with pytest.raises(TypeError, match=r"dropout_p must be a float"):
        attention_forward(q, k, v, dropout_p="0.1", dropout_seed=1)
    out, lse = attention_forward(q, k, v, mask=mask)
    with pytest.raises(ValueError, match=r"lse.shape \(2, 3\) must be \[B, H, Tq\] = \(2, 3, 5\)"):
        attention_backward(q, k, v, out, lse[..., 0], dout, mask=mask)
    with pytest.raises(ValueError, match=r"dout.shape \(2, 3, 4, 4\) must equal q.shape \(2, 3, 5, 4\)"):
        attention_backward(q, k, v, out, lse, dout[:, :, :4], mask=mask)
    for name in ("cuda", "cuda_simple"):             # the tiled kernels and their reading twin
        if name in dispatch.available_backends():    # numba.cuda imports (no GPU needed)
            with pytest.raises(TypeError, match=rf"backend='{name}' needs CuPy arrays"):
                attention_forward(q, k, v, backend=name)
        else:
            with pytest.raises(ImportError, match=rf"attention backend '{name}' is unavailable"):
                attention_forward(q, k, v, backend=name)


# ------------------------------------------------------------------------- the whole model ------

@pytest.mark.parametrize("backend", ["numba"])
def test_whole_model_same_results_with_each_cpu_backend(backend):
    """BertForMaskedLM with the fused kernel against the same model on the reference kernel:
    logits, every parameter gradient and one optimizer-free training direction, float32."""
    import tinybert

    config = tinybert.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=160)
    rng = np.random.default_rng(3)
    B, T = 3, 150                                         # T spans two query tiles and three key tiles
    input_ids = rng.integers(1, config.vocab_size, size=(B, T))
    attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask[1, 100:] = 0                           # padded sequences
    attention_mask[2, 9:] = 0
    dlogits = rng.standard_normal((B, T, config.vocab_size)).astype(np.float32)
    results = {}
    for name in ("numpy", backend):
        model = tinybert.BertForMaskedLM(config, seed=0, attention_backend=name)
        model.eval()                                      # no dropout: both runs see the same net
        logits = model.forward(input_ids, attention_mask=attention_mask)
        model.zero_grad()
        model.backward(dlogits)
        results[name] = (logits, {n: p.grad.copy() for n, p in model.named_parameters()})
    ref_logits, ref_grads = results["numpy"]
    logits, grads = results[backend]
    assert logits.dtype == np.float32
    worst = {"logits": worst_difference(logits, ref_logits)}
    for n in ref_grads:
        # relative to the tensor's largest gradient; except the key bias, whose gradient is 0 in
        # exact arithmetic (adding q·b_k to every score of a row leaves the softmax unchanged), so
        # both backends hold only rounding noise there: judge it on the key weight's scale.
        scale_name = n.replace("key.bias", "key.weight")
        scale = np.abs(ref_grads[scale_name]).max()
        worst[n] = float(np.abs(grads[n] - ref_grads[n]).max() / scale)
    print({k: f"{v:.1e}" for k, v in worst.items()})
    assert worst["logits"] <= 2e-6
    assert max(worst.values()) <= 1e-5, max(worst.items(), key=lambda kv: kv[1])


def test_whole_model_backend_switch():
    """set_attention_backend changes the kernel of every layer and leaves the outputs unchanged."""
    import tinybert

    config = tinybert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=20)
    ids = np.random.default_rng(0).integers(1, 50, size=(2, 20))
    mask = np.ones((2, 20), dtype=np.int64)
    mask[0, 13:] = 0
    model = tinybert.BertForMaskedLM(config, seed=0, attention_backend="numpy").eval()
    ref = model.forward(ids, attention_mask=mask)
    out = model.set_attention_backend("numba").forward(ids, attention_mask=mask)
    assert worst_difference(out, ref) <= 1e-5
    with pytest.raises(ValueError, match="not one of"):
        model.set_attention_backend("fast")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_keys_or_no_head_size_is_refused_alike_by_every_backend(backend):
    """Tk = 0 (no key at all) and D = 0 (no head size): before, the NumPy reference failed deep in a
    reduction ("zero-size array to reduction operation maximum") or divided by zero, while Numba
    returned −inf rows: now every backend refuses both, naming the array and the dimension."""
    q = np.ones((1, 1, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"k.shape \(1, 1, 0, 4\) has Tk = 0 keys"):
        attention_forward(q, q[:, :, :0], q[:, :, :0], backend=backend)
    with pytest.raises(ValueError, match=r"q.shape \(1, 1, 3, 0\) has head size D = 0"):
        attention_forward(q[..., :0], q[..., :0], q[..., :0], backend=backend)
    out, lse = attention_forward(q[:, :, :0], q, q, backend=backend)      # Tq = 0 is a valid empty call
    assert out.shape == (1, 1, 0, 4) and lse.shape == (1, 1, 0)


def _expected_tiles(Tq, Tk, keep_row, causal):
    """What the forward should do with each (query block, key block) tile, from the tile geometry:
    [n_q_blocks, n_k_blocks, 2] of (what, scores computed). A block of padding is skipped; under a
    causal mask the loop stops at the first block whose every key is after every query of the block."""
    BQ, BK = attention_numba.BLOCK_Q, attention_numba.BLOCK_K
    nqb, nkb = -(-Tq // BQ), -(-Tk // BK)
    out = np.zeros((nqb, nkb, 2), dtype=np.int64)
    for qb in range(nqb):
        i0, i1 = qb * BQ, min(qb * BQ + BQ, Tq)
        for kb in range(nkb):
            j0, j1 = kb * BK, min(kb * BK + BK, Tk)
            if not keep_row[j0:j1].any():
                out[qb, kb, 0] = attention_numba.TILE_PADDING
                continue
            if causal and j0 > i1 - 1 + (Tk - Tq):
                break
            masked = not keep_row[j0:j1].all() or (causal and j1 - 1 > i0 + (Tk - Tq))
            out[qb, kb] = (attention_numba.TILE_MASKED if masked else attention_numba.TILE_FULL,
                           (i1 - i0) * (j1 - j0))
    return out


@pytest.mark.parametrize("Tq,Tk,causal,mask_kind", [(300, 300, True, None), (300, 300, False, "pad"),
                                                    (130, 330, True, "pad"), (64, 64, False, None)])
def test_forward_tiles_record_what_the_kernel_computed_and_skipped(Tq, Tk, causal, mask_kind):
    q, k, v, mask, _ = make_inputs(3, 2, Tq, Tk, 8, mask_kind, np.float64)
    if mask is not None:
        mask[0, 10:200] = False                      # a run of padding blocks inside the first row
    out, lse = attention_numba.attention_forward(q, k, v, mask, causal)
    out_t, lse_t, tiles = attention_numba.attention_forward_tiles(q, k, v, mask, causal)
    assert np.array_equal(out, out_t) and np.array_equal(lse, lse_t)      # the record changes nothing
    keep = np.ones((3, Tk), bool) if mask is None else mask
    for b in range(3):
        expected = _expected_tiles(Tq, Tk, keep[b], causal)
        for h in range(2):
            assert np.array_equal(tiles[b, h], expected), (b, h)
    # every kept (query, key) pair was inside a tile the kernel computed, and no tile held more
    # than BLOCK_Q · BLOCK_K scores
    i, j = np.arange(Tq)[:, None], np.arange(Tk)[None, :]
    visible = keep[:, None, :] & ((j <= i + Tk - Tq) if causal else True)
    computed = np.isin(tiles[..., 0], [attention_numba.TILE_MASKED, attention_numba.TILE_FULL])
    BQ, BK = attention_numba.BLOCK_Q, attention_numba.BLOCK_K
    in_computed = computed[:, 0][:, i // BQ, j // BK]                     # [B, Tq, Tk]
    assert not (visible & ~in_computed).any()
    assert tiles[..., 1].max() <= BQ * BK
    if causal and Tq == Tk:
        assert (tiles[..., 0] == attention_numba.TILE_NOT_VISITED).sum() > 0
    with pytest.raises(ValueError, match="mask.shape"):
        attention_numba.attention_forward_tiles(q, k, v, np.ones((3, Tk + 1), bool), causal)
