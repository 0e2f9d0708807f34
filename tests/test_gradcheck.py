"""Numerical gradient checks (float64 central differences, random upstream gradient) for every layer,
the loss and whole models. Bounds: <= 1e-7 per layer, <= 1e-6 end to end."""
import math

import numpy as np
import pytest

import tinybert
from tinybert.gradcheck import FixedRandomness, check_gradients, check_layer, numerical_gradient, rel_error
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.dropout import Dropout
from tinybert.nn.embedding import Embedding
from tinybert.nn.encoder import Encoder, EncoderLayer
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.gelu import GELU
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module
from tinybert.nn.pooler import Pooler
from tinybert.nn.positional import PositionalEncoding
from tinybert.nn.softmax import Softmax
from tests.conftest import padded_batch, tiny_config

LAYER_TOL = 1e-7
MODEL_TOL = 1e-6
F64 = np.float64


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# Where the checks run: weights ~N(0, 0.4²), so attention is far from uniform and every gradient is
# of a size a relative error can judge (with BERT's 0.02 the scores are ~0, the softmax's curvature is
# barely exercised and some gradients are ~1e-7, below what finite differences resolve).
STD = 0.4


def assert_all_below(results, tol):
    worst = max(results.values())
    assert worst <= tol, "\n".join(f"{k}: {v:.2e}" for k, v in results.items())


def split_exact_zeros(results, layer):
    """The key bias b_K adds q·b_K to every score of a query row, and softmax ignores a constant
    shift, so dL/db_K = 0 *exactly*: there a relative error only compares rounding noise with
    rounding noise. Check it absolutely instead (analytic ~0), and judge the rest relatively."""
    rest = {}
    for name, err in results.items():
        if name.endswith("key.bias"):
            p = dict(layer.named_parameters())[name]
            scale = max(float(np.abs(q.grad).max()) for q in layer.parameters())
            assert float(np.abs(p.grad).max()) <= 1e-12 * max(scale, 1.0), name
        else:
            rest[name] = err
    return rest


def test_rel_error_and_numerical_gradient_catch_a_wrong_gradient():
    x = rand(5, seed=1)
    n = numerical_gradient(lambda: float(np.sum(x ** 3)), x)
    assert rel_error(3 * x ** 2, n) < 1e-8
    assert rel_error(2 * x ** 2, n) > 1e-2           # a wrong formula is caught


def test_linear():
    assert_all_below(check_layer(Linear(5, 3, dtype=F64), rand(2, 4, 5)), LAYER_TOL)


def test_embedding_parameter_gradient_sums_repeated_ids():
    emb = Embedding(7, 4, dtype=F64)
    ids = np.array([[1, 2, 2], [6, 1, 0]])
    assert_all_below(check_layer(emb, ids), LAYER_TOL)


def test_embedding_padding_row_gets_no_gradient():
    emb = Embedding(7, 4, dtype=F64, padding_idx=0)
    ids = np.array([[0, 1, 0]])
    emb.forward(ids)
    emb.backward(np.ones((1, 3, 4)))
    assert np.all(emb.weight.grad[0] == 0) and np.all(emb.weight.grad[1] == 1)


def test_positional_encoding_passes_gradient_and_matches_formula():
    pe = PositionalEncoding(10, 6)
    assert_all_below(check_layer(pe, rand(2, 5, 6)), LAYER_TOL)
    i, k = 3, 1
    assert np.isclose(pe.table[i, 2 * k], np.sin(i / 10000 ** (2 * k / 6)))
    assert np.isclose(pe.table[i, 2 * k + 1], np.cos(i / 10000 ** (2 * k / 6)))


def test_layernorm():
    ln = LayerNorm(6, eps=1e-12, dtype=F64)
    ln.weight.data[:] = rand(6, seed=2)
    ln.bias.data[:] = rand(6, seed=3)
    assert_all_below(check_layer(ln, rand(3, 4, 6, seed=1)), LAYER_TOL)


class ResidualNorm(Module):
    """LayerNorm(x + r) as BERT's blocks use it; the gradient of x and of r is the same array."""

    def __init__(self, ln):
        self.ln = ln

    def forward(self, x, r):
        return self.ln.forward(x, r)

    def backward(self, dout):
        d = self.ln.backward(dout)
        return d, d


def test_layernorm_with_the_residual_folded_in():
    ln = LayerNorm(6, eps=1e-12, dtype=F64)
    ln.weight.data[:] = rand(6, seed=2)
    ln.bias.data[:] = rand(6, seed=3)
    results = check_layer(ResidualNorm(ln), rand(3, 4, 6, seed=1), rand(3, 4, 6, seed=5), input_names=["x", "r"])
    assert_all_below(results, LAYER_TOL)


def test_layernorm_uses_biased_variance():
    x = rand(2, 8)
    y = LayerNorm(8, eps=0.0, dtype=F64).forward(x)
    assert np.allclose(y.std(axis=-1), 1.0) and np.allclose(y.mean(axis=-1), 0.0)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    assert_all_below(check_layer(GELU(approximate), rand(3, 7, scale=2.0)), LAYER_TOL)


def test_gelu_erf_values():
    x = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    expected = [v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x]   # the definition, in Python
    assert np.allclose(GELU().forward(x), expected, rtol=1e-15, atol=0)


def test_softmax_with_mask():
    mask = np.array([True, True, False, True, False])
    assert_all_below(check_layer(Softmax(), rand(2, 3, 5), mask=mask), LAYER_TOL)


def test_softmax_all_masked_row_is_zero_not_nan():
    p = Softmax().forward(rand(2, 4), mask=np.zeros(4, bool))
    assert np.all(p == 0)


def test_dropout_fixed_mask():
    rng = np.random.default_rng(0)
    layer = FixedRandomness(Dropout(0.3, rng), rng)
    assert_all_below(check_layer(layer, rand(4, 6)), LAYER_TOL)
    y = layer.forward(np.ones((1000,)))
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}


def test_dropout_is_identity_in_eval():
    d = Dropout(0.5).eval()
    x = rand(3, 3)
    assert d.forward(x) is x and d.backward(x) is x


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_multi_head_self_attention(dropout, backend):
    """With dropout, the layer draws its mask's seed from ``rng``; FixedRandomness rewinds it, so
    every forward of the check uses the same mask (the fused kernel regenerates it in backward)."""
    rng = np.random.default_rng(1)
    attn = MultiHeadSelfAttention(8, 2, dropout, rng=rng, dtype=F64, backend=backend, std=STD)
    keep = np.array([[True] * 5, [True, True, True, False, False]])
    layer = FixedRandomness(attn, rng)
    results = check_layer(layer, rand(2, 5, 8), keep=keep)
    assert_all_below(split_exact_zeros(results, layer), LAYER_TOL)


def test_attention_all_masked_row_no_nan():
    attn = MultiHeadSelfAttention(8, 2, 0.0, dtype=F64, backend="numpy")
    keep = np.array([[False] * 4, [True, False, False, False]])
    y = attn.forward(rand(2, 4, 8), keep)
    dx = attn.backward(rand(2, 4, 8, seed=1))
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert np.isfinite(attn.query.weight.grad).all()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_attention_with_dropout_is_the_formula_written_out(backend):
    """The layer with attention dropout (inside the kernel) against the formula written out step by
    step with the readable layers: Softmax, the mask M of ``philox.attention_keep`` for the seed the
    layer drew, P̃ = P ∘ M/(1−p), Z = P̃ V, and their backward by hand.

    Metric: the largest difference relative to the tensor's largest entry, max|a − b| / max|b|.
    The two compute the same sums in different orders (the kernel recomputes P from the log-sum-exp,
    normalises after P V, forms dS from D = rowsum(dZ ∘ Z)), so they differ by rounding, and the
    rounding error of a sum of products is bounded by ε·Σ|terms|, which is of the order of the
    tensor's scale, not of an entry that happens to cancel to near zero (an elementwise relative
    error divides that rounding by a tiny entry and measures nothing). A wrong mask bit, scale or
    formula moves entries by a good fraction of the tensor's scale."""
    from tinybert_kernels import philox

    x, keep = rand(2, 5, 8), np.array([[True] * 5, [True, True, False, False, False]])
    p = 0.3
    attn = MultiHeadSelfAttention(8, 2, p, rng=np.random.default_rng(7), dtype=F64, backend=backend, std=STD)
    y = attn.forward(x, keep)
    g = rand(2, 5, 8, seed=2)
    dx = attn.backward(g)
    assert attn.dropout_draw[0] == p

    # the formula, written out with the same weights and the seed the layer drew
    ref = MultiHeadSelfAttention(8, 2, 0.0, dtype=F64, backend="numpy", std=STD)
    for name, param in ref.named_parameters():
        param.data[...] = dict(attn.named_parameters())[name].data
    q, k, v = (ref._split(lin.forward(x)) for lin in (ref.query, ref.key, ref.value))
    softmax = Softmax()
    prob = softmax.forward(q @ np.swapaxes(k, -1, -2) / math.sqrt(4), keep[:, None, None, :])
    m = philox.attention_keep(attn.dropout_draw[1], p, 2, 2, 5, 5) / (1 - p)        # M / (1 − p)
    y_ref = ref.out.forward(ref._merge((prob * m) @ v))
    dz = ref._split(ref.out.backward(g))
    dv = np.swapaxes(prob * m, -1, -2) @ dz                                          # dV = P̃ᵀ dZ
    ds = softmax.backward((dz @ np.swapaxes(v, -1, -2)) * m) / math.sqrt(4)          # dS
    dx_ref = (ref.query.backward(ref._merge(ds @ k)) + ref.key.backward(ref._merge(np.swapaxes(ds, -1, -2) @ q))
              + ref.value.backward(ref._merge(dv)))

    def scaled_error(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    assert 0 < (m == 0).sum() < m.size                    # the mask dropped some weights, not all
    assert scaled_error(y, y_ref) < 1e-12
    assert scaled_error(dx, dx_ref) < 1e-12
    ref_grads = {name: param.grad for name, param in ref.named_parameters()}
    for name, param in attn.named_parameters():
        # dL/db_K is 0 in exact arithmetic (softmax ignores a shift of its row), so both sides hold
        # only rounding there: judge it on the scale of the key weight's gradient, as elsewhere
        scale = np.abs(ref_grads[name.replace("key.bias", "key.weight")]).max()
        assert np.abs(param.grad - ref_grads[name]).max() / scale < 1e-12, name
    y_eval = attn.eval().forward(x, keep)                 # eval: no dropout, the same function as p = 0
    assert scaled_error(y_eval, ref.eval().forward(x, keep)) < 1e-12


def test_feedforward():
    assert_all_below(check_layer(FeedForward(6, 12, "gelu", dtype=F64, std=STD), rand(2, 3, 6)), LAYER_TOL)


def test_encoder_layer_with_dropout_and_mask():
    config = tiny_config(hidden_size=8, num_attention_heads=2, intermediate_size=16, initializer_range=STD,
                         hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1)
    rng = np.random.default_rng(3)
    layer = FixedRandomness(EncoderLayer(config, rng, np.random.default_rng(4), dtype=F64, backend="numpy"), rng)
    keep = np.array([[True] * 4, [True, True, True, False]])
    results = check_layer(layer, rand(2, 4, 8), keep=keep, max_checks=20)
    assert_all_below(split_exact_zeros(results, layer), LAYER_TOL)


def test_encoder_stack():
    config = tiny_config(hidden_size=8, num_attention_heads=2, intermediate_size=16, num_hidden_layers=2,
                         initializer_range=STD)
    enc = Encoder(config, np.random.default_rng(0), np.random.default_rng(1), dtype=F64, backend="numpy")
    assert_all_below(split_exact_zeros(check_layer(enc, rand(2, 3, 8), max_checks=15), enc), LAYER_TOL)


def test_pooler():
    assert_all_below(check_layer(Pooler(6, dtype=F64, std=STD), rand(2, 4, 6)), LAYER_TOL)


def test_bert_embeddings_parameters():
    config = tiny_config(hidden_size=8, hidden_dropout_prob=0.1, initializer_range=STD)
    rng = np.random.default_rng(0)
    emb = FixedRandomness(BertEmbeddings(config, rng, np.random.default_rng(1), dtype=F64), rng)
    # the pad row gets no gradient by PyTorch's padding_idx convention (tested above), so keep the
    # pad id out of the lookups here
    ids, types, _ = padded_batch(config, b=2, t=5, pad_id=3)
    assert_all_below(check_layer(emb, ids, types, max_checks=30, input_names=["ids", "types"]), LAYER_TOL)


def test_cross_entropy_gradient_and_ignore_index():
    logits = rand(3, 4, 6)
    labels = np.array([[1, -100, 5, 0], [2, 2, -100, 3], [-100, -100, -100, 4]])
    loss, d = tinybert.cross_entropy(logits, labels)
    n = numerical_gradient(lambda: tinybert.cross_entropy(logits, labels)[0], logits)
    assert rel_error(d, n) <= LAYER_TOL
    assert np.all(d[labels == -100] == 0)
    # against the definition, row by row
    rows = [(b, t) for b in range(3) for t in range(4) if labels[b, t] != -100]
    ref = np.mean([np.log(np.exp(logits[b, t]).sum()) - logits[b, t, labels[b, t]] for b, t in rows])
    assert abs(loss - ref) < 1e-12


def test_cross_entropy_is_stable_for_huge_logits():
    loss, d = tinybert.cross_entropy(np.array([[1000.0, 0.0, -1000.0]]), np.array([0]))
    assert loss == 0.0 and np.isfinite(d).all()


def _model_check(model, ids, types, mask, labels, max_checks):
    def forward():
        logits = model.forward(ids, types, mask)
        return np.array(tinybert.cross_entropy(logits, labels)[0])

    def backward(g):
        model.zero_grad()
        _, dlogits = tinybert.cross_entropy(model.forward(ids, types, mask), labels)
        model.backward(dlogits * float(g))
        return {n: p.grad.copy() for n, p in model.named_parameters()}

    tensors = {n: p.data for n, p in model.named_parameters()}
    results = check_gradients(forward, backward, tensors, {n: (lambda r, n=n: r[n]) for n in tensors},
                              max_checks=max_checks)
    return split_exact_zeros(results, model)


def test_masked_lm_end_to_end_including_tied_decoder():
    config = tiny_config(vocab_size=30, hidden_size=8, num_attention_heads=2, intermediate_size=16,
                         num_hidden_layers=2, initializer_range=STD)
    model = tinybert.BertForMaskedLM(config, seed=0, dtype=F64, attention_backend="numpy")
    assert model.cls.decoder_weight is model.bert.embeddings.word_embeddings.weight
    ids, types, mask = padded_batch(config, b=2, t=6, pad_id=3)
    labels = np.where(np.random.default_rng(0).random(ids.shape) < 0.5, ids, -100)
    labels[:, 0] = ids[:, 0]
    results = _model_check(model, ids, types, mask, labels, max_checks=12)
    print("\n" + tinybert.gradcheck.format_table(results, "BertForMaskedLM"))
    assert_all_below(results, MODEL_TOL)


def test_sequence_classification_end_to_end():
    config = tiny_config(vocab_size=30, hidden_size=8, num_attention_heads=2, intermediate_size=16,
                         num_hidden_layers=2, num_labels=3, initializer_range=STD)
    model = tinybert.BertForSequenceClassification(config, seed=0, dtype=F64, attention_backend="numpy")
    ids, types, mask = padded_batch(config, b=3, t=6, pad_id=3)
    results = _model_check(model, ids, types, mask, np.array([0, 2, 1]), max_checks=12)
    assert_all_below(results, MODEL_TOL)


def test_frozen_encoder_gets_no_gradient():
    config = tiny_config()
    model = tinybert.BertForSequenceClassification(config, seed=0)
    model.bert.requires_grad_(False)
    ids, types, mask = padded_batch(config)
    _, d = tinybert.cross_entropy(model.forward(ids, types, mask), np.array([0, 1, 1]))
    model.backward(d)
    assert all(np.all(p.grad == 0) for p in model.bert.parameters())
    assert np.any(model.classifier.weight.grad != 0)


def test_float32_forward_backward_keep_dtype():
    config = tiny_config()
    model = tinybert.BertForMaskedLM(config, seed=0)
    ids, types, mask = padded_batch(config)
    logits = model.forward(ids, types, mask)
    assert logits.dtype == np.float32
    _, d = tinybert.cross_entropy(logits, ids)
    model.backward(d)
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_named_parameters_train_eval_and_seed():
    config = tiny_config(hidden_dropout_prob=0.1)
    a = tinybert.BertForMaskedLM(config, seed=7)
    b = tinybert.BertForMaskedLM(config, seed=7)
    names = [n for n, _ in a.named_parameters()]
    assert len(names) == len(set(names))
    assert "bert.encoder.layers.1.attention.query.weight" in names
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))
    a.eval()
    assert not any(m.training for m in a.modules())
    a.train()
    assert all(m.training for m in a.modules())
