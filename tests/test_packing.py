"""The packed encoder (nn/packing.py) against its readable twin, the padded path.

In eval mode a batch with padding runs its token-wise layers on the real tokens only. These tests
prove it computes what the padded path computes at every real position — outputs, every layer's
hidden state, every parameter's gradient and the input gradient — and 0 at the padding.
"""
import numpy as np
import pytest

import tinybert
from tinybert.nn.packing import Packing
from tests.conftest import tiny_config


def _mask():
    """Padding at the end, at the start, in the middle, none, and a sentence of one token."""
    return np.array([[1, 1, 1, 1, 1, 1, 0, 0, 0],
                     [0, 0, 1, 1, 1, 1, 1, 1, 1],
                     [1, 1, 0, 0, 1, 1, 1, 0, 1],
                     [1, 1, 1, 1, 1, 1, 1, 1, 1],
                     [1, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.int64)


def test_pack_and_unpack_are_each_others_transpose():
    keep = _mask().astype(bool)
    p = Packing(keep)
    assert p.num_tokens == keep.sum() == 29
    rng = np.random.default_rng(0)
    x = rng.standard_normal((*keep.shape, 4))
    packed = p.pack(x)
    assert packed.shape == (29, 4)
    np.testing.assert_array_equal(packed, x[keep])                  # the real rows, in order
    back = p.unpack(packed)
    np.testing.assert_array_equal(back[keep], x[keep])
    assert np.all(back[~keep] == 0)
    a = rng.standard_normal((29, 4))                                 # <unpack(a), x> = <a, pack(x)>
    assert np.isclose(np.sum(p.unpack(a) * x), np.sum(a * packed), rtol=1e-14)


def test_nothing_to_skip_gives_no_packing():
    assert Packing.of(None) is None
    assert Packing.of(np.ones((2, 3), dtype=bool)) is None
    assert Packing.of(_mask().astype(bool)) is not None


def _run(model, ids, mask, skip_padding, dout):
    """(output [B, T, C], pooled [B, C], hidden states, input gradient, {name: gradient}) of one
    forward + backward. The pooler reads position 0: a row padded at the start (row 1) has padding
    there, so its pooled output is left out of the comparison and of the gradient."""
    model.encoder.skip_padding = skip_padding
    model.zero_grad()
    h, pooled = model.forward(ids, None, mask)
    assert (model.encoder.packing is not None) == skip_padding
    states = [s.copy() for s in model.encoder.hidden_states]
    first_real = mask[:, :1].astype(pooled.dtype)
    dx = model.backward(dout, first_real * np.ones_like(pooled))
    return h.copy(), pooled[mask[:, 0] == 1], states, dx, {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype, backend, tol", [(np.float64, "numpy", 1e-12), (np.float64, "numba", 1e-12),
                                                 (np.float32, "numba", 2e-5)])
def test_packed_encoder_equals_the_padded_path_at_every_real_position(dtype, backend, tol):
    config = tiny_config(max_position_embeddings=16)
    model = tinybert.BertModel(config, seed=1, dtype=dtype, attention_backend=backend).eval()
    mask = _mask()
    keep = mask.astype(bool)
    rng = np.random.default_rng(2)
    ids = rng.integers(1, config.vocab_size, mask.shape)
    dout = (rng.standard_normal((*mask.shape, config.hidden_size)) * keep[..., None]).astype(dtype)

    h1, p1, s1, dx1, g1 = _run(model, ids, mask, True, dout)
    assert model.encoder.packing.num_tokens == keep.sum()
    assert model.encoder.layers[0].attention.x.shape == (1, keep.sum(), config.hidden_size)
    h0, p0, s0, dx0, g0 = _run(model, ids, mask, False, dout)

    assert np.all(h1[~keep] == 0) and np.abs(h0[~keep]).max() > 0.1   # the padded path computes them
    assert tinybert.rel_error(h1[keep], h0[keep]) <= tol
    assert tinybert.rel_error(p1, p0) <= tol
    assert len(s1) == len(s0) == config.num_hidden_layers + 1
    for a, b in zip(s1, s0):
        assert tinybert.rel_error(a[keep], b[keep]) <= tol
    for name in g0:
        assert tinybert.rel_error(g1[name], g0[name]) <= tol, name
    assert tinybert.rel_error(dx1[keep], dx0[keep]) <= tol
    assert np.all(dx1[~keep] == 0)


def test_training_mode_and_an_unpadded_batch_run_the_padded_path():
    config = tiny_config()
    model = tinybert.BertModel(config, seed=1, dtype=np.float64)
    mask = _mask()
    ids = np.ones(mask.shape, dtype=np.int64)
    model.train().forward(ids, None, mask)
    assert model.encoder.packing is None                  # hidden dropout keeps its [B, T, C] masks
    model.eval().forward(ids, None, np.ones_like(mask))
    assert model.encoder.packing is None
    model.forward(ids, None, mask)
    assert model.encoder.packing is not None
