"""Explanations (tinybert.pipelines.explain): the gradient with respect to the word vectors checked by
finite differences in float64, integrated gradients' completeness measured, attention rollout against
its formula, the inputs_embeds path equal to the ids path, and the refusals."""
import numpy as np
import pytest

import tinybert
from tinybert.errors import InvalidType, InvalidValue
from tinybert.gradcheck import numerical_gradient, rel_error
from tinybert.models.attention_maps import attention_maps
from tinybert.pipelines.explain import (attention_rollout, explain, format_explanation, integrated_gradients,
                                        plot_explanation, score_and_gradient)
from tinybert.text.tokenizer import BertTokenizer, write_vocab

from conftest import tiny_config

WORDS = ["good", "bad", "not", "the", "film", "was", "very", "plot", "acting", "but"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    write_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS, str(folder / "vocab.txt"))
    return BertTokenizer(str(folder / "vocab.txt"))


def _weights_spread(model, std, seed):
    """Weights ~N(0, std²) so that attention and the heads are far from uniform (as the gradient checks do)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.data[...] = rng.normal(0, std, p.data.shape)


def _classifier(dtype=np.float64, std=0.4):
    cfg = tiny_config(vocab_size=15, num_labels=2, id2label={0: "negative", 1: "positive"},
                      label2id={"negative": 0, "positive": 1})
    m = tinybert.BertForSequenceClassification(cfg, seed=1, dtype=dtype, attention_backend="numpy")
    _weights_spread(m, std, 2)
    return m


def _masked_lm(dtype=np.float64):
    m = tinybert.BertForMaskedLM(tiny_config(vocab_size=15), seed=1, dtype=dtype, attention_backend="numpy")
    _weights_spread(m, 0.4, 3)
    return m


@pytest.mark.parametrize("kind,output", [("classifier", "probability"), ("classifier", "logit"),
                                         ("fill-mask", "probability")])
def test_gradient_wrt_word_vectors_matches_finite_differences(kind, output):
    model = _classifier() if kind == "classifier" else _masked_lm()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.5, (1, 6, 16))                                   # [B, T, H] float64
    tt = np.array([[0, 0, 0, 1, 1, 1]])
    target, position = (1, 0) if kind == "classifier" else (7, 3)
    f, grad = score_and_gradient(model, x, tt, target, position, output)
    numeric = numerical_gradient(lambda: score_and_gradient(model, x, tt, target, position, output)[0][0], x)
    err = rel_error(grad, numeric)
    print(f"{kind} {output}: |f| {abs(f[0]):.3g}, relative error of df/dx {err:.2e}")
    assert err < 1e-7
    assert np.abs(grad).max() > 1e-4                                      # a real gradient, not zeros
    assert all(np.all(p.grad == 0) for p in model.parameters())           # parameter gradients left at zero


def test_a_frozen_encoder_still_gives_the_word_gradient():
    model = _classifier()
    x, tt = np.random.default_rng(0).normal(0, 0.5, (1, 5, 16)), np.zeros((1, 5), int)
    f, grad = score_and_gradient(model, x, tt, 1, 0)
    model.freeze_encoder()
    f2, grad2 = score_and_gradient(model, x, tt, 1, 0)
    np.testing.assert_array_equal(grad, grad2)       # exact on any CPU: the same code on the same values
    assert model.encoder_frozen


def test_inputs_embeds_is_the_ids_path():
    model = _classifier()
    ids = np.array([[2, 5, 7, 9, 3]])
    words = model.bert.embeddings.word_embeddings.weight.data[ids]
    with model.evaluating():
        a = model.forward(ids)
        b = model.forward(inputs_embeds=words)
    np.testing.assert_array_equal(a, b)              # exact on any CPU: the lookup copies the same rows
    with pytest.raises(InvalidValue, match="both given"):
        model.forward(ids, inputs_embeds=words)
    with pytest.raises(InvalidValue, match="hidden_size=16"):
        model.forward(inputs_embeds=np.zeros((1, 5, 8)))
    with pytest.raises(InvalidType, match="float"):
        model.forward(inputs_embeds=np.zeros((1, 5, 16), dtype=np.int64))


def test_backward_returns_the_word_vector_gradient_for_ids_too():
    """Fed ids, the model's backward returns the gradient that the word table's rows receive."""
    model = _classifier()
    ids = np.array([[2, 5, 7, 9, 3]])
    model.eval()
    model.forward(ids)
    model.zero_grad()
    d = model.backward(np.array([[0.3, -0.7]]))
    table_grad = model.bert.embeddings.word_embeddings.weight.grad
    np.testing.assert_allclose(table_grad[[2, 5, 7, 9, 3]], d[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_integrated_gradients_are_complete(tok, output):
    """Σ_t IG_t = f(x) − f(x'): measured with 50 equal steps (the textbook rule, tolerance 0), where
    the error falls as steps grow, and with the default refinement."""
    model = _classifier(dtype=np.float32, std=0.3)
    text = "the film was not good but the acting was very good"
    errors = {n: explain(model, tok, text, steps=n, output=output, tolerance=0).completeness_error for n in (5, 50)}
    e = explain(model, tok, text, output=output)
    print(f"{output}: completeness error with equal steps {errors}, refined {e.completeness_error:.2e} "
          f"at {e.steps} steps; f(x) {e.score:.4f} f(x') {e.baseline_score:.4f}")
    assert abs(e.score - e.baseline_score) > 0.05                # a difference to account for
    assert errors[50] < 0.01
    assert errors[50] < errors[5]
    assert e.completeness_error < 0.01
    # special tokens keep their vectors in the baseline, so their share is exactly zero
    assert e.integrated_gradients[0] == 0 and e.integrated_gradients[-1] == 0


def test_refinement_reaches_the_integral_where_equal_steps_fail(tok):
    """A model that switches class abruptly along the path (weights ~N(0, 0.5²)): 8 equal steps miss
    the switch; refining the worst intervals reaches 1% with far fewer points than equal steps need,
    and gives the attributions of 2000 equal steps."""
    model = _classifier(dtype=np.float64, std=0.5)
    text = "the film was not good but the acting was very good"
    coarse = explain(model, tok, text, steps=8, tolerance=0)
    refined = explain(model, tok, text, steps=8, tolerance=0.01)
    fine = explain(model, tok, text, steps=2000, tolerance=0, batch_size=500)
    delta = fine.score - fine.baseline_score
    gap = np.abs(refined.integrated_gradients - fine.integrated_gradients).max() / abs(delta)
    print(f"8 equal steps: {coarse.completeness_error:.2%}; refined: {refined.completeness_error:.3%} at "
          f"{refined.steps} steps; 2000 equal steps: {fine.completeness_error:.4%}; largest token difference "
          f"refined vs 2000 steps: {gap:.3%} of f(x) - f(x')")
    assert coarse.completeness_error > 0.05
    assert refined.completeness_error < 0.01 and refined.steps < 400
    assert gap < 0.01


def test_integrated_gradients_quadrature_and_chunking():
    """One step is the trapezoid ½(g(x') + g(x))·(x − x'); splitting the points into batches changes nothing."""
    model = _classifier()
    rng = np.random.default_rng(1)
    x, base = rng.normal(0, 0.5, (4, 16)), rng.normal(0, 0.1, (4, 16))
    tt = np.zeros(4, int)
    a1, g1, f1, b1, n1 = integrated_gradients(model, x, base, tt, 1, 0, steps=1)
    fb, gb = score_and_gradient(model, base[None], tt[None], 1, 0)
    fx, gx = score_and_gradient(model, x[None], tt[None], 1, 0)
    np.testing.assert_allclose(a1, ((x - base) * 0.5 * (gb[0] + gx[0])).sum(-1), rtol=1e-12)
    np.testing.assert_allclose([f1, b1], [fx[0], fb[0]], rtol=1e-12)      # batch of 2 vs 1: BLAS may round apart
    np.testing.assert_allclose(g1, gx[0], rtol=1e-10, atol=1e-14)
    a, g, f, b, n = integrated_gradients(model, x, base, tt, 1, 0, steps=12, batch_size=16)
    a5, g5, f5, b5, n5 = integrated_gradients(model, x, base, tt, 1, 0, steps=12, batch_size=5)
    assert n1 == 1 and n == n5 == 12                                 # tolerance 0: the equal steps only
    np.testing.assert_allclose(a5, a, rtol=1e-10)
    np.testing.assert_allclose(g5, g, rtol=1e-10, atol=1e-14)


def test_attention_rollout_is_the_formula():
    rng = np.random.default_rng(0)
    p = rng.random((3, 2, 5, 5))
    p /= p.sum(-1, keepdims=True)
    r = attention_rollout(p)
    expect = np.eye(5)
    for layer in p:
        expect = (0.5 * layer.mean(0) + 0.5 * np.eye(5)) @ expect
    np.testing.assert_allclose(r, expect, rtol=1e-12)
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-12)
    # with every head attending to itself only, nothing mixes
    np.testing.assert_allclose(attention_rollout(np.broadcast_to(np.eye(5), (2, 3, 5, 5))), np.eye(5))
    with pytest.raises(InvalidValue, match="layers, heads, T, T"):
        attention_rollout(np.zeros((2, 5, 5)))


def test_explain_classifier_and_fill_mask_outputs(tok, tmp_path):
    model = _classifier(dtype=np.float32, std=0.15)
    e = explain(model, tok, "the plot was good", steps=8)
    assert e.mode == "classifier" and e.target in ("negative", "positive")
    assert e.tokens == ["[CLS]", "the", "plot", "was", "good", "[SEP]"]
    rollout = attention_rollout(attention_maps(model, tok("the plot was good")["input_ids"]))[0]
    np.testing.assert_allclose(e.attention_rollout, rollout)
    assert abs(e.attention_rollout.sum() - 1) < 1e-9
    other = explain(model, tok, "the plot was good", steps=8, target=1 - e.target_index)
    assert other.target != e.target                                # explaining the other label
    d = e.to_dict()
    assert set(d) >= {"tokens", "integrated_gradients", "gradient_x_input", "attention_rollout", "completeness_error"}
    plain = format_explanation(e, color=False)
    assert "\x1b[" not in plain and "good[" in plain
    assert "\x1b[48;2;" in format_explanation(e, color=True)
    path = plot_explanation(e, str(tmp_path / "e.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    mlm = _masked_lm(dtype=np.float32)
    f = explain(mlm, tok, "the film was [MASK]", steps=8)
    assert f.mode == "fill-mask" and f.position == 4 and f.tokens[4] == "[MASK]"
    assert f.integrated_gradients[4] == 0                           # [MASK] is kept in the baseline
    g = explain(mlm, tok, "the film was [MASK]", steps=8, target="good")
    assert g.target == "good" and g.target_index == tok.vocab["good"]
    with pytest.raises(InvalidValue, match="not a token of the vocabulary"):
        explain(mlm, tok, "the film was [MASK]", target="excellent")
    with pytest.raises(InvalidValue, match=r"\[MASK\]"):
        explain(mlm, tok, "the film was good")


def test_explain_truncates_long_text_and_says_so(tok, caplog):
    model = _classifier(dtype=np.float32)                          # 24 positions
    e = explain(model, tok, " ".join(["good"] * 40), steps=2)
    assert len(e.tokens) == 24 and e.n_tokens_full == 42 and e.truncated
    assert "only the first 24" in e.notes[0] and "only the first 24" in caplog.text


@pytest.mark.parametrize("kwargs,match", [({"steps": 0}, "steps=0"), ({"steps": -3}, "steps=-3"),
                                          ({"steps": 2.5}, "steps=2.5"), ({"baseline": "mean"}, "baseline"),
                                          ({"tolerance": 1.5}, "tolerance"), ({"max_steps": 0}, "max_steps"),
                                          ({"output": "loss"}, "output"), ({"target": "neutral"}, "neutral"),
                                          ({"max_length": 1}, "max_length")])
def test_explain_refuses_bad_arguments(tok, kwargs, match):
    with pytest.raises(InvalidValue, match=match):
        explain(_classifier(), tok, "the plot was good", **kwargs)


def test_explain_refuses_a_model_without_a_head(tok):
    with pytest.raises(InvalidType, match="BertForSequenceClassification"):
        explain(tinybert.BertModel(tiny_config(vocab_size=15)), tok, "good")


# --------------------------------------------------------------------------------------------------
# the command line: tinybert explain, and fill-mask's refusal of a checkpoint without an MLM head
# --------------------------------------------------------------------------------------------------

def _cli(argv, capsys):
    from tinybert.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def checkpoints(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    _classifier(dtype=np.float32, std=0.3).save_pretrained(str(root / "classifier"), tokenizer=tok)
    _masked_lm(dtype=np.float32).save_pretrained(str(root / "mlm"), tokenizer=tok)
    tinybert.BertModel(tiny_config(vocab_size=15)).save_pretrained(str(root / "encoder"), tokenizer=tok)
    return root


def test_cli_explain_classifier_text_json_png(checkpoints, tmp_path, capsys):
    import json
    rc, out, err = _cli(["explain", "--model", checkpoints / "classifier", "--steps", 20,
                         "the film was not good", "the acting was bad", "--png", tmp_path / "e.png"], capsys)
    assert rc == 0, err
    assert out.count("completeness error") == 2 and "\x1b[" not in out     # not a terminal: no colour
    assert "good[" in out and "integ.grad" in out
    assert (tmp_path / "e-1.png").is_file() and (tmp_path / "e-2.png").is_file()
    rc, out, err = _cli(["explain", "--model", checkpoints / "classifier", "the plot was good", "--json",
                         "--target", "negative", "--color", "always"], capsys)
    assert rc == 0, err
    [d] = json.loads(out)
    assert d["target"] == "negative" and d["mode"] == "classifier" and d["steps"] >= 50
    assert d["completeness_error"] < 0.01
    assert len(d["tokens"]) == len(d["integrated_gradients"]) == len(d["attention_rollout"])
    rc, out, err = _cli(["explain", "--model", checkpoints / "classifier", " ".join(["good"] * 30)], capsys)
    assert rc == 0 and "only the first 24 were read" in out, err


def test_cli_explain_fill_mask_mode_and_refusals(checkpoints, capsys):
    rc, out, err = _cli(["explain", "--model", checkpoints / "mlm", "--steps", 10, "the film was [MASK]"], capsys)
    assert rc == 0 and out.startswith("[MASK] at token 4 ->"), err
    rc, out, err = _cli(["explain", "--model", checkpoints / "mlm", "the film was good"], capsys)
    assert rc == 2 and "no classifier head" in err and "[MASK]" in err
    rc, out, err = _cli(["explain", "--model", checkpoints / "encoder", "the film was [MASK]"], capsys)
    assert rc == 2 and "neither a classifier head nor a masked-language-model head" in err
    with pytest.raises(SystemExit):
        _cli(["explain", "--model", checkpoints / "classifier", "--steps", 0, "good"], capsys)
    assert "argument --steps: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_cli_fill_mask_needs_an_mlm_head(checkpoints, capsys):
    rc, out, err = _cli(["fill-mask", "the film was [MASK]", "--model", checkpoints / "encoder"], capsys)
    assert rc == 2 and "no masked-language-model head" in err and "tinybert pretrain" in err and "--fresh-head" in err
    rc, out, err = _cli(["fill-mask", "the film was [MASK]", "--model", checkpoints / "classifier"], capsys)
    assert rc == 2 and "BertForSequenceClassification" in err
    rc, out, err = _cli(["fill-mask", "the film was [MASK]", "--model", checkpoints / "encoder", "--fresh-head"], capsys)
    assert rc == 0 and out.startswith("[MASK] at token 4:"), err
    rc, out, err = _cli(["fill-mask", "the film was [MASK]", "--model", checkpoints / "mlm"], capsys)
    assert rc == 0 and out.startswith("[MASK] at token 4:"), err
