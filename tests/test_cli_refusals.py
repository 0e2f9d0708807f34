"""The command line refuses what it cannot do right (issue 22): a checkpoint's kind decides which verbs
take it, predict without a trained head is refused like fill-mask, errors name the CLI's flags, --help
shows every default, ties in the best epoch go to the lower validation loss, files get the user's
umask, a line says how many ranks train, and a vocabulary that fits the text poorly is reported."""
import logging
import os
import re
import stat

import numpy as np
import pytest

import tinybert
from tinybert import cli
from tinybert.cli import main
from tinybert.io.files import write_folder_atomic, write_text_atomic
from tinybert.text.coverage import warn_poor_coverage, word_coverage
from tinybert.text.tokenizer import BertTokenizer, write_vocab
from tinybert.training.tasks import ClassificationTask, MLMTask
from tinybert.training import trainer as trainer_module
from tests.conftest import tiny_config

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "good", "bad", "soup", "was", "not"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny checkpoint of each kind, with its tokenizer."""
    root = tmp_path_factory.mktemp("kinds")
    write_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS, str(root / "vocab.txt"))
    tok = BertTokenizer(str(root / "vocab.txt"))
    v = tok.vocab_size
    models = {"mlm": tinybert.BertForMaskedLM(tiny_config(vocab_size=v)),
              "clm": tinybert.BertLMHeadModel(tiny_config(vocab_size=v, is_decoder=True)),
              "clf": tinybert.BertForSequenceClassification(tiny_config(vocab_size=v, num_labels=2,
                                                                      id2label={0: "bad", 1: "good"})),
              "enc": tinybert.BertModel(tiny_config(vocab_size=v))}
    paths = {}
    for name, model in models.items():
        model.save_pretrained(str(root / name), tokenizer=tok)
        paths[name] = str(root / name)
    (root / "small.txt").write_text("the cat sat on the mat\nthe dog ran\n", encoding="utf-8")
    (root / "data.tsv").write_text("sentence\tlabel\nthe cat sat\tgood\nthe dog ran\tbad\n", encoding="utf-8")
    paths["txt"], paths["tsv"], paths["root"] = str(root / "small.txt"), str(root / "data.tsv"), str(root)
    return paths


def _refused(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{argv}: {text!r} not in {err!r}"
    return err


@pytest.mark.parametrize("argv, kind, expected", [
    (["fill-mask", "the [MASK] sat"], "clm", ["causal language model", "`tinybert generate`"]),
    (["explain", "the [MASK] sat"], "clm", ["causal language model", "`tinybert generate`"]),
    (["evaluate", "--data", "TXT"], "clm", ["causal language model", "`tinybert generate`"]),
    (["embed", "the cat"], "clm", ["`tinybert embed` needs", "`tinybert generate`"]),
    (["generate", "the cat"], "mlm", ["masked language model", "`tinybert fill-mask`", "pretrain --objective clm"]),
    (["generate", "the cat"], "enc", ["plain encoder", "`tinybert embed`", "pretrain --objective clm"]),
    (["predict", "the cat"], "mlm", ["`tinybert predict` needs a sequence classifier", "`tinybert fill-mask`"]),
    (["predict", "the cat"], "enc", ["plain encoder", "`tinybert finetune`"]),
    (["fill-mask", "the [MASK] sat"], "clm", ["`tinybert fill-mask` needs a masked language model"]),
    (["finetune", "--out", "OUT"], "clm", ["`tinybert finetune` needs", "`tinybert generate`"]),
])
def test_a_checkpoint_kind_decides_which_verbs_take_it(folders, capsys, tmp_path, argv, kind, expected):
    argv = [folders["txt"] if a == "TXT" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    _refused(capsys, argv + ["--model", folders[kind]], f"--model {folders[kind]}: this checkpoint is", *expected)
    assert not (tmp_path / "out").exists()


def test_the_verbs_still_take_their_own_kind(folders, capsys):
    assert main(["fill-mask", "the [MASK] sat", "--model", folders["mlm"]]) == 0
    assert main(["generate", "the", "--model", folders["clm"], "--max-new-tokens", "2"]) == 0
    assert main(["predict", "the cat", "--model", folders["clf"]]) == 0
    assert main(["evaluate", "--model", folders["mlm"], "--data", folders["txt"]]) == 0
    assert main(["evaluate", "--model", folders["clf"], "--data", folders["tsv"]]) == 0
    assert main(["embed", "the cat", "--model", folders["enc"]]) == 0
    capsys.readouterr()


def test_predict_without_a_trained_head_is_refused_unless_fresh_head(folders, capsys):
    _refused(capsys, ["predict", "I like it", "--model", "all-MiniLM-L6-v2"], "plain encoder",
             "`tinybert predict` needs a sequence classifier")
    assert main(["predict", "the cat", "--model", folders["enc"], "--fresh-head"]) == 0
    captured = capsys.readouterr()
    assert "new, random head" in captured.err and "LABEL_" in captured.out


def test_evaluate_names_the_flags_and_refuses_a_txt_for_a_classifier(folders, capsys):
    _refused(capsys, ["evaluate", "--model", folders["clf"], "--data", folders["txt"]], "--data", ".tsv or .csv")
    err = _refused(capsys, ["evaluate", "--model", folders["clf"], "--data", folders["tsv"], "--text-column", "review"],
                   "--text-column 'review' is not a column")
    assert "text_column=" not in err


def test_help_shows_every_default(capsys):
    parser = cli.build_parser()
    for verb, verb_parser in parser._subparsers._group_actions[0].choices.items():
        text = "".join(verb_parser.format_help().split())          # wrapping may break at a hyphen
        for action in verb_parser._actions:
            if cli.DefaultsHelpFormatter.shows_default(action):
                shown = cli.DefaultsHelpFormatter(prog="x")._get_help_string(action)
                assert "default" in shown, f"tinybert {verb} {action.option_strings[0]}: no default shown"
                if "%(default)s" in shown:
                    assert f"(default:{action.default})".replace(" ", "") in text, f"tinybert {verb} {action.option_strings[0]}"
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lr LR peak learning rate of AdamW (default: 0.001)" in out
    assert "--seed SEED (default: 0)" in out and "--patience PATIENCE" in out and "(default: 2)" in out


def test_best_epoch_ties_are_broken_by_validation_loss():
    earlier = ClassificationTask.validation_score({"accuracy": 1.0, "loss": 0.37})
    later = ClassificationTask.validation_score({"accuracy": 1.0, "loss": 0.06})
    worse = ClassificationTask.validation_score({"accuracy": 0.9, "loss": 0.01})
    assert later > earlier > worse
    assert trainer_module._as_score(later) > trainer_module._as_score(list(earlier))   # as stored in JSON
    assert trainer_module._as_score(0.5) == (0.5,)                                      # an older checkpoint
    assert MLMTask.validation_score({"loss": 1.0}) > MLMTask.validation_score({"loss": 2.0})


@pytest.mark.parametrize("mask, mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_get_the_users_umask(tmp_path, mask, mode, folder_mode):
    old = os.umask(mask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_folder_atomic(tmp_path / "run", lambda stage: write_text_atomic(os.path.join(stage, "f.json"), "{}"))
        tinybert.BertModel(tiny_config()).save_pretrained(str(tmp_path / "model"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "f.json").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == folder_mode
    assert stat.S_IMODE(os.stat(tmp_path / "model").st_mode) == folder_mode
    for name in os.listdir(tmp_path / "model"):
        assert stat.S_IMODE(os.stat(tmp_path / "model" / name).st_mode) == mode, name


def test_a_line_says_how_many_ranks_train(monkeypatch, capsys, tmp_path):
    class TwoRanks:
        rank, size, is_main = 0, 2, True
    monkeypatch.setattr("tinybert.training.distributed.world", lambda *a, **k: TwoRanks())
    assert main(["pretrain", "--out", str(tmp_path / "o"), "--init-from", str(tmp_path), "--layers", "3"]) == 2
    assert "data parallel: 2 ranks train one model" in capsys.readouterr().out


def test_vocabulary_that_fits_poorly_is_reported(folders, caplog):
    tok = BertTokenizer(os.path.join(folders["root"], "vocab.txt"))
    everyday = ["I would love a cup of coffee before the meeting", "The weather was lovely this weekend"]
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        c = warn_poor_coverage(tok, everyday, "the training texts")
    assert c["words"] == 16 and c["whole"] == pytest.approx(4 / 16) and c["unknown"] == pytest.approx(12 / 16)
    assert "fits the training texts poorly" in caplog.text and "25% stay whole" in caplog.text
    caplog.clear()
    real = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        assert warn_poor_coverage(real, everyday, "the training texts")["whole"] == 1.0
    assert caplog.text == ""
    assert word_coverage(real, ["unaffable"])["pieces"] == 1.0


def test_predict_keeps_each_text_one_line_of_three_fields(folders, capsys):
    """A text holding a tab, a line break or a backslash: before, it broke the LABEL<tab>P<tab>TEXT
    line into more fields and lines; now they are escaped, and undoing the escapes gives the text."""
    texts = ["the cat\tsat", "the dog\nran", "a \\ mat\r"]
    assert main(["predict", *texts, "--model", folders["clf"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(texts)
    for line, text in zip(lines, texts):
        label, probability, field = line.split("\t")
        assert label in ("bad", "good") and 0 <= float(probability) <= 1
        unescaped = re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[m.group(1)], field)
        assert unescaped == text
