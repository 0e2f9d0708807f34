"""Pretraining / fine-tuning: corpus, masking statistics, metrics against hand-computed values,
bit-exact resume in float64, NaN handling, the CLI verbs on tiny settings, bad inputs, demo quick mode."""
import json
import os
import signal

import numpy as np
import pytest

import tinybert
from tinybert.training import corpus
from tinybert.training.masking import IGNORE_INDEX, mask_tokens, word_ids_from_tokens
from tinybert.training.baselines import BagOfWordsLogisticRegression, unigram_baseline
from tinybert.training.metrics import accuracy, classification_metrics, confusion_matrix, precision_recall_f1
from tinybert.text.tokenizer import BertTokenizer, write_vocab
from tinybert.training import ClassificationTask, MLMTask, Trainer, TrainingConfig, TrainingDiverged
from tinybert.training.checkpoints import checkpoint_dir
from tinybert.text.wordpiece_trainer import train_wordpiece

# ------------------------------------------------------------------------------------------------
# corpus and task
# ------------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_excludes():
    a, b = corpus.generate_corpus(300, seed=0), corpus.generate_corpus(300, seed=0)
    assert a == b
    assert a != corpus.generate_corpus(300, seed=1)
    banned = set(a[:50])
    assert not banned & set(corpus.generate_corpus(300, seed=0, exclude=banned))


def test_task_minimal_pairs_have_same_words_and_opposite_labels():
    task = corpus.generate_sentiment_task(40, 10, 10, seed=0)
    keys = {}
    for split, (texts, labels) in task.items():
        assert len(texts) == len(labels) == 2 * {"train": 40, "validation": 10, "test": 10}[split]
        for i in range(0, len(texts), 2):
            assert sorted(texts[i].split()) == sorted(texts[i + 1].split())
            assert texts[i] != texts[i + 1]
            assert {labels[i], labels[i + 1]} == {"positive", "negative"}
        keys[split] = {tuple(sorted(t.split())) for t in texts}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]


def test_bag_of_words_is_exactly_chance_on_pairs_but_learns_a_word_rule():
    task = corpus.generate_sentiment_task(100, 10, 30, seed=0)
    y = lambda labels: np.array([corpus.LABELS.index(l) for l in labels])  # noqa: E731
    bow = BagOfWordsLogisticRegression().fit(task["train"][0], y(task["train"][1]))
    assert accuracy(y(task["test"][1]), bow.predict(task["test"][0])) == 0.5
    # the same model separates labels that *are* in the bag of words
    texts = task["train"][0]
    y_word = np.array([int(t.split()[3] in corpus.POSITIVE) for t in texts])
    bow2 = BagOfWordsLogisticRegression(steps=400).fit(texts, y_word)
    assert accuracy(y_word, bow2.predict(texts)) > 0.8


# ------------------------------------------------------------------------------------------------
# masking
# ------------------------------------------------------------------------------------------------

SPECIAL = [0, 1, 2, 3, 4]       # [PAD] [UNK] [CLS] [SEP] [MASK]


def _batch(rng, b=400, t=40, v=1000):
    ids = rng.integers(5, v, (b, t))
    lengths = rng.integers(5, t + 1, b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 2
    ids[np.arange(b), lengths - 1] = 3
    ids[mask == 0] = 0
    return ids, mask


def test_masking_statistics_80_10_10():
    rng = np.random.default_rng(0)
    ids, mask = _batch(rng)
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), 4, 1000, SPECIAL, attention_mask=mask)
    eligible = (mask == 1) & (ids > 4)
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~eligible).any(), "a special token or padding was chosen"
    assert (labels[chosen] == ids[chosen]).all()
    assert (inputs[~chosen] == ids[~chosen]).all()
    n = eligible.sum()
    p = chosen.sum() / n
    assert abs(p - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    c = chosen.sum()
    frac_mask = (inputs[chosen] == 4).sum() / c
    frac_same = (inputs[chosen] == ids[chosen]).sum() / c
    frac_random = 1 - frac_mask - frac_same
    tol = lambda q: 4 * np.sqrt(q * (1 - q) / c)  # noqa: E731
    assert abs(frac_mask - 0.8) < tol(0.8)
    assert abs(frac_same - 0.1) < tol(0.1) + 1 / 995      # a random draw can equal the original
    assert abs(frac_random - 0.1) < tol(0.1)
    assert not np.isin(inputs[chosen & (inputs != 4) & (inputs != ids)], SPECIAL).any()


def test_masking_is_dynamic_and_reproducible():
    ids, mask = _batch(np.random.default_rng(0), b=20)
    a = mask_tokens(ids, np.random.default_rng(5), 4, 1000, SPECIAL, attention_mask=mask)
    b = mask_tokens(ids, np.random.default_rng(5), 4, 1000, SPECIAL, attention_mask=mask)
    rng = np.random.default_rng(5)
    c1 = mask_tokens(ids, rng, 4, 1000, SPECIAL, attention_mask=mask)
    c2 = mask_tokens(ids, rng, 4, 1000, SPECIAL, attention_mask=mask)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert (c1[1] != c2[1]).any(), "the next draw (next epoch) must mask differently"


def test_whole_word_masking_chooses_whole_words():
    v = 50
    is_cont = np.zeros(v, dtype=bool)
    is_cont[30:] = True                     # ids 30.. are "##" pieces
    rng = np.random.default_rng(0)
    ids = rng.integers(5, v, (300, 30))
    ids[:, 0] = 5                           # a row starts with a word
    wid = word_ids_from_tokens(ids, is_cont)
    _, labels = mask_tokens(ids, np.random.default_rng(2), 4, v, SPECIAL, word_ids=wid, mlm_probability=0.3)
    chosen = labels != IGNORE_INDEX
    for r in range(ids.shape[0]):
        for w in np.unique(wid[r]):
            sel = chosen[r, wid[r] == w]
            assert sel.all() or not sel.any()
    assert chosen.any()


def test_masking_bad_arguments():
    ids = np.array([[2, 7, 3]])
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, np.random.default_rng(0), 4, 10, SPECIAL, mlm_probability=1.5)
    with pytest.raises(ValueError, match="attention_mask"):
        mask_tokens(ids, np.random.default_rng(0), 4, 10, SPECIAL, attention_mask=np.ones((1, 4)))


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------

def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0, 2])
    assert confusion_matrix(y, p).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert accuracy(y, p) == pytest.approx(5 / 7)
    m = precision_recall_f1(y, p)
    np.testing.assert_allclose(m["precision"], [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(m["recall"], [1 / 2, 1.0, 2 / 3])
    np.testing.assert_allclose(m["f1"], [0.5, 0.8, 0.8])
    assert m["macro_f1"] == pytest.approx(0.7)
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    # a class never predicted: precision 0 by convention, not NaN
    m2 = classification_metrics(np.array([0, 1, 1]), np.array([1, 1, 1]), 2)
    assert m2["precision"] == [0.0, pytest.approx(2 / 3)] and m2["recall"] == [0.0, 1.0]
    assert m2["macro_f1"] == pytest.approx(0.4)


def test_unigram_baseline_by_hand():
    train = np.array([5, 5, 5, 6, 7])            # V = 8; counts 5:3, 6:1, 7:1
    b = unigram_baseline(train, np.array([5, 6, 5, 7]), vocab_size=8)
    assert b["token"] == 5 and b["accuracy"] == 0.5
    q = {5: 4 / 13, 6: 2 / 13, 7: 2 / 13}        # (count + 1) / (5 + 8)
    expected = -np.mean(np.log([q[5], q[6], q[5], q[7]]))
    assert b["loss"] == pytest.approx(expected) and b["perplexity"] == pytest.approx(np.exp(expected))


def test_metrics_bad_inputs():
    with pytest.raises(ValueError, match="y_pred has"):
        accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="integer class ids"):
        accuracy(np.array([0.5]), np.array([0]))


# ------------------------------------------------------------------------------------------------
# training: tiny model, float64, resume bit for bit, NaN, Ctrl-C. Bit for bit is safe on every CPU: a
# resumed run is compared with the same run uninterrupted, in this process (same code and libraries).
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    texts = corpus.generate_corpus(120, seed=0)
    write_vocab(train_wordpiece(texts, 200), str(folder / "vocab.txt"))
    return BertTokenizer(str(folder / "vocab.txt")), texts


def _tiny_mlm(tok, dtype=np.float64):
    cfg = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.1,
                              attention_probs_dropout_prob=0.1)
    return tinybert.BertForMaskedLM(cfg, seed=3, dtype=dtype, attention_backend="numpy")


def _run_mlm(tok, texts, out, stop_at=None, resume=False, epochs=2):
    cfg = TrainingConfig(epochs=epochs, batch_size=16, lr=3e-3, seed=7, max_length=32, log_every=2, progress=False)
    model = _tiny_mlm(tok)
    task = MLMTask(tok, texts[:100], texts[100:], cfg)

    def on_step(trainer, step, loss):
        if step == stop_at:
            signal.raise_signal(signal.SIGINT)        # what Ctrl-C does: the handler asks to stop

    result = Trainer(model, task, cfg, str(out), tok, on_step=on_step).train(resume=resume)
    return model, result


def _comparable(history):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in history]


def test_resume_is_bit_exact_in_float64(tiny, tmp_path):
    tok, texts = tiny
    ref, ref_result = _run_mlm(tok, texts, tmp_path / "a")                 # 7 steps/epoch, 14 in all
    _, first = _run_mlm(tok, texts, tmp_path / "b", stop_at=10)             # Ctrl-C in epoch 2
    assert first["interrupted"] and first["step"] == 10
    state = json.load(open(tmp_path / "b" / "checkpoint" / "training_state.json"))
    assert state["step"] == 10 and state["epoch"] == 1 and state["batch_in_epoch"] == 3
    resumed, second = _run_mlm(tok, texts, tmp_path / "b", resume=True)
    assert not second["interrupted"] and second["step"] == ref_result["step"] == 14
    for (n, p), (_, q) in zip(ref.named_parameters(), resumed.named_parameters()):
        assert p.data.dtype == np.float64
        assert np.array_equal(p.data, q.data), f"{n} differs after resume"
    assert _comparable(second["history"]) == _comparable(ref_result["history"])
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert _comparable(rows) == _comparable(ref_result["history"])


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny, tmp_path):
    tok, texts = tiny
    cfg = TrainingConfig(epochs=3, batch_size=16, lr=3e-3, seed=0, max_length=32, progress=False)
    model = _tiny_mlm(tok)
    task = MLMTask(tok, texts[:100], texts[100:], cfg)

    def poison(trainer, step, loss):
        if step == 9:                      # epoch 2 (7 steps an epoch): the epoch-1 checkpoint exists
            trainer.model.cls.dense.weight.data[0, 0] = np.nan

    with pytest.raises(TrainingDiverged, match=r"step 10 .*lower learning rate") as e:
        Trainer(model, task, cfg, str(tmp_path), tok, on_step=poison).train()
    assert "checkpoint" in str(e.value)
    folder = checkpoint_dir(str(tmp_path))
    assert json.load(open(os.path.join(folder, "training_state.json")))["step"] == 7
    saved = tinybert.BertForMaskedLM.from_pretrained(folder, dtype=np.float64)
    assert all(np.isfinite(p.data).all() for p in saved.parameters())


def test_finetune_head_only_trains_only_the_head(tiny, tmp_path):
    tok, _ = tiny
    task = corpus.generate_sentiment_task(20, 5, 5, seed=0)
    cfg = TrainingConfig(epochs=1, batch_size=8, lr=1e-2, max_length=32, progress=False, freeze_encoder=True)
    conf = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    model = tinybert.BertForSequenceClassification(conf, seed=0, dtype=np.float64, attention_backend="numpy")
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    ct = ClassificationTask(tok, task["train"], task["validation"], cfg, corpus.LABELS)
    Trainer(model, ct, cfg, str(tmp_path), tok).train()
    for n, p in model.named_parameters():
        changed = not np.array_equal(before[n], p.data)
        assert changed == n.startswith("classifier."), n


def test_a_frozen_encoder_is_the_models_business():
    """freeze_encoder(): the body stops learning and runs in eval mode while the model trains, and
    backward stops at the head (the loop only ever calls model.backward)."""
    conf = tinybert.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16, max_position_embeddings=8)
    for cls in (tinybert.BertForSequenceClassification, tinybert.BertForMaskedLM):
        model = cls(conf, seed=0, dtype=np.float64, attention_backend="numpy").freeze_encoder()
        model.train()
        assert model.training and not any(m.training for m in model.bert.modules())
        out = model.forward(np.array([[2, 5, 7, 3]]))
        model.zero_grad()
        model.backward(np.ones_like(out))
        assert all(not p.requires_grad and not p.grad.any() for p in model.bert.parameters())
        head = [p for n, p in model.named_parameters() if not n.startswith("bert.")]
        assert head and all(p.requires_grad and p.grad.any() for p in head)
        model.freeze_encoder(False).train()
        assert all(p.requires_grad for p in model.parameters()) and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="has no task head"):
        tinybert.BertModel(conf).freeze_encoder()


def test_pretrain_and_finetune_change_neither_the_callers_config_nor_the_logger(tmp_path, monkeypatch):
    import dataclasses
    import logging

    from tinybert.training import finetune, pretrain
    level_changes = []
    original = logging.Logger.setLevel
    monkeypatch.setattr(logging.Logger, "setLevel",
                        lambda self, level: (level_changes.append((self.name, level)), original(self, level))[1])
    cfg = TrainingConfig(epochs=1, batch_size=32, max_length=None, progress=False, log_every=50)
    before = dataclasses.asdict(cfg)
    pre = pretrain(tmp_path / "pre", cfg, corpus_size=80, vocab_size=120, num_layers=1, hidden_size=16,
                   num_heads=2, max_position_embeddings=24, plots=False)
    task = corpus.generate_sentiment_task(12, 4, 4, seed=0)
    ft = finetune(tmp_path / "ft", pre["checkpoint"], cfg, train=task["train"], val=task["validation"],
                  plots=False)
    assert dataclasses.asdict(cfg) == before                              # max_length is still None
    assert pre["metrics"]["masked_tokens"] > 0 and ft["metrics"]["split"] == "validation"
    assert not [c for c in level_changes if c[0].startswith("tinybert")]


# ------------------------------------------------------------------------------------------------
# readers and bad inputs
# ------------------------------------------------------------------------------------------------

def test_read_texts_file_folder_and_errors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second\n\n", encoding="utf-8")
    (tmp_path / "d" / "a.txt").write_text("\ufefffirst line\n  \n", encoding="utf-8")
    assert corpus.read_texts(tmp_path / "d") == ["first line", "second"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ok\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8: byte 0xe9 at byte offset 3"):
        corpus.read_texts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        corpus.read_texts(empty)
    with pytest.raises(FileNotFoundError):
        corpus.read_texts(tmp_path / "missing.txt")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        corpus.read_texts(tmp_path / "none")


def test_read_labeled_and_label_checks(tmp_path):
    sst = tmp_path / "train.tsv"
    sst.write_text("sentence\tlabel\nit is good \t1\nit is bad\t0\n", encoding="utf-8")
    assert corpus.read_labeled(sst) == (["it is good", "it is bad"], ["1", "0"])
    csvf = tmp_path / "d.csv"
    csvf.write_text('text,sentiment\n"good, not bad",pos\n"bad, not good",neg\n', encoding="utf-8")
    assert corpus.read_labeled(csvf) == (["good, not bad", "bad, not good"], ["pos", "neg"])
    nolabel = tmp_path / "test.tsv"
    nolabel.write_text("index\tsentence\n0\tit is good\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no label column.*\['index', 'sentence'\]"):
        corpus.read_labeled(nolabel)
    short = tmp_path / "short.tsv"
    short.write_text("sentence\tlabel\nonly text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        corpus.read_labeled(short)
    with pytest.raises(ValueError, match="single class"):
        corpus.check_label_sets(["a", "a"])
    with pytest.raises(ValueError, match=r"\['c'\] never occur in training"):
        corpus.check_label_sets(["a", "b"], ["a", "c", "b"])
    assert corpus.check_label_sets(["10", "2", "2"], ["2", "10"]) == ["2", "10"]


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def _cli(argv, capsys):
    from tinybert.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "evaluate", "predict", "fill-mask", "demo"])
def test_cli_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        _cli([verb, "--help"], capsys)
    assert e.value.code == 0
    assert "usage: tinybert " + verb in capsys.readouterr().out


def test_cli_pretrain_finetune_evaluate_predict_fill_mask(tmp_path, capsys):
    texts = corpus.generate_corpus(150, seed=0)
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    tiny = ["--layers", 1, "--hidden", 16, "--heads", 2, "--max-positions", 32, "--epochs", 1,
            "--batch-size", 32, "--no-progress", "--attention-backend", "numpy"]
    rc, out, err = _cli(["pretrain", "--train", tmp_path / "corpus.txt", "--out", tmp_path / "pre",
                         "--vocab-size", 300, *tiny], capsys)
    assert rc == 0, err
    assert "masked-token accuracy" in out and (tmp_path / "pre" / "loss.png").is_file()
    ckpt = tmp_path / "pre" / "checkpoint"
    assert (ckpt / "vocab.txt").is_file() and (ckpt / "model.safetensors").is_file()
    assert [json.loads(line)["kind"] for line in open(tmp_path / "pre" / "metrics.jsonl")][-1] == "eval"

    rc, out, err = _cli(["fill-mask", "the [MASK] was good , not bad .", "--model", ckpt, "--top-k", 3], capsys)
    assert rc == 0 and out.startswith("[MASK] at token 2:"), err

    task = corpus.generate_sentiment_task(20, 5, 5, seed=0)
    for split in task:
        rows = "".join(f"{t}\t{l}\n" for t, l in zip(*task[split]))
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    rc, out, err = _cli(["finetune", "--model", ckpt, "--train", tmp_path / "train.tsv", "--val",
                         tmp_path / "validation.tsv", "--test", tmp_path / "test.tsv", "--out", tmp_path / "ft",
                         "--epochs", 1, "--no-progress", "--max-length", 32], capsys)
    assert rc == 0, err
    assert "test metrics" in out and "macro" in out and (tmp_path / "ft" / "confusion_matrix.png").is_file()
    best = tmp_path / "ft" / "best"
    rc, out, err = _cli(["predict", "the soup was good , not bad .", "it was awful", "--model", best], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 2 and out.split("\t")[0] in ("negative", "positive"), err
    rc, out, err = _cli(["evaluate", "--model", best, "--data", tmp_path / "test.tsv"], capsys)
    assert rc == 0 and "accuracy" in out, err
    rc, out, err = _cli(["evaluate", "--model", ckpt, "--data", tmp_path / "corpus.txt"], capsys)
    assert rc == 0 and "masked-token accuracy" in out, err

    # bad inputs reach the user as one clear line and exit code 2
    (tmp_path / "bad.txt").write_bytes(b"ok\nbad \xff byte\n")
    rc, _, err = _cli(["pretrain", "--train", tmp_path / "bad.txt", "--out", tmp_path / "x", *tiny], capsys)
    assert rc == 2 and "bad.txt is not UTF-8: byte 0xff at byte offset 7" in err
    (tmp_path / "one.tsv").write_text("sentence\tlabel\na\tpos\nb\tpos\n", encoding="utf-8")
    rc, _, err = _cli(["finetune", "--model", ckpt, "--train", tmp_path / "one.tsv", "--out", tmp_path / "y"], capsys)
    assert rc == 2 and "single class" in err
    rc, _, err = _cli(["finetune", "--model", ckpt, "--train", tmp_path / "train.tsv", "--out", tmp_path / "z",
                       "--resume"], capsys)
    assert rc == 2 and "nothing to resume" in err


def test_demo_quick(tmp_path, capsys):
    from tinybert.demo import main
    assert main(seed=0, out=str(tmp_path), quick=True) == 0
    out = capsys.readouterr().out
    for line in ("masked-token accuracy (held out)", "unigram baseline", "fine-tuned accuracy",
                 "bag-of-words logistic regression"):
        assert line in out
    assert "bag-of-words logistic regression      0.500" in out
    for png in ("pretrain/loss.png", "pretrain/attention.png", "finetune/confusion_matrix.png",
                "finetune/train_vs_val.png"):
        assert (tmp_path / png).is_file(), png
