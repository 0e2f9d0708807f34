"""Hostile use: nothing on disk lost without asking, no number going bad quietly, text read as
written, bounded work, clear errors. One test (or parametrised case) per case of the README's
reliability table, grouped as the table is.
"""
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tinybert
from tests.conftest import tiny_config
from tests.test_training import tiny  # noqa: F401  (the fixture: a 200-token vocabulary and 120 texts)
from tinybert.training import corpus
from tinybert.training.metrics import (MAX_CLASSES_SHOWN, classification_metrics, confusion_matrix,
                              format_classification_report, precision_recall_f1)
from tinybert.training.runfolder import RunFolderBusy, RunFolderError, claim_run_folder
from tinybert.training import (ClassificationTask, IncompleteCheckpoint, MLMTask, ResumeMismatch, Trainer,
                               TrainingConfig, TrainingDiverged)
from tinybert.training.data import encode_texts
from tinybert.text.wordpiece_trainer import train_wordpiece

TINY = ["--layers", 1, "--hidden", 16, "--heads", 2, "--max-positions", 32, "--epochs", 1,
        "--batch-size", 32, "--vocab-size", 200, "--no-progress", "--attention-backend", "numpy"]


def _cli(argv, capsys):
    from tinybert.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _cli_usage_error(argv, capsys):
    """An argument refused by argparse: exit status 2 and the message on stderr."""
    from tinybert.cli import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(corpus.generate_corpus(150, seed=0)) + "\n", encoding="utf-8")
    return path


def _pretrain_tiny(out, corpus_file, **kwargs):
    """The library call that ``tinybert pretrain --train corpus_file --out out *TINY`` makes, without
    the plots (they cost seconds and are tested elsewhere)."""
    from tinybert.training import pretrain
    cfg = TrainingConfig(epochs=1, batch_size=32, lr=2e-3, max_length=None, progress=False)
    return pretrain(out, cfg, texts=corpus.read_texts(corpus_file), vocab_size=200, num_layers=1, hidden_size=16,
                    num_heads=2, max_position_embeddings=32, attention_backend="numpy", plots=False, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus_file):
    """A finished tiny pretraining run (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("runs") / "pre"
    _pretrain_tiny(out, corpus_file)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder`` (to prove nothing changed)."""
    snap = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                snap[os.path.relpath(p, folder)] = fh.read()
    return snap


# ================================================================================================
# 1. data loss: a run folder is owned
# ================================================================================================

def test_new_run_refuses_a_folder_holding_a_run(run_copy, corpus_file, capsys):
    before = _snapshot(run_copy)
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, *TINY], capsys)
    assert rc == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(run_copy) == before


def test_overwrite_replaces_the_run_and_keeps_other_files(run_copy, corpus_file, capsys):
    (run_copy / "notes.txt").write_text("mine", encoding="utf-8")
    old_log = (run_copy / "metrics.jsonl").read_text()
    _pretrain_tiny(run_copy, corpus_file, overwrite=True)
    assert "replacing the previous run" in capsys.readouterr().out
    assert (run_copy / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (run_copy / "metrics.jsonl").read_text() != "" and (run_copy / "checkpoint").is_dir()
    assert json.loads((run_copy / "run_config.json").read_text())["resumes"] == []
    assert old_log.count("\n") == (run_copy / "metrics.jsonl").read_text().count("\n")   # one run's rows


def test_non_run_folder_with_files_is_refused_even_with_overwrite(tmp_path, corpus_file, capsys):
    (tmp_path / "thesis.tex").write_text("precious", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path, *extra, *TINY], capsys)
        assert rc == 2 and "holds no tinybert run" in err and "thesis.tex" in err
    assert (tmp_path / "thesis.tex").read_text(encoding="utf-8") == "precious"


def test_resume_and_overwrite_together_are_refused(run_copy, corpus_file, capsys):
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", "--overwrite", *TINY],
                      capsys)
    assert rc == 2 and "contradict" in err


@pytest.mark.parametrize("out", ["run", "run/checkpoint/inner"])
def test_finetune_refuses_the_folder_of_its_checkpoint(run_copy, out, capsys):
    before = _snapshot(run_copy)
    target = run_copy.parent / out
    rc, _, err = _cli(["finetune", "--model", run_copy / "checkpoint", "--out", target, "--epochs", 1,
                       "--no-progress"], capsys)
    assert rc == 2 and "overlap" in err and "checkpoint it reads" in err
    assert _snapshot(run_copy) == before


def test_pretrain_init_from_refuses_its_own_folder(run_copy, corpus_file, capsys):
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--init-from",
                       run_copy / "checkpoint", "--resume"], capsys)
    assert rc == 2 and "overlap" in err


# another process holding a run folder (runfolder.py loaded on its own: it needs only filelock)
HOLD_LOCK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("runfolder", sys.argv[2])
runfolder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runfolder)
with runfolder.lock_folder(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _hold_lock_command(folder):
    return [sys.executable, "-c", HOLD_LOCK, str(folder), tinybert.training.runfolder.__file__]


def test_second_process_is_kept_out_and_the_lock_dies_with_its_holder(tmp_path, corpus_file, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen(_hold_lock_command(out), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", out, *TINY], capsys)
        assert rc == 2 and f"in use by another tinybert process (pid {holder.pid})" in err
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()                       # a crash: no clean release
        holder.wait()
    with claim_run_folder(out) as path:     # the OS dropped the lock with the process
        assert os.path.isdir(path)


def test_claim_is_reentrant_in_one_process_but_not_across_claims_of_others(tmp_path):
    from tinybert.training.runfolder import lock_folder
    with claim_run_folder(tmp_path / "r"):
        with claim_run_folder(tmp_path / "r"):     # pretrain() then its Trainer: no self-deadlock
            pass
    with lock_folder(tmp_path / "r"):
        p = subprocess.run(_hold_lock_command(tmp_path / "r"), input="", text=True, capture_output=True)
        assert p.returncode != 0 and "RunFolderBusy" in p.stderr and f"pid {os.getpid()}" in p.stderr


def test_demo_replaces_its_own_folder_and_refuses_others(finished_run, tmp_path, capsys):
    """`make demo` twice: the second run finds the first one's three run folders and replaces them.
    (The first run into an empty folder is tests/test_training.py::test_demo_quick; a real previous
    run is stood in for by copies of a finished run, to spend one quick demo instead of two.)"""
    from tinybert.demo import DEMO_PARTS, main
    out = tmp_path / "demo"
    for part in DEMO_PARTS:
        shutil.copytree(finished_run, out / part)
    (out / "finetune" / "best").mkdir()
    (out / "demo.json").write_text("{}", encoding="utf-8")        # what the demo writes first
    assert main(seed=0, out=str(out), quick=True) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"replacing the previous demo run in {out}")
    assert "masked-token accuracy (held out)" in printed and "bag-of-words logistic regression      0.500" in printed
    assert json.loads((out / "finetune" / "run_config.json").read_text())["task"] == "classification"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(RunFolderError, match="the demo did not write"):
        main(seed=0, out=str(other), quick=True)
    assert (other / "keep.txt").read_text(encoding="utf-8") == "x"


def test_demo_refuses_a_users_folder_that_holds_pretrain_and_finetune(finished_run, tmp_path):
    """A folder of the user's whose subfolders happen to be named as the demo's parts (their own runs)
    is not the demo's: without demo.json it is refused, every file untouched."""
    from tinybert.demo import main
    out = tmp_path / "proj"
    shutil.copytree(finished_run, out / "pretrain")
    shutil.copytree(finished_run, out / "finetune")
    before = _snapshot(out)
    with pytest.raises(RunFolderError, match="but no demo.json, so the demo did not write it"):
        main(seed=0, out=str(out), quick=True)
    assert _snapshot(out) == before and sorted(os.listdir(out)) == ["finetune", "pretrain"]
    (out / "demo.json").write_text("{}", encoding="utf-8")     # the demo's folder, but a part holds more
    (out / "pretrain" / "thesis.tex").write_text("precious", encoding="utf-8")
    with pytest.raises(RunFolderError, match="thesis.tex"):
        main(seed=0, out=str(out), quick=True)
    assert (out / "pretrain" / "thesis.tex").read_text(encoding="utf-8") == "precious"
    assert (out / "pretrain" / "checkpoint").is_dir()


def test_overwrite_deletes_nothing_when_the_new_run_is_refused(run_copy, corpus_file):
    """--overwrite removes the previous run only once the new one has passed every check: a new run
    refused while it is being built (here: a validation text whose masks hide no token) leaves the
    old run whole."""
    from tinybert.errors import InvalidValue
    from tinybert.training import pretrain
    before = _snapshot(run_copy)
    cfg = TrainingConfig(epochs=1, batch_size=32, lr=2e-3, max_length=None, progress=False)
    with pytest.raises(InvalidValue, match="gave no masked token"):
        pretrain(run_copy, cfg, texts=corpus.read_texts(corpus_file), val_texts=["a"], vocab_size=200,
                 num_layers=1, hidden_size=16, num_heads=2, max_position_embeddings=32,
                 attention_backend="numpy", plots=False, overwrite=True)
    after = _snapshot(run_copy)
    assert after == before, sorted(set(before) ^ set(after))


def test_run_folder_never_writes_through_a_planted_link(tmp_path, corpus_file, capsys):
    """A link planted where the owner file, the lock or a run's output would go is refused, and the
    file it points to is untouched (before: .tinybert.owner -> ../v/b.txt got {"pid": ...})."""
    victim = tmp_path / "v" / "b.txt"
    victim.parent.mkdir()
    victim.write_text("precious", encoding="utf-8")
    for name in (".tinybert.owner", ".tinybert.lock", "metrics.jsonl"):
        out = tmp_path / f"d{name}"
        out.mkdir()
        os.symlink(victim, out / name)
        rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", out, *TINY], capsys)
        assert rc == 2 and f"{name} is a symbolic link" in err, err
        assert victim.read_text(encoding="utf-8") == "precious"
        assert sorted(os.listdir(out)) == [name]


def test_hidden_files_make_a_folder_not_empty(tmp_path, corpus_file, capsys):
    (tmp_path / ".env").write_text("SECRET=1", encoding="utf-8")
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path, *TINY], capsys)
    assert rc == 2 and "holds no tinybert run (.env)" in err
    assert sorted(os.listdir(tmp_path)) == [".env"]


def test_a_refused_run_leaves_no_lock_behind(tmp_path, corpus_file, capsys):
    """Refused before anything was made (a folder of someone else's files: no lock file appears in
    it), or refused after its new folder was made (the folder goes again)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x", encoding="utf-8")
    rc, _, _ = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path / "mine", *TINY], capsys)
    assert rc == 2 and sorted(os.listdir(tmp_path / "mine")) == ["keep.txt"]
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    rc, _, err = _cli(["pretrain", "--train", empty, "--out", tmp_path / "new", *TINY], capsys)
    assert rc == 2 and not (tmp_path / "new").exists(), err


def test_a_killed_runs_staging_folders_are_removed_when_the_run_is_claimed(run_copy, corpus_file, capsys):
    """A kill during a save leaves .checkpoint.saving-XXXX (and .metrics.jsonl.XXXX.tmp); they used to
    stay for ever, even after a successful resume. The next run holding the lock removes them, and
    nothing else hidden."""
    (run_copy / ".checkpoint.saving-k1ll3d").mkdir()
    (run_copy / ".checkpoint.saving-k1ll3d" / "model.safetensors").write_bytes(b"\0" * 100)
    (run_copy / ".best.saving-x").mkdir()
    (run_copy / ".metrics.jsonl.abc.tmp").write_text("{", encoding="utf-8")
    (run_copy / ".checkpoint.previous.keep").write_text("a user's", encoding="utf-8")
    (run_copy / ".saving-mine").write_text("a user's", encoding="utf-8")
    args = list(TINY)
    args[args.index("--epochs") + 1] = 2
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *args], capsys)
    assert rc == 0, err
    hidden = sorted(n for n in os.listdir(run_copy) if n.startswith("."))
    assert hidden == [".checkpoint.previous.keep", ".saving-mine", ".tinybert.lock"], hidden


def test_staging_folders_of_a_held_folder_are_left_alone(run_copy):
    (run_copy / ".checkpoint.saving-live").mkdir()
    holder = subprocess.Popen(_hold_lock_command(run_copy), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:                                           # another run is saving: its staging folder is live
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy):
            with claim_run_folder(run_copy, resume=True):
                pass
        assert (run_copy / ".checkpoint.saving-live").is_dir()
    finally:
        holder.kill()
        holder.wait()
    with claim_run_folder(run_copy, resume=True):  # the holder is gone: now it is a leftover
        assert not (run_copy / ".checkpoint.saving-live").exists()


def test_out_inside_the_train_folder_is_not_read_as_text(tmp_path, corpus_file, capsys, caplog):
    """--out inside the --train folder used to make later runs train on the run's vocab.txt (and
    its checkpoint's): a resume was then refused for changed data."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus_file, data / "corpus.txt")
    args = list(TINY)
    rc, _, err = _cli(["pretrain", "--train", data, "--out", data / "run", *args], capsys)
    assert rc == 0 and (data / "run" / "vocab.txt").is_file(), err
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        assert corpus.read_texts(data) == corpus.read_texts(corpus_file)
    assert "skipped 1 folder(s) holding a tinybert run or a checkpoint" in caplog.text
    args[args.index("--epochs") + 1] = 2
    rc, out, err = _cli(["pretrain", "--train", data, "--out", data / "run", "--resume", *args], capsys)
    assert rc == 0 and "epochs (--epochs) 1 -> 2" in out, err


def test_embed_npy_and_explain_png_refuse_to_replace_a_file(tmp_path, capsys):
    """An existing --npy / --png is refused (one line naming the flag) before any work, untouched;
    --overwrite replaces it, atomically (the .npy is written beside it and renamed)."""
    npy = tmp_path / "v.npy"
    npy.write_bytes(b"precious")
    rc, _, err = _cli(["embed", "hello", "--npy", npy], capsys)
    assert rc == 2 and err.strip() == f"tinybert embed: error: --npy {npy}: the file exists; pass --overwrite to replace it"
    assert npy.read_bytes() == b"precious"
    png = tmp_path / "e.png"
    png.write_bytes(b"precious")
    rc, _, err = _cli(["explain", "--model", tmp_path / "no-such-model", "x", "--png", png], capsys)
    assert rc == 2 and "--png" in err and "the file exists" in err      # refused before the model is read
    assert png.read_bytes() == b"precious"
    rc, out, _ = _cli(["embed", "hello", "--npy", npy, "--overwrite"], capsys)
    assert rc == 0 and np.load(npy).shape == (1, 384)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []       # no temporary file left


def test_a_full_disk_while_saving_is_one_line_and_keeps_nothing_half_written(tmp_path, corpus_file, capsys,
                                                                            monkeypatch):
    """safetensors reports a full disk as its own SafetensorError ("No space left on device (os error
    28)"), which the CLI printed as a traceback: it is an OSError now, one line naming the file."""
    import safetensors
    import safetensors.numpy

    def full_disk(tensors, filename, metadata=None):
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                          "message: \"No space left on device\" }) (os error 28)")
    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path / "run", *TINY], capsys)
    assert rc == 2 and "No space left on device" in err and "model.safetensors" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint").exists()


# ================================================================================================
# 2. --resume continues the run as it was
# ================================================================================================

@pytest.mark.parametrize("change,named", [
    (["--hidden", 32], "hidden_size (--hidden): the run has 16, now 32"),
    (["--lr", 0.5], "lr (--lr): the run has 0.002, now 0.5"),
    (["--max-length", 16], "max_length (--max-length)"),
    (["--seed", 3], "seed (--seed)"),
])
def test_resume_refuses_a_changed_setting(run_copy, corpus_file, change, named, capsys):
    before = _snapshot(run_copy)
    args = list(TINY)
    flag = change[0]
    if flag in args:
        i = args.index(flag)
        args[i + 1] = change[1]
    else:
        args += change
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *args], capsys)
    assert rc == 2 and "cannot resume" in err and named in err, err
    assert _snapshot(run_copy) == before


def test_resume_refuses_changed_data_and_names_every_difference(run_copy, corpus_file, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(corpus.generate_corpus(150, seed=5)) + "\n", encoding="utf-8")
    args = list(TINY)
    args[args.index("--hidden") + 1] = 32                     # a changed shape as well
    rc, _, err = _cli(["pretrain", "--train", other, "--out", run_copy, "--resume", *args], capsys)
    assert rc == 2 and "the train data: the run read" in err and "--hidden" in err


def test_resume_extends_epochs_and_records_it(run_copy, corpus_file, capsys):
    args = list(TINY)
    args[args.index("--epochs") + 1] = 2
    rc, out, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *args], capsys)
    assert rc == 0, err
    assert "epochs (--epochs) 1 -> 2" in out
    run_config = json.loads((run_copy / "run_config.json").read_text())
    assert run_config["training"]["epochs"] == 2
    assert run_config["resumes"][-1]["changed"] == {"epochs": [1, 2]}
    state = json.loads((run_copy / "checkpoint" / "training_state.json").read_text())
    assert state["epoch"] == 2 and state["training_config"]["epochs"] == 2
    epochs = [json.loads(line)["epoch"] for line in open(run_copy / "metrics.jsonl") if '"eval"' in line]
    assert epochs == [1, 2]


def test_resume_refuses_fewer_epochs_than_were_trained(run_copy, corpus_file, capsys):
    """run_config.json used to record --epochs 1 for a run that had trained 2 (and the next resume
    then said "epochs 2 -> 3")."""
    args = list(TINY)
    args[args.index("--epochs") + 1] = 2
    assert _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *args], capsys)[0] == 0
    before = _snapshot(run_copy)
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *TINY], capsys)
    assert rc == 2 and "epochs=1 (--epochs): the run in " in err and "has already trained 2 epoch(s); expected " \
        "--epochs 2 or more" in err, err
    assert _snapshot(run_copy) == before
    assert json.loads((run_copy / "run_config.json").read_text())["training"]["epochs"] == 2


def test_finetune_resume_refuses_another_dropout_or_model(finished_run, run_copy, tmp_path, capsys):
    from tinybert.training import finetune
    task = corpus.generate_sentiment_task(12, 4, 4, seed=0)
    rows = "".join(f"{t}\t{l}\n" for t, l in zip(*task["train"]))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    cfg = TrainingConfig(epochs=1, batch_size=32, lr=1e-3, max_length=None, progress=False, patience=2)
    finetune(tmp_path / "ft", finished_run / "checkpoint", cfg, train=corpus.read_labeled(tmp_path / "train.tsv"),
             attention_backend="numpy", plots=False)
    base = ["finetune", "--train", tmp_path / "train.tsv", "--out", tmp_path / "ft", "--resume", "--epochs", 1,
            "--no-progress", "--attention-backend", "numpy"]
    rc, _, err = _cli([*base, "--model", finished_run / "checkpoint", "--dropout", 0.3], capsys)
    assert rc == 2 and "dropout (--dropout): the run has None, now 0.3" in err
    rc, _, err = _cli([*base, "--model", run_copy / "checkpoint"], capsys)
    assert rc == 2 and "model (--model): the run has" in err
    rc, out, err = _cli([*base, "--model", finished_run / "checkpoint", "--epochs", 2], capsys)
    assert rc == 0 and "epochs (--epochs) 1 -> 2" in out, err


@pytest.mark.parametrize("damage,named", [
    (lambda c: os.remove(c / "optimizer.safetensors"), "lacks optimizer.safetensors"),
    (lambda c: os.remove(c / "vocab.txt"), "lacks vocab.txt"),
    (lambda c: _drop_state_key(c, "model_rng"), "model_rng"),
    (lambda c: (c / "training_state.json").write_text("{", encoding="utf-8"),
     "training_state.json is not valid JSON"),
])
def test_resume_refuses_an_incomplete_checkpoint(run_copy, corpus_file, damage, named, capsys):
    damage(run_copy / "checkpoint")
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *TINY], capsys)
    assert rc == 2 and named in err and str(run_copy / "checkpoint") in err, err


def _drop_state_key(folder, key):
    path = folder / "training_state.json"
    state = json.loads(path.read_text())
    del state[key]
    path.write_text(json.dumps(state))


def _edit_state(folder, **changes):
    """Change fields of training_state.json ("a.b" reaches into an object)."""
    path = folder / "training_state.json"
    state = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        obj = state
        for p in parents:
            obj = obj[p]
        obj[last] = value
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("changes,named", [
    ({"step": -5}, "step=-5, expected an integer >= 0"),
    ({"batch_in_epoch": 10**9}, "batch_in_epoch=1000000000, expected at most 5 (the batches of an epoch"),
    ({"step": 4}, "step=4, expected epoch × 5 + batch_in_epoch = 5"),
    ({"epoch": 0, "step": 0}, "best.epoch=1, expected an epoch in [1, 0]"),
    ({"epoch": 1.5}, "epoch=1.5, expected an integer >= 0"),
    ({"epoch_stats.loss_sum": float("nan")}, "epoch_stats.loss_sum=nan, expected a finite number >= 0"),
    ({"best.score": float("inf")}, "best.score=inf, expected a list of 1 or 2 finite numbers"),
    ({"best.score": [float("nan")]}, "best.score=[nan], expected a list of 1 or 2 finite numbers"),
    ({"optimizer.step": 7}, "optimizer.step=7, expected step=5"),
    ({"optimizer.lr": [1e-3]}, "optimizer.lr=[0.001], expected a list of 2 finite learning rates"),
    ({"schedule.last_step": 0}, "schedule.last_step=0, expected step=5"),
    ({"model_rng": {"bit_generator": "PCG64", "state": "x"}}, "model_rng is not the state of a PCG64 generator"),
])
def test_resume_range_checks_every_field_of_the_training_state(run_copy, corpus_file, changes, named, capsys):
    """An edited training_state.json used to be trusted: step=-5, or batch_in_epoch=10⁹ (the epoch
    skipped with "train loss 0.0000")."""
    _edit_state(run_copy / "checkpoint", **changes)
    before = _snapshot(run_copy)
    rc, out, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *TINY, "--epochs", 2],
                        capsys)
    assert rc == 2 and str(run_copy / "checkpoint" / "training_state.json") in err and named in err, err
    assert "train loss" not in out and _snapshot(run_copy) == before


@pytest.mark.parametrize("flags,named", [
    (["--whole-word-mask"], "whole_word_mask (--whole-word-mask) cannot be used with objective='clm'"),
    (["--mlm-probability", "0.3"], "--mlm-probability cannot be used with --objective clm"),
    (["--mlm-probability", "0.15"], "--mlm-probability cannot be used with --objective clm"),
])
def test_clm_refuses_the_masking_flags(tmp_path, corpus_file, flags, named, capsys):
    """--objective clm used to ignore them without a word."""
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path / "r", "--objective", "clm", *TINY,
                       *flags], capsys)
    assert rc == 2 and named in err and not (tmp_path / "r").exists(), err


def test_library_clm_refuses_a_masking_setting(tmp_path, corpus_file):
    from tinybert.training import pretrain
    cfg = TrainingConfig(epochs=1, mlm_probability=0.3, progress=False)
    with pytest.raises(ValueError, match=r"mlm_probability \(--mlm-probability\) cannot be used with objective='clm'"):
        pretrain(tmp_path / "r", cfg, texts=corpus.read_texts(corpus_file), objective="clm")


def test_init_from_a_causal_lm_continues_as_a_masked_lm_and_says_so(tmp_path, corpus_file, caplog):
    """It used to make a causal "masked" LM (is_decoder: true in its config.json)."""
    clm = _pretrain_tiny(tmp_path / "clm", corpus_file, objective="clm")["checkpoint"]
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        r = _pretrain_tiny(tmp_path / "mlm", corpus_file, init_from=clm)
    assert "is a causal LM (is_decoder: true); it continues as a masked LM" in caplog.text
    assert r["model"].config.is_decoder is False
    assert json.loads((tmp_path / "mlm" / "checkpoint" / "config.json").read_text())["is_decoder"] is False


def test_resume_refuses_non_finite_optimizer_moments(run_copy, corpus_file, capsys):
    from tinybert.io.safetensors import read_safetensors, write_safetensors
    file = run_copy / "checkpoint" / "optimizer.safetensors"
    buffers = read_safetensors(str(file))
    key = sorted(buffers)[0]
    buffers[key] = buffers[key].copy()
    buffers[key].flat[0] = np.nan
    write_safetensors(buffers, str(file))
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *TINY, "--epochs", 2], capsys)
    assert rc == 2 and f"optimizer.safetensors: {key!r} holds NaN or infinite values" in err, err


def test_resume_refuses_optimizer_state_of_another_model(tiny, tmp_path):
    tok, texts = tiny
    cfg = TrainingConfig(epochs=1, batch_size=16, lr=3e-3, max_length=32, progress=False)
    model = _tiny_mlm(tok)
    trainer = Trainer(model, MLMTask(tok, texts[:60], texts[60:], cfg), cfg, str(tmp_path), tok)
    trainer.train()
    from safetensors.numpy import load_file, save_file
    opt = tmp_path / "checkpoint" / "optimizer.safetensors"
    buffers = load_file(str(opt))
    save_file({k: v for k, v in buffers.items() if not k.startswith("0.0.")}, str(opt))   # one moment lost
    again = Trainer(_tiny_mlm(tok), MLMTask(tok, texts[:60], texts[60:], cfg), cfg, str(tmp_path), tok)
    with pytest.raises(IncompleteCheckpoint, match="restart their moment estimates from zero"):
        again.train(resume=True)


def test_library_trainer_resume_refuses_another_dataset(tiny, tmp_path):
    tok, texts = tiny
    cfg = TrainingConfig(epochs=1, batch_size=16, lr=3e-3, max_length=32, progress=False)
    Trainer(_tiny_mlm(tok), MLMTask(tok, texts[:60], texts[60:], cfg), cfg, str(tmp_path), tok).train()
    other = Trainer(_tiny_mlm(tok), MLMTask(tok, texts[10:70], texts[70:], cfg), cfg, str(tmp_path), tok)
    with pytest.raises(ResumeMismatch, match="the train data"):
        other.train(resume=True)


# ================================================================================================
# 3. no number goes bad quietly
# ================================================================================================

def _tiny_mlm(tok):
    cfg = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0)
    return tinybert.BertForMaskedLM(cfg, seed=3, dtype=np.float64, attention_backend="numpy")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")         # NumPy's "invalid value" as the NaN spreads
def test_nan_weight_names_the_step_and_the_layer(tiny, tmp_path):
    tok, texts = tiny
    cfg = TrainingConfig(epochs=2, batch_size=16, lr=3e-3, max_length=32, progress=False)
    model = _tiny_mlm(tok)

    def poison(trainer, step, loss):
        if step == 3:
            trainer.model.bert.encoder.layers[1].ffn.fc1.weight.data[0, 0] = np.inf

    trainer = Trainer(model, MLMTask(tok, texts[:80], texts[80:], cfg), cfg, str(tmp_path), tok, on_step=poison)
    with pytest.raises(TrainingDiverged) as e:
        trainer.train()
    msg = str(e.value)
    assert "at step 4 " in msg
    assert "the forward of bert.encoder.layers.1.ffn.fc1 (Linear)" in msg
    assert "parameters holding NaN/inf: bert.encoder.layers.1.ffn.fc1.weight" in msg


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_nan_gradient_stops_before_the_step_and_names_the_layer(tiny, tmp_path, max_grad_norm):
    tok, texts = tiny
    cfg = TrainingConfig(epochs=1, batch_size=16, lr=3e-3, max_length=32, progress=False,
                         max_grad_norm=max_grad_norm)
    model = _tiny_mlm(tok)
    fc2 = model.bert.encoder.layers[0].ffn.fc2
    clean = fc2.backward

    def poisoned_after_two_steps(trainer, step, loss):
        if step == 2:
            fc2.backward = lambda dout: clean(dout) * np.nan       # the loss stays finite

    trainer = Trainer(model, MLMTask(tok, texts[:80], texts[80:], cfg), cfg, str(tmp_path), tok,
                      on_step=poisoned_after_two_steps)
    with pytest.raises(TrainingDiverged) as e:
        trainer.train()
    msg = str(e.value)
    assert "the gradients became non-finite" in msg and "at step 3 " in msg
    assert "the backward of bert.encoder.layers.0.ffn.fc2 (Linear)" in msg
    assert not tinybert.models.nonfinite.nonfinite_parameters(model)          # stopped before the optimizer step


@pytest.mark.parametrize("mask,bad", [
    (np.array([[0.0, 0.0, -10000.0]]), "-10000.0"),
    (np.array([[1, 1, -1]]), "-1"),
    (np.array([[1, 2, 0]]), "2"),
    (np.array([[1.0, np.nan, 1.0]]), "nan"),
])
def test_attention_mask_must_be_zero_one(mask, bad):
    model = tinybert.BertModel(tiny_config())
    with pytest.raises(ValueError, match="additive") as e:
        model.forward(np.array([[1, 2, 3]]), attention_mask=mask)
    assert f"got {bad}" in str(e.value)


@pytest.mark.parametrize("mask", [np.array([[1, 1, 0]]), np.array([[1.0, 1.0, 0.0]]), np.array([[True, True, False]])])
def test_zero_one_masks_of_every_dtype_agree(mask):
    model = tinybert.BertModel(tiny_config(), dtype=np.float64).eval()
    ref, _ = model.forward(np.array([[1, 2, 3]]), attention_mask=np.array([[1, 1, 0]]))
    out, _ = model.forward(np.array([[1, 2, 3]]), attention_mask=mask)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("ids", [np.zeros((1, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)])
def test_empty_batch_or_sequence_is_a_clear_error(ids):
    with pytest.raises(ValueError, match="at least one sequence of at least one token"):
        tinybert.BertForMaskedLM(tiny_config()).forward(ids)


def test_backward_checks_the_gradient_shape():
    config = tiny_config()
    mlm = tinybert.BertForMaskedLM(config)
    logits = mlm.forward(np.array([[1, 2, 3], [4, 5, 6]]))
    for wrong in (np.zeros((2, 4, 60)), logits.reshape(3, 2, 60), np.zeros((2, 3, 61))):
        with pytest.raises(ValueError, match=r"dlogits has shape .* expected the shape of the last forward's output \(2, 3, 60\)"):
            mlm.backward(wrong.astype(np.float32))
    clf = tinybert.BertForSequenceClassification(config)
    clf.forward(np.array([[1, 2, 3], [4, 5, 6]]))
    with pytest.raises(ValueError, match=r"expected .* \(2, 2\)"):
        clf.backward(np.zeros((1, 2), dtype=np.float32))
    enc = tinybert.BertModel(config)
    enc.forward(np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match="dsequence has shape"):
        enc.backward(np.zeros((1, 2, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="dpooled has shape"):
        enc.backward(None, np.zeros((2, 16), dtype=np.float32))


@pytest.mark.parametrize("make,match", [
    (lambda p: tinybert.AdamW(p, lr=float("nan")), r"lr=nan"),
    (lambda p: tinybert.SGD(p, lr=-1), r"lr=-1"),
    (lambda p: tinybert.SGD(p, lr=0.1, momentum=1.5), r"momentum=1.5"),
    (lambda p: tinybert.Adam(p, betas=(1.0, 0.999)), r"betas\[0\]=1.0"),
    (lambda p: tinybert.Adam(p, betas=(0.9,)), r"betas=\(0.9,\)"),
    (lambda p: tinybert.AdamW(p, eps=0.0), r"eps=0.0"),
    (lambda p: tinybert.AdamW(p, weight_decay=float("inf")), r"weight_decay=inf"),
    (lambda p: tinybert.AdamW([{"params": p, "lr": -0.1}]), r"lr=-0.1"),          # a group's own value
    (lambda p: tinybert.SGD([{"params": p, "momentum": float("nan")}], lr=0.1), r"momentum=nan"),
])
def test_optimizer_hyper_parameters_are_validated(make, match):
    params = tinybert.BertModel(tiny_config()).parameters()
    with pytest.raises(ValueError, match=match):
        make(params)


@pytest.mark.parametrize("max_norm", [-1.0, 0.0, float("nan"), float("inf")])
def test_clip_grad_norm_refuses_a_non_positive_or_non_finite_max_norm(max_norm):
    params = tinybert.BertModel(tiny_config()).parameters()
    for p in params:
        p.grad[...] = 1.0
    with pytest.raises(ValueError, match="max_norm"):
        tinybert.clip_grad_norm(params, max_norm)
    assert all((p.grad == 1.0).all() for p in params)                 # no sign flipped, nothing scaled


@pytest.mark.parametrize("warmup,total", [(5, 3), (-1, 10), (0, 0), (1.5, 10), (0, float("nan")), (True, 10)])
def test_schedule_steps_are_validated(warmup, total):
    opt = tinybert.AdamW(tinybert.BertModel(tiny_config()).parameters())
    with pytest.raises(ValueError):
        tinybert.get_linear_schedule_with_warmup(opt, warmup, total)


def _poison(folder, tensor="bert.encoder.layer.0.output.dense.weight", value=np.nan):
    """Write ``value`` into one element of a tensor of the checkpoint in ``folder``."""
    from tinybert.io.safetensors import read_safetensors, write_safetensors
    file = os.path.join(folder, "model.safetensors")
    tensors = read_safetensors(file)
    tensors[tensor] = tensors[tensor].copy()
    tensors[tensor][1, 2] = value
    write_safetensors(tensors, file)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(run_copy, value):
    from tinybert.errors import CheckpointError
    _poison(run_copy / "checkpoint", value=value)
    for cls in (tinybert.BertForMaskedLM, tinybert.BertModel, tinybert.BertForSequenceClassification):
        with pytest.raises(CheckpointError, match=r"tensor 'bert\.encoder\.layer\.0\.output\.dense\.weight' in "
                                                  r".*model\.safetensors holds \d+ NaN and \d+ infinite value\(s\) "
                                                  r"\(the first at index \(1, 2\)"):
            cls.from_pretrained(run_copy / "checkpoint")


def test_the_cli_refuses_a_nan_checkpoint_in_every_verb(run_copy, corpus_file, tmp_path, capsys):
    """predict printed nan, evaluate counted NaN rows as class 0, finetune logged a nan validation
    loss every epoch, explain failed in np.concatenate: now each says which tensor is not finite."""
    ckpt = run_copy / "checkpoint"
    _poison(ckpt)
    before = _snapshot(run_copy)
    for argv in (["predict", "the soup", "--model", ckpt, "--fresh-head"],       # (an MLM: predict needs the flag)
                 ["fill-mask", "the [MASK] is hot", "--model", ckpt],
                 ["evaluate", "--model", ckpt, "--data", corpus_file],
                 ["explain", "the [MASK] is hot", "--model", ckpt],
                 ["finetune", "--model", ckpt, "--out", tmp_path / "ft", "--no-progress"],
                 ["pretrain", "--init-from", ckpt, "--train", corpus_file, "--out", tmp_path / "pt", "--no-progress"],
                 ["pretrain", "--train", corpus_file, "--out", run_copy, "--resume", *TINY]):
        rc, out, err = _cli(argv, capsys)
        assert rc == 2 and "nan" not in out.lower(), argv
        assert "layer.0.output.dense.weight' in " in err and "1 NaN and 0 infinite value(s)" in err, (argv, err)
    assert _snapshot(run_copy) == before
    assert not (tmp_path / "ft").exists() and not (tmp_path / "pt").exists()


@pytest.mark.parametrize("key", ["loss", "accuracy"])
def test_a_non_finite_validation_score_stops_the_run_before_best_and_metrics(tiny, tmp_path, key):
    """A NaN validation loss used to be logged every epoch (a bare NaN in metrics.jsonl, not JSON) and
    best/ kept by the accuracy of NaN logits."""
    tok, texts = tiny
    cfg = TrainingConfig(epochs=2, batch_size=32, max_length=32, progress=False)
    task = ClassificationTask(tok, (texts[:64], ["a", "b"] * 32), (texts[64:96], ["a", "b"] * 16), cfg, ["a", "b"])
    evaluate = task.evaluate

    def nan_score(*args, **kwargs):
        return dict(evaluate(*args, **kwargs), **{key: float("nan")})

    task.evaluate = nan_score
    conf = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32)
    model = tinybert.BertForSequenceClassification(conf, attention_backend="numpy")
    with pytest.raises(TrainingDiverged, match=rf"the validation {key} became nan at step 2 \(epoch 1\)"):
        Trainer(model, task, cfg, str(tmp_path), tok).train()
    assert not (tmp_path / "best").exists()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]   # valid JSON, no eval row
    assert all(r["kind"] == "train" for r in rows)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")         # the overflow itself
def test_overflowing_logits_are_refused_not_scored_as_class_0(tiny):
    """Finite weights can still overflow: evaluate used to count NaN/inf rows as class 0 (argmax), and
    predict printed nan."""
    from tinybert.pipelines.predict import classify
    from tinybert.training.tasks import evaluate_classifier
    tok, texts = tiny
    conf = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32)
    model = tinybert.BertForSequenceClassification(conf, attention_backend="numpy")
    model.bert.pooler.dense.bias.data[...] = 100.0           # pooled = tanh(…) = 1 in every dimension
    model.classifier.weight.data[...] = 3e38                  # near float32's largest: 16 × 3e38 overflows to inf
    ids, lengths = encode_texts(tok, texts[:4], 32, "texts")
    with pytest.raises(ValueError, match=r"the classifier's logits on the evaluated texts hold NaN or infinite "
                                         r"values \(rows \[0, 1, 2, 3\]\)"):
        evaluate_classifier(model, ids, lengths, np.zeros(4, dtype=int), 2)
    with pytest.raises(ValueError, match=r"the classifier's logits hold NaN or infinite values"):
        classify(model, tok, texts[:2])


def test_json_files_of_a_run_never_hold_nan(tmp_path):
    from tinybert.training.checkpoints import write_json
    with pytest.raises(ValueError, match=r"not writing .*m\.json: metrics\.per_class\[1\] = inf is not a finite"):
        write_json(tmp_path / "m.json", {"metrics": {"per_class": [0.5, float("inf")]}})
    assert not (tmp_path / "m.json").exists()


# ================================================================================================
# 4. tables and text read as written
# ================================================================================================

def test_csv_keeps_quoted_commas_and_line_breaks(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b'text,label\r\n"good, not bad",pos\r\n"line one\nline two",neg\r\n"say ""hi""",pos\r\n')
    assert corpus.read_labeled(f) == (["good, not bad", "line one\nline two", 'say "hi"'], ["pos", "neg", "pos"])


@pytest.mark.parametrize("table, kw, message", [
    ("text,text,label\na,b,pos\n", {}, r"which column is the text is ambiguous: .* 'text', 'text'"),
    ("sentence,text,label\na,b,pos\n", {}, r"which column is the text is ambiguous: .* 'sentence', 'text'"),
    ("sentence,label\na,pos\n", {"text_column": "label"}, r"the text and the label would be the same column 'label'"),
    ("x,x,label\na,b,pos\n", {"text_column": "x"}, r"the header names 'x' 2 times"),
    ("sentence,label\n ,pos\n", {}, r"line 2: the text is empty"),
])
def test_a_table_whose_columns_do_not_say_which_is_which_is_refused(tmp_path, table, kw, message):
    """Before, the first match won silently: two text columns (or one named twice) picked one, the
    text column could be the label column, and an empty text trained as [CLS] [SEP]."""
    f = tmp_path / "d.csv"
    f.write_text(table, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        corpus.read_labeled(f, **kw)


def test_csv_row_with_more_fields_than_the_header_is_refused_with_its_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('text,label\n"a\nb",pos\ngood, not bad,pos\n', encoding="utf-8")   # the row starts on line 4
    with pytest.raises(ValueError, match=r"d\.csv, line 4: 3 field\(s\) but the header has 2.*quote a text"):
        corpus.read_labeled(f)


def test_tsv_keeps_bare_quotes(tmp_path):
    f = tmp_path / "sst.tsv"
    f.write_text('sentence\tlabel\nit\'s a "great" film\t1\n"odd\t0\n', encoding="utf-8")
    assert corpus.read_labeled(f) == (['it\'s a "great" film', '"odd'], ["1", "0"])


@pytest.mark.parametrize("text, encoding, advice", [
    ("我喜欢在雨中漫步\n今天下雨\n", "gbk", "iconv -f gb18030"),          # Chinese saved on Windows
    ("我喜欢在雨中漫步\n今天下雨\n", "utf-16-le", "iconv -f utf-16le"),    # UTF-16 without a BOM, no NULs
    ("café\nthé\n", "utf-16-be", "iconv -f utf-16be"),
    ("café\nthé\n", "latin-1", "iconv -f latin1"),
])
def test_a_file_that_is_not_utf8_gets_advice_for_its_likely_encoding(tmp_path, text, encoding, advice):
    """The README says which encodings are detected and how a file that is not UTF-8 is explained:
    before, every such file was told to convert from Latin-1 (mojibake for a GBK file of Chinese,
    the article's language) and UTF-16BE was told utf-16le."""
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode(encoding))
    with pytest.raises(ValueError, match="is not UTF-8") as e:
        corpus.read_texts(f)
    assert advice in str(e.value), str(e.value)
    assert f.read_bytes().decode(advice.split()[-1]) == text        # the advice is right: that codec reads it


def test_txt_splits_on_newline_only(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("one\u2028text\u0085still one\x0cand one\r\nsecond\n", encoding="utf-8", newline="")
    assert corpus.read_texts(f) == ["one\u2028text\u0085still one\x0cand one", "second"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be", "utf-8-sig"])
def test_files_with_a_byte_order_mark_are_read(tmp_path, encoding):
    bom = {"utf-16-be": "\ufeff", "utf-32-be": "\ufeff"}.get(encoding, "")
    txt = tmp_path / "t.txt"
    txt.write_bytes((bom + "café au lait\nnaïve\n").encode(encoding))
    assert corpus.read_texts(txt) == ["café au lait", "naïve"]
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes((bom + "sentence\tlabel\ncafé\tpos\nthé\tneg\n").encode(encoding))
    assert corpus.read_labeled(tsv) == (["café", "thé"], ["pos", "neg"])


def test_undecodable_files_are_named_by_their_encoding(tmp_path):
    broken = tmp_path / "b.txt"
    broken.write_bytes("\ufeffok".encode("utf-16-le") + b"\x00\xd8")          # a lone high surrogate
    with pytest.raises(ValueError, match=r"b\.txt is not UTF-16: .*byte-order mark"):
        corpus.read_texts(broken)
    no_bom = tmp_path / "n.txt"
    no_bom.write_bytes("hello world\n".encode("utf-16-le") + b"\x00\xdc")
    with pytest.raises(ValueError, match="probably UTF-16 or UTF-32 saved without a BOM"):
        corpus.read_texts(no_bom)


@pytest.mark.parametrize("argv,message", [
    (["pretrain", "--out", "x", "--intermediate", "0"], "argument --intermediate: expected an integer >= 1, got '0'"),
    (["pretrain", "--out", "x", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["pretrain", "--out", "x", "--lr", "-1"], "argument --lr: expected a number > 0"),
    (["pretrain", "--out", "x", "--dropout", "1"], "argument --dropout: expected a number in [0, 1)"),
    (["pretrain", "--out", "x", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
    (["pretrain", "--out", "x", "--max-length", "1"], "argument --max-length: expected an integer >= 2"),
    (["pretrain", "--out", "x", "--mlm-probability", "0"], "argument --mlm-probability: expected a number in (0, 1)"),
    (["pretrain", "--out", "x", "--attention-backend", "cudnn"], "argument --attention-backend: invalid choice"),
    (["finetune", "--model", "m", "--out", "x", "--patience", "0"], "argument --patience: expected an integer >= 1"),
    (["fill-mask", "a [MASK]", "--model", "m", "--top-k", "0"], "argument --top-k: expected an integer >= 1"),
])
def test_arguments_are_validated_where_parsed(argv, message, capsys):
    assert message in _cli_usage_error(argv, capsys)


def test_shape_arguments_with_init_from_are_refused(finished_run, tmp_path, corpus_file, capsys):
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path / "x", "--init-from",
                       finished_run / "checkpoint", "--hidden", 32], capsys)
    assert rc == 2 and "--hidden cannot be used with --init-from" in err


def test_max_length_beyond_the_model_is_refused(finished_run, tmp_path, corpus_file, capsys):
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", tmp_path / "x", *TINY, "--max-length", 64],
                      capsys)
    assert rc == 2 and "max_length=64 (--max-length) exceeds the model's max_position_embeddings=32" in err


# ================================================================================================
# 5. bounded work
# ================================================================================================

def test_truncation_is_said(tiny, caplog):
    from tinybert.text.truncation import full_length
    tok, texts = tiny
    short = [t for t in texts if full_length(tok, t) <= 32][:5]
    long_text = " ".join(texts[:10])
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        encode_texts(tok, short, 32, "training texts")
        assert not caplog.records                                  # everything fits: nothing said
        ids, lengths = encode_texts(tok, short + [long_text], 32, "training texts")
    assert "1 of 6 training texts was longer than 32 tokens and was truncated" in caplog.text
    assert lengths[-1] == 32 and ids[-1, 31] == tok.sep_token_id


def test_attention_plot_of_a_long_text_is_truncated_and_says_so(tiny, tmp_path, caplog):
    from tinybert.training.plots import plot_attention
    tok, texts = tiny
    model = _tiny_mlm(tok)
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        path = plot_attention(model, tok, " ".join(texts[:20]), str(tmp_path / "a.png"), max_tokens=16)
    assert os.path.isfile(path) and "only the first 16 are drawn" in caplog.text


def test_wordpiece_training_skips_words_longer_than_bert_reads(tiny):
    _, texts = tiny
    huge = "x" * 100_000 + "y"
    vocab = train_wordpiece(texts + [huge, huge], 300)
    assert vocab == train_wordpiece(texts, 300)                   # the huge word changed nothing
    assert max(len(t) for t in vocab) <= 102                      # 100 characters and "##"
    tok = tinybert.text.tokenizer.wordpiece(huge, set(vocab))
    assert tok == ["[UNK]"]                                       # what BERT's tokenizer makes of it


def test_thousands_of_classes_are_summarised():
    rng = np.random.default_rng(0)
    k = 3000
    y = rng.integers(0, k, 20000)
    pred = np.where(rng.random(20000) < 0.7, y, rng.integers(0, k, 20000))
    pred[:50] = 7
    y[:50] = 8                                                    # the commonest confusion: 8 -> 7
    m = classification_metrics(y, pred, k)
    assert m["confusion_matrix"] is None and m["top_confusions"][0] == [8, 7, 50 + int(((y[50:] == 8) & (pred[50:] == 7)).sum())]
    assert len(json.dumps(m)) < 200 * k                           # linear in K (a K×K matrix: ~3·K² chars)
    assert len(m["top_confusions"]) == MAX_CLASSES_SHOWN
    report = format_classification_report(m, [f"class{i}" for i in range(k)])
    assert len(report.splitlines()) < MAX_CLASSES_SHOWN + 10 and "class8 -> class7: " in report
    from tinybert.training.plots import plot_confusion_matrix
    with pytest.raises(ValueError, match="too many for a readable confusion-matrix plot"):
        plot_confusion_matrix(np.zeros((2, 2)), [str(i) for i in range(k)], "unused.png")


def test_per_class_scores_without_the_matrix_equal_the_matrix_formulas():
    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 6, 500), rng.integers(0, 6, 500)
    cm = confusion_matrix(y, pred, 6).astype(float)
    prf = precision_recall_f1(y, pred, 6)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.allclose(prf["precision"], np.nan_to_num(np.diag(cm) / cm.sum(axis=0)), rtol=0, atol=0)
        assert np.allclose(prf["recall"], np.nan_to_num(np.diag(cm) / cm.sum(axis=1)), rtol=0, atol=0)
    assert prf["support"].tolist() == cm.sum(axis=1).astype(int).tolist()


def test_many_class_training_logs_no_matrix(tiny, tmp_path):
    tok, texts = tiny
    labels = [f"c{i % 40}" for i in range(80)]
    names = sorted(set(labels))
    conf = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32, num_labels=len(names))
    model = tinybert.BertForSequenceClassification(conf, seed=0, attention_backend="numpy")
    cfg = TrainingConfig(epochs=1, batch_size=40, max_length=32, progress=False)
    task = ClassificationTask(tok, (texts[:80], labels), (texts[:80], labels), cfg, names)
    Trainer(model, task, cfg, str(tmp_path), tok).train()
    row = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][-1]
    assert row["kind"] == "eval" and row["confusion_matrix"] is None and len(row["top_confusions"]) <= MAX_CLASSES_SHOWN


@pytest.fixture
def memory_limit_4gb(monkeypatch):
    """The memory limit of the attacker's machine (a 4 GB cap), whatever this machine has."""
    monkeypatch.setenv("TINYBERT_MEMORY_LIMIT", "4GB")


def test_parameter_count_is_the_models_own(tiny):
    from tinybert.config import parameter_count
    conf = tiny_config()
    h = conf.hidden_size
    assert parameter_count(conf) == tinybert.BertForMaskedLM(conf).num_parameters() + h * h + h   # + a pooler
    many = tiny_config(num_labels=500)                # a classifier larger than the MLM head
    assert parameter_count(many) == tinybert.BertForSequenceClassification(many).num_parameters()


@pytest.mark.parametrize("flag, value, named", [
    ("--layers", "100000", "BertConfig.num_hidden_layers=100000"),
    ("--hidden", "99999999999999999999", "BertConfig.hidden_size=99999999999999999999"),
    ("--intermediate", "99999999999999999999", "BertConfig.intermediate_size=99999999999999999999"),
    ("--max-positions", "99999999999999999999", "BertConfig.max_position_embeddings=99999999999999999999"),
    ("--vocab-size", "99999999999999999999", "BertConfig.vocab_size=99999999999999999999"),
])
def test_model_sizes_beyond_memory_are_refused_before_any_work(flag, value, named, tmp_path, memory_limit_4gb,
                                                               capsys):
    """Refused before the corpus is generated or read (it used to allocate 3.5 GB, or fail in NumPy
    with "Maximum allowed dimension exceeded"), naming the flag, the memory and the limit."""
    import time
    t0 = time.perf_counter()
    rc, _, err = _cli(["pretrain", "--out", tmp_path / "r", "--no-progress", flag, value], capsys)
    assert rc == 2 and time.perf_counter() - t0 < 5
    assert err.startswith(f"tinybert pretrain: error: {flag} {value}: ") and named in err
    assert "more than the limit of 4 GB (set by $TINYBERT_MEMORY_LIMIT)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_float64_doubles_the_bound_of_a_model(monkeypatch):
    from tinybert.config import MemoryLimitExceeded, parameter_count
    conf = tiny_config()
    monkeypatch.setenv("TINYBERT_MEMORY_LIMIT", str(parameter_count(conf) * 4))
    tinybert.BertForMaskedLM(conf, dtype=np.float32)                  # fits exactly
    with pytest.raises(MemoryLimitExceeded, match=r"\(64-bit\) would take about"):
        tinybert.BertForMaskedLM(conf, dtype=np.float64)


def test_a_checkpoint_too_large_to_train_names_its_size_not_a_flag(finished_run, tmp_path, monkeypatch, capsys):
    """finetune has no --layers: a model from --model that fits but cannot be trained names its field."""
    from tinybert.config import parameter_count
    from tinybert.io.checkpoint import read_config
    n = parameter_count(read_config(str(finished_run / "checkpoint")))
    monkeypatch.setenv("TINYBERT_MEMORY_LIMIT", str(2 * 4 * n))        # the weights fit, 4 copies do not
    rc, _, err = _cli(["finetune", "--model", finished_run / "checkpoint", "--out", tmp_path / "ft", "--no-progress",
                       "--batch-size", 1, "--max-length", 2], capsys)             # (activations: a few KB)
    assert rc == 2 and "error: the model's " in err and "training a model of " in err and "--layers" not in err, err


def test_a_batch_beyond_memory_is_refused_naming_batch_size(tiny, tmp_path, monkeypatch):
    """The activations of one micro-batch (at most the training set) are bounded with the model's
    training state (weights, gradients, two moments)."""
    from tinybert.config import MemoryLimitExceeded, activation_bytes, parameter_count
    tok, texts = tiny
    model = _tiny_mlm(tok)
    state = 4 * parameter_count(model.config) * 8
    monkeypatch.setenv("TINYBERT_MEMORY_LIMIT", str(state + activation_bytes(model.config, 50, 32, 8)))
    fits = TrainingConfig(epochs=1, batch_size=100, grad_accum_steps=2, max_length=32, progress=False)
    Trainer(model, MLMTask(tok, texts[:100], texts[100:], fits), fits, str(tmp_path / "a"), tok)
    cfg = TrainingConfig(epochs=1, batch_size=100, max_length=32, progress=False)
    with pytest.raises(MemoryLimitExceeded, match=r"^--batch-size 100: the activations of 100 sequences of 32 "
                                                  r"tokens a step \(--grad-accum-steps 1, --max-length 32\)"):
        Trainer(model, MLMTask(tok, texts[:100], texts[100:], cfg), cfg, str(tmp_path / "b"), tok)


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, corpus_file):
    return _pretrain_tiny(tmp_path_factory.mktemp("runs") / "clm", corpus_file, objective="clm")["checkpoint"]


def test_generate_num_beyond_memory_is_refused_before_allocation(causal_run, memory_limit_4gb, capsys):
    """--num 100000000 used to build the prompt's copies, then end in a MemoryError."""
    import time
    t0 = time.perf_counter()
    rc, _, err = _cli(["generate", "the soup", "--model", causal_run, "--sample", "--num", 100_000_000], capsys)
    assert rc == 2 and time.perf_counter() - t0 < 10
    assert err.startswith("tinybert generate: error: --num 100000000: generating 100,000,000 sequences of 24 tokens "
                          "at once would take about ") and "more than the limit of 4 GB" in err, err
    rc, out, err = _cli(["generate", "the soup", "--model", causal_run, "--sample", "--num", 3], capsys)
    assert rc == 0 and len(out.splitlines()) == 3, err


@pytest.mark.parametrize("flag", ["--steps", "--max-steps"])
def test_explain_steps_are_bounded(finished_run, flag, capsys):
    """--steps 100000000 used to take 1.7 GB and run for minutes."""
    rc, _, err = _cli(["explain", "the [MASK] is hot", "--model", finished_run / "checkpoint", flag, 100_000_000],
                      capsys)
    name = flag.lstrip("-").replace("-", "_")
    assert rc == 2 and f"{name}=100000000 ({flag}): expected at most 100,000 intervals" in err, err


def test_corpus_size_beyond_memory_is_refused_before_generating(tmp_path, memory_limit_4gb, capsys):
    """--corpus-size 99999999999999999999 used to generate for ever."""
    rc, _, err = _cli(["pretrain", "--out", tmp_path / "r", *TINY, "--corpus-size", "99999999999999999999"], capsys)
    assert rc == 2 and err.startswith("tinybert pretrain: error: --corpus-size 99999999999999999999: generating "
                                      "99,999,999,999,999,999,999 documents and their token ids would take "), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "evaluate"])
def test_files_too_large_to_read_are_refused_before_reading(finished_run, tmp_path, verb, memory_limit_4gb, capsys):
    """A 5 GB .txt used to be read whole and end in a MemoryError (here a sparse 1 GB file, 6 GB once read)."""
    big = tmp_path / ("big.txt" if verb != "finetune" else "big.tsv")
    with open(big, "wb") as f:
        f.truncate(10**9)                        # sparse: no disk used
    argv = {"pretrain": ["pretrain", "--train", big, "--out", tmp_path / "r", *TINY],
            "finetune": ["finetune", "--model", finished_run / "checkpoint", "--train", big, "--out", tmp_path / "r"],
            "evaluate": ["evaluate", "--model", finished_run / "checkpoint", "--data", big]}[verb]
    flag = "--data" if verb == "evaluate" else "--train"
    rc, _, err = _cli(argv, capsys)
    assert rc == 2 and f"error: {flag} {big}: reading 1 GB of text (about 6× its size in memory" in err, err
    assert "would take about 6 GB, more than the limit of 4 GB" in err
    assert not (tmp_path / "r").exists()


def test_a_vocab_txt_too_large_to_load_is_refused_before_reading(tmp_path, memory_limit_4gb):
    from tinybert.text.tokenizer import BertTokenizer
    vocab = tmp_path / "vocab.txt"
    with open(vocab, "wb") as f:
        f.truncate(10**9)                        # sparse: no disk used
    with pytest.raises(ValueError, match=r"the vocabulary .*vocab\.txt \(1 GB\) would take about 40 GB, more than "
                                         r"the limit of 4 GB"):
        BertTokenizer(str(vocab))


# ================================================================================================
# 6. clear errors, never a traceback, for the user's mistakes
# ================================================================================================

def test_out_that_is_a_file_or_under_a_file(tmp_path, corpus_file, capsys):
    f = tmp_path / "file.txt"
    f.write_text("data", encoding="utf-8")
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", f, *TINY], capsys)
    assert rc == 2 and f"--out {f}: is a file" in err
    rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", f / "run", *TINY], capsys)
    assert rc == 2 and f"{f} is a file, so no folder can be made under it" in err
    assert f.read_text(encoding="utf-8") == "data"


def _make_read_only(folder):
    """chmod a-w; root ignores that, so there the immutable attribute (chattr +i) is used. -> undo()"""
    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK):
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                             capture_output=True).returncode != 0:
            os.chmod(folder, 0o755)
            pytest.skip("running as root on a file system without chattr +i: no folder can be made read-only")
        return lambda: (subprocess.run(["chattr", "-i", str(folder)]), os.chmod(folder, 0o755))
    return lambda: os.chmod(folder, 0o755)


def test_read_only_out(tmp_path, corpus_file, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = _make_read_only(ro)
    try:
        rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", ro, *TINY], capsys)
        assert rc == 2 and f"--out {ro}: the folder is not writable" in err
        rc, _, err = _cli(["pretrain", "--train", corpus_file, "--out", ro / "sub", *TINY], capsys)
        assert rc == 2 and f"--out {ro / 'sub'}: cannot create the folder" in err
    finally:
        undo()


def test_run_folder_errors_are_value_errors_for_the_library():
    assert issubclass(RunFolderBusy, RunFolderError) and issubclass(RunFolderError, ValueError)


def test_a_local_folder_named_like_the_packaged_model_is_that_folder(tmp_path, monkeypatch):
    """As in transformers, an existing local path comes first: a folder ./all-MiniLM-L6-v2 (a user's
    own copy, fine-tuned say) is read, not silently replaced by the packaged model (before: the
    packaged model won)."""
    from tinybert.hub import PACKAGED_MODEL, resolve_model_path
    monkeypatch.chdir(tmp_path)
    packaged = resolve_model_path(PACKAGED_MODEL)
    assert os.path.isdir(packaged) and not packaged.startswith(str(tmp_path))
    tinybert.BertModel(tiny_config()).save_pretrained(tmp_path / PACKAGED_MODEL)
    assert resolve_model_path(PACKAGED_MODEL) == PACKAGED_MODEL
    assert tinybert.BertModel.from_pretrained(PACKAGED_MODEL).config.hidden_size == tiny_config().hidden_size


def test_a_vocabulary_larger_than_the_models_embeddings_is_refused_naming_both_files(tmp_path):
    """A checkpoint folder whose vocab.txt holds more tokens than config.json's vocab_size (files of
    two checkpoints mixed): before, it loaded, and a text using a token past the table failed later
    with "input_ids contains 95, outside [0, vocab_size=60)", naming neither file."""
    from tinybert.text.tokenizer import BertTokenizer, write_vocab
    write_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)], str(tmp_path / "v.txt"))
    tinybert.BertForMaskedLM(tiny_config(vocab_size=60)).save_pretrained(
        tmp_path / "ck", tokenizer=BertTokenizer(str(tmp_path / "v.txt")))
    with pytest.raises(ValueError, match=r"vocab.txt has 100 tokens but .*config.json gives the model vocab_size=60"):
        BertTokenizer.from_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "vocab.txt").write_text("".join(t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                          "[MASK]", "w1"]), encoding="utf-8")
    assert BertTokenizer.from_pretrained(tmp_path / "ck").vocab_size == 6      # fewer tokens: fine, as in HF


def test_the_optimizer_refuses_params_it_would_update_wrong():
    """A parameter listed twice (or in two groups) was stepped twice a step; a misspelt group key
    ("lrr") was ignored; a model instead of its parameters and a gradient of another shape failed
    deep inside (not iterable / operands could not be broadcast)."""
    model = tinybert.BertModel(tiny_config())
    params = model.parameters()
    for opt in (tinybert.AdamW, tinybert.Adam, tinybert.SGD):
        with pytest.raises(ValueError, match=r"parameter 1 of param group 0 \(60, 16\) is also in group 0: it would "
                                             r"be updated twice"):
            opt(params[:1] + params[:1], lr=1e-3)
        with pytest.raises(ValueError, match=r"is also in group 0"):
            opt([{"params": params}, {"params": params[:2]}], lr=1e-3)
        with pytest.raises(ValueError, match=r"param group 0 has unknown key\(s\) \['lrr'\]"):
            opt([{"params": params, "lrr": 1.0}], lr=1e-3)
        with pytest.raises(TypeError, match=r"got a BertModel: pass model.parameters\(\)"):
            opt(model, lr=1e-3)
    opt = tinybert.AdamW(params, lr=1e-3)
    params[0].grad = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"shape \(60, 16\) has a gradient of shape \(3,\)"):
        opt.step()
