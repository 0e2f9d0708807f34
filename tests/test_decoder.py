"""The decoder: gradient checks of its layers and of BertLMHeadModel (inputs included), the KV cache
against full recomputation, sampling, and the errors of bad input. HF parity: test_parity_decoder_hf.py."""
import numpy as np
import pytest

import tinybert
from tinybert.gradcheck import FixedRandomness, check_gradients, check_layer
from tinybert.models.generation import filter_logits, next_tokens
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.cross_attention import CrossAttention
from tinybert.nn.decoder import DecoderLayer
from tinybert.nn.kv_cache import KVCache
from tests.conftest import padded_batch, tiny_config
from tests.test_gradcheck import LAYER_TOL, MODEL_TOL, STD, assert_all_below, rand, split_exact_zeros

F64 = np.float64


def decoder_config(**kw):
    base = dict(is_decoder=True, add_cross_attention=True, hidden_size=8, num_attention_heads=2,
                intermediate_size=16, vocab_size=30)
    base.update(kw)
    return tiny_config(**base)


# -- gradient checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_cross_attention(dropout, backend):
    """Tq = 5 decoder positions attend to Tk = 6 encoder positions (two of row 1 padding): the
    gradients of x, of the memory (the path into the encoder) and of the four projections."""
    rng = np.random.default_rng(1)
    attn = CrossAttention(8, 2, dropout, rng=rng, dtype=F64, backend=backend, std=STD)
    layer = FixedRandomness(attn, rng)
    keep = np.array([[True] * 6, [True] * 4 + [False] * 2])
    results = check_layer(layer, rand(2, 5, 8), rand(2, 6, 8, seed=1), input_names=["x", "memory"],
                          memory_keep=keep)
    assert set(results) >= {"x", "memory"}
    assert_all_below(split_exact_zeros(results, layer), LAYER_TOL)


@pytest.mark.parametrize("t_new", [1, 3])
def test_causal_self_attention_with_a_cache(t_new):
    """The causal layer on new positions after 4 cached ones (past K, V held fixed): the gradients of x
    and of every projection through the cache path. (The NumPy kernel: the fused ones' causal rule
    with Tq < Tk is proven against it in test_kernels.py, and their cache path in
    test_cache_equals_full_recomputation; each new array layout costs Numba a compilation.)"""
    attn = MultiHeadSelfAttention(8, 2, 0.0, dtype=F64, backend="numpy", std=STD, causal=True)
    past = (rand(2, 2, 4, 4, seed=5), rand(2, 2, 4, 4, seed=6))
    results = check_layer(attn, rand(2, t_new, 8), past=past)
    assert_all_below(results, LAYER_TOL)    # b_K moves the new keys' scores, not the past ones': not 0 here
    assert attn.present[0].shape == (2, 2, 4 + t_new, 4)


def test_causal_self_attention_does_not_see_the_future():
    attn = MultiHeadSelfAttention(8, 2, 0.0, dtype=F64, backend="numpy", std=STD, causal=True)
    x = rand(2, 5, 8)
    y = attn.forward(x)
    x2 = x.copy()
    x2[:, 3:] = rand(2, 2, 8, seed=9)
    y2 = attn.forward(x2)
    # exact on every CPU: the same code on arrays of the same shapes, and a row of a product depends
    # only on its own row (BLAS sums each entry over K in an order set by the shapes, not the values)
    assert np.array_equal(y[:, :3], y2[:, :3]) and not np.allclose(y[:, 3:], y2[:, 3:])


def test_decoder_layer_with_dropout_and_masks():
    config = decoder_config(initializer_range=STD, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1)
    rng = np.random.default_rng(3)
    layer = FixedRandomness(DecoderLayer(config, rng, np.random.default_rng(4), dtype=F64, backend="numpy"), rng)
    keep = np.array([[True] * 4, [True, True, True, False]])
    memory_keep = np.array([[True] * 5, [True, True, False, False, False]])
    results = check_layer(layer, rand(2, 4, 8), rand(2, 5, 8, seed=1), input_names=["x", "memory"],
                          keep=keep, memory_keep=memory_keep, max_checks=20)
    assert_all_below(split_exact_zeros(results, layer), LAYER_TOL)


def _lm_check(model, ids, mask, memory, memory_mask, max_checks):
    """Gradient check of next_token_loss(model(...)) for every parameter and, with cross-attention,
    for encoder_hidden_states (what backward returns)."""
    def run():
        return model.forward(ids, attention_mask=mask, encoder_hidden_states=memory,
                             encoder_attention_mask=memory_mask)

    def forward():
        return np.array(tinybert.next_token_loss(run(), ids)[0])

    def backward(g):
        model.zero_grad()
        _, dlogits = tinybert.next_token_loss(run(), ids)
        dmemory = model.backward(dlogits * float(g))
        grads = {n: p.grad.copy() for n, p in model.named_parameters()}
        grads["encoder_hidden_states"] = dmemory
        return grads

    tensors = {n: p.data for n, p in model.named_parameters()}
    if memory is not None:
        tensors["encoder_hidden_states"] = memory
    results = check_gradients(forward, backward, tensors, {n: (lambda r, n=n: r[n]) for n in tensors},
                              max_checks=max_checks)
    return split_exact_zeros(results, model)


@pytest.mark.parametrize("cross", [True, False])
def test_lm_head_model_end_to_end(cross):
    config = decoder_config(add_cross_attention=cross, num_hidden_layers=2, initializer_range=STD)
    model = tinybert.BertLMHeadModel(config, seed=0, dtype=F64, attention_backend="numpy")
    ids, _, mask = padded_batch(config, b=2, t=6, pad_id=3)
    memory = rand(2, 4, 8, seed=2) if cross else None
    memory_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]]) if cross else None
    results = _lm_check(model, ids, mask, memory, memory_mask, max_checks=10)
    print("\n" + tinybert.gradcheck.format_table(results, "BertLMHeadModel"))
    assert ("encoder_hidden_states" in results) == cross
    assert_all_below(results, MODEL_TOL)


# -- the KV cache ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cache_equals_full_recomputation(backend):
    """Feeding the prompt and then one token at a time through a KVCache gives the logits of one
    forward over the whole sequence; the cross-attention's K, V are computed once and kept."""
    config = decoder_config(num_hidden_layers=2)
    model = tinybert.BertLMHeadModel(config, seed=1, dtype=F64, attention_backend=backend).eval()
    ids = np.random.default_rng(0).integers(1, 30, (2, 9))
    memory = rand(2, 5, 8, seed=3)
    memory_mask = np.array([[1] * 5, [1, 1, 1, 0, 0]])
    full = model.forward(ids, encoder_hidden_states=memory, encoder_attention_mask=memory_mask)
    cache = model.new_cache()
    steps = [model.forward(ids[:, :4], encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
                           cache=cache)]
    cross_kv = cache.cross_kv[0]
    for t in range(4, 9):
        steps.append(model.forward(ids[:, t:t + 1], encoder_hidden_states=memory,
                                   encoder_attention_mask=memory_mask, cache=cache))
    assert cache.length == 9 and cache.self_kv[1][0].shape == (2, 2, 9, 4)
    assert cache.cross_kv[0] is cross_kv                                   # computed once
    err = tinybert.rel_error(np.concatenate(steps, axis=1), full)
    print(f"\ncache vs full recomputation ({backend}): {err:.2e}")
    assert err <= 1e-10


def test_generate_with_and_without_cache_is_token_identical():
    config = decoder_config(num_hidden_layers=2, initializer_range=0.3)
    model = tinybert.BertLMHeadModel(config, seed=2, dtype=F64, attention_backend="numpy")
    ids = np.random.default_rng(1).integers(1, 30, (3, 3))
    memory = rand(3, 4, 8, seed=4)
    for kw in (dict(), dict(do_sample=True, temperature=0.8, top_k=10, top_p=0.9, seed=7)):
        a = model.generate(ids, 12, encoder_hidden_states=memory, use_cache=True, **kw)
        b = model.generate(ids, 12, encoder_hidden_states=memory, use_cache=False, **kw)
        assert a.shape == (3, 15) and np.array_equal(a, b) and np.array_equal(a[:, :3], ids)
    assert model.training                                      # generate restores the mode


def test_sampling_seed_top_k_top_p_and_eos():
    config = decoder_config(add_cross_attention=False, initializer_range=0.3)
    model = tinybert.BertLMHeadModel(config, seed=3)
    ids = np.array([[5, 6], [7, 8]])
    greedy = model.generate(ids, 8)
    s1 = model.generate(ids, 8, do_sample=True, seed=11)
    assert np.array_equal(s1, model.generate(ids, 8, do_sample=True, seed=11))
    assert not np.array_equal(s1, model.generate(ids, 8, do_sample=True, seed=12))
    assert np.array_equal(greedy, model.generate(ids, 8, do_sample=True, top_k=1, seed=1))
    assert np.array_equal(greedy, model.generate(ids, 8, do_sample=True, top_p=1e-9, seed=1))
    eos = int(greedy[0, 3])                                     # the first row's second new token
    out = model.generate(ids, 8, eos_token_id=eos)
    row = list(out[0, 2:])
    assert row[:row.index(eos) + 1] == list(greedy[0, 2:2 + row.index(eos) + 1])
    assert all(t == config.pad_token_id for t in row[row.index(eos) + 1:])


def test_filters_and_sampling_frequencies():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    assert list(np.isfinite(filter_logits(logits, top_p=0.75))[0]) == [True, True, False, False]
    assert list(np.isfinite(filter_logits(logits, top_p=0.85))[0]) == [True, True, True, False]
    n = 20000
    draws = next_tokens(np.repeat(logits, n, axis=0), True, 1.0, None, None, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=4) / n
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).max() < 0.015          # ~4 standard errors
    hot = next_tokens(np.repeat(logits, n, axis=0), True, 0.5, None, None, np.random.default_rng(0))
    p = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    assert np.abs(np.bincount(hot, minlength=4) / n - p / p.sum()).max() < 0.015


# -- checkpoints and bad input ---------------------------------------------------------------------

def test_parameter_shapes_and_round_trip(tmp_path):
    config = decoder_config()
    model = tinybert.BertLMHeadModel(config, seed=4, dtype=F64)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == list(model.parameter_shapes(config))
    model.save_pretrained(tmp_path)
    back = tinybert.BertLMHeadModel.from_pretrained(tmp_path, dtype=F64)
    assert back.config.is_decoder and back.config.add_cross_attention
    for (n, p), (_, q) in zip(model.named_parameters(), back.named_parameters()):
        assert np.array_equal(p.data, q.data), n


def test_bad_input_errors():
    config = decoder_config()
    model = tinybert.BertLMHeadModel(config, seed=0)
    ids = np.array([[1, 2, 3]])
    memory = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="encoder_hidden_states has shape .*8"):
        model.forward(ids, encoder_hidden_states=np.zeros((1, 4, 6), np.float32))
    with pytest.raises(ValueError, match="encoder_hidden_states is required"):
        model.forward(ids)
    with pytest.raises(ValueError, match=r"encoder_attention_mask has shape \(1, 3\)"):
        model.forward(ids, encoder_hidden_states=memory, encoder_attention_mask=np.ones((1, 3)))
    plain = tinybert.BertLMHeadModel(decoder_config(add_cross_attention=False), seed=0)
    with pytest.raises(ValueError, match="encoder_hidden_states was given, but this model has no cross-attention"):
        plain.forward(ids, encoder_hidden_states=memory)
    with pytest.raises(ValueError, match="add_cross_attention=True needs is_decoder=True"):
        tiny_config(add_cross_attention=True)
    with pytest.raises(ValueError, match="BertLMHeadModel needs BertConfig.is_decoder=True"):
        tinybert.BertLMHeadModel(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="max_new_tokens=22.*exceed max_position_embeddings=24"):
        plain.generate(ids, 22)
    for kw, name in ((dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=0), "temperature"),
                     (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"),
                     (dict(eos_token_id=30), "eos_token_id")):
        with pytest.raises(ValueError, match=name):
            plain.generate(ids, 2, do_sample=True, **kw)
    with pytest.raises(ValueError, match="KVCache.* is for a decoder"):
        tinybert.BertModel(tiny_config(), seed=0).forward(ids, cache=KVCache(2))
    cache = plain.new_cache()
    plain.forward(np.ones((1, 20), np.int64), cache=cache)
    with pytest.raises(ValueError, match="KV cache"):
        plain.forward(np.ones((1, 5), np.int64), cache=cache)          # 25 positions > 24


# -- the encoder-decoder ---------------------------------------------------------------------------

def bert2bert(seed=0, dtype=F64, std=STD, **kw):
    enc = tiny_config(hidden_size=8, num_attention_heads=2, intermediate_size=16, vocab_size=30,
                      initializer_range=std, **kw)
    dec = decoder_config(initializer_range=std, **kw)
    return tinybert.EncoderDecoderModel(enc, dec, seed=seed, dtype=dtype, attention_backend="numpy")


def test_encoder_decoder_end_to_end_gradient():
    """One gradient path through both: the decoder's d encoder_hidden_states runs into the encoder."""
    model = bert2bert()
    src, _, src_mask = padded_batch(model.encoder_config, b=2, t=5, pad_id=3)
    tgt = np.random.default_rng(5).integers(1, 30, (2, 4))
    labels = np.random.default_rng(6).integers(1, 30, (2, 4))

    def forward():
        return np.array(tinybert.cross_entropy(model.forward(src, tgt, src_mask), labels)[0])

    def backward(g):
        model.zero_grad()
        _, d = tinybert.cross_entropy(model.forward(src, tgt, src_mask), labels)
        model.backward(d * float(g))
        return {n: p.grad.copy() for n, p in model.named_parameters()}

    tensors = {n: p.data for n, p in model.named_parameters() if "pooler" not in n}
    results = check_gradients(forward, backward, tensors, {n: (lambda r, n=n: r[n]) for n in tensors}, max_checks=6)
    assert_all_below(split_exact_zeros(results, model), MODEL_TOL)
    assert not np.any(model.encoder.pooler.dense.weight.grad)              # HF's pooler is unused too


def test_encoder_decoder_generate_and_round_trip(tmp_path):
    model = bert2bert(seed=1, std=0.3)
    src = np.random.default_rng(0).integers(1, 30, (2, 5))
    a = model.generate(src, 6, decoder_input_ids=np.array([[2], [2]]))
    b = model.generate(src, 6, decoder_input_ids=np.array([[2], [2]]), use_cache=False)
    assert a.shape == (2, 7) and np.array_equal(a, b)
    model.decoder_start_token_id = 2
    model.save_pretrained(tmp_path)
    back = tinybert.EncoderDecoderModel.from_pretrained(tmp_path, dtype=F64, attention_backend="numpy")
    assert back.decoder_start_token_id == 2 and np.array_equal(back.generate(src, 6), a)
    for (n, p), (_, q) in zip(model.named_parameters(), back.named_parameters()):
        assert np.array_equal(p.data, q.data), n
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        tinybert.EncoderDecoderModel(model.encoder_config, tiny_config(is_decoder=True), seed=0)
    with pytest.raises(ValueError, match="hidden_size"):
        tinybert.EncoderDecoderModel(tiny_config(), model.config, seed=0)


# -- the command line: pretrain --objective clm, generate ------------------------------------------

def test_cli_pretrain_clm_and_generate(tmp_path, capsys):
    from tinybert import cli
    out = tmp_path / "clm"
    assert cli.main(["pretrain", "--objective", "clm", "--out", str(out), "--corpus-size", "60", "--vocab-size", "100",
                     "--layers", "1", "--hidden", "16", "--heads", "2", "--max-positions", "24", "--epochs", "1",
                     "--no-progress"]) == 0
    assert "next-token accuracy" in capsys.readouterr().out
    model = tinybert.BertLMHeadModel.from_pretrained(out / "checkpoint")
    assert model.config.is_decoder and not model.config.add_cross_attention
    runs = []
    for _ in range(2):
        assert cli.main(["generate", "--model", str(out / "checkpoint"), "the soup", "--sample", "--num", "2",
                         "--seed", "3", "--max-new-tokens", "5"]) == 0
        runs.append(capsys.readouterr().out.splitlines())
    assert runs[0] == runs[1] and len(runs[0]) == 2 and all(r.startswith("the soup") for r in runs[0])
    assert cli.main(["generate", "--model", str(out / "checkpoint"), "the soup", "--top-p", "1.5"]) == 2
    assert "top_p=1.5" in capsys.readouterr().err


def test_word_order_task_is_learned_beyond_copying():
    """The seq2seq example (tests/_word_order.py), small: a 1-layer bert2bert trained briefly
    restores more words' places than copying the shuffled input does."""
    from tests._word_order import make_batch, run_word_order, word_order_data
    vocab, train, test = word_order_data(200, 40, seed=1)
    train_sentences = {tuple(t) for _, t in train}
    assert not any(tuple(t) in train_sentences for _, t in test)
    assert all(sorted(s) == sorted(t) for s, t in train + test)                 # a shuffle of the same words
    src, src_mask, dec_in, dec_mask, labels = make_batch(train[:3])
    assert (dec_in[:, 0] == 1).all() and np.array_equal(labels[:, :-1][dec_mask[:, 1:] == 1], dec_in[:, 1:][dec_mask[:, 1:] == 1])
    m = run_word_order(steps=150, batch_size=32, lr=3e-3, n_train=1000, n_test=60, seed=0, hidden=32, layers=1)
    print({k: v for k, v in m.items() if k != "losses"})
    assert m["word_accuracy"] > m["copy_word_accuracy"] + 0.3
    assert np.mean(m["losses"][-10:]) < 0.5 * m["losses"][0]


def test_readme_decoder_example_runs():
    """The README's second Python example (the decoder) runs as written, after the first's imports."""
    import pathlib
    import re
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    namespace = {"np": np, "tinybert": tinybert}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert namespace["dmemory"].shape == (1, 6, 64) and namespace["new"].shape == (1, 24)


def test_pretrain_clm_continues_an_mlm_checkpoint(tmp_path):
    """--objective clm --init-from a BertForMaskedLM checkpoint: the same body, now causal."""
    from tinybert.text.tokenizer import BertTokenizer
    from tinybert.text.wordpiece_trainer import train_wordpiece
    from tinybert.training import TrainingConfig, pretrain
    from tinybert.training.corpus import generate_corpus
    (tmp_path / "vocab.txt").write_text("\n".join(train_wordpiece(generate_corpus(50, seed=0), 100)) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    mlm = tinybert.BertForMaskedLM(tiny_config(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id), seed=0)
    mlm.save_pretrained(tmp_path / "mlm", tokenizer=tok)
    cfg = TrainingConfig(epochs=1, batch_size=32, max_length=None, progress=False, log_every=50)
    r = pretrain(tmp_path / "clm", cfg, texts=generate_corpus(40, seed=1), init_from=tmp_path / "mlm",
                 objective="clm", plots=False)
    assert isinstance(r["model"], tinybert.BertLMHeadModel) and r["model"].config.is_decoder
    assert r["metrics"]["predicted_tokens"] > 0
