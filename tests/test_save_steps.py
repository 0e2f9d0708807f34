"""Checkpoints every N steps (``--save-steps``): a run killed with SIGKILL, between steps or while
writing a checkpoint, resumes from its last checkpoint and ends bit for bit where an uninterrupted run
ends; and the progress lines a run writes when stderr is not a terminal."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tinybert.text.tokenizer import write_vocab
from tinybert.text.wordpiece_trainer import train_wordpiece
from tinybert.training import TrainingConfig, corpus
from tinybert.training.progress import ProgressLines

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(out, vocab, mode, n=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(HERE, "_killed_run.py"), str(out), str(vocab), mode, str(n)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    write_vocab(train_wordpiece(corpus.generate_corpus(120, seed=0), 200), str(folder / "vocab.txt"))
    return folder


def _final(out):
    with np.load(out / "final.npz") as z:
        return {k: z[k] for k in z.files}


def _rows(out):
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in open(out / "metrics.jsonl")]


def test_sigkilled_run_resumes_bit_identical(vocab, tmp_path):
    """7 steps an epoch, 14 in all, checkpoints every 3 steps and at each epoch's end (3, 6, 7, 9, 12, 14):
    killed after step 11 (mid-epoch 2; resumes at 9), and killed while writing step 6's checkpoint (the
    one of step 3 survives).

    Bit for bit is safe on every CPU: the run is compared with itself (same code, same math library,
    same BLAS and thread count, set by the same environment), never with another implementation."""
    ref = _run(tmp_path / "ref", vocab, "full")         # the reference in the same environment (threads)
    assert ref.returncode == 0, ref.stderr             # as the killed runs: BLAS rounds by thread count
    for mode, n, resumed_at in [("after-step", 11, 9), ("while-saving", 6, 3)]:
        out = tmp_path / mode
        killed = _run(out, vocab, mode, n)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        state = json.load(open(out / "checkpoint" / "training_state.json"))
        assert state["step"] == resumed_at
        resumed = _run(out, vocab, "resume")
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming from {out / 'checkpoint'} at step {resumed_at}" in resumed.stdout
        assert "final step 14" in resumed.stdout
        a, b = _final(tmp_path / "ref"), _final(out)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert _rows(out) == _rows(tmp_path / "ref")


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_save_steps_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=r"save_steps=.*--save-steps.*positive integer"):
        TrainingConfig(save_steps=value)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_progress_seconds_must_be_positive(value):
    with pytest.raises(ValueError, match="progress_seconds"):
        TrainingConfig(progress_seconds=value)


def test_cli_refuses_save_steps_zero(capsys):
    from tinybert.cli import main
    with pytest.raises(SystemExit):
        main(["pretrain", "--out", "x", "--save-steps", "0"])
    assert "argument --save-steps: expected an integer >= 1, got '0'" in capsys.readouterr().err


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_lines_every_interval_with_rate_and_eta():
    import io
    clock, stream = FakeClock(), io.StringIO()
    p = ProgressLines("pretrain", total_steps=100, epochs=2, every_seconds=30, stream=stream, clock=clock)
    written = []
    for step in range(1, 101):
        clock.t += 2.0                                   # 2 s a step, 500 tokens a step
        written.append(p.update(step, 1 + (step > 50), 1.0 / step, 500))
    lines = [w for w in written if w]
    assert stream.getvalue().splitlines() == lines
    assert [int(l.split()[2].split("/")[0]) for l in lines] == [1, 16, 31, 46, 61, 76, 91]   # first step, then every 30 s
    assert lines[0] == "pretrain step 1/100 (1.0%) epoch 1/2 loss 1.0000 | ? tok/s | elapsed 0:00:00 | eta ?"
    assert "| 250 tok/s |" in lines[1]                   # 15 steps x 500 tokens in 30 s
    assert lines[1].endswith("| elapsed 0:00:30 | eta 0:02:48")   # 84 steps left at 2 s each
    assert "epoch 2/2" in lines[-1]


def _tiny_run(tmp_path, **kw):
    import tinybert
    from tinybert.text.tokenizer import BertTokenizer
    from tinybert.training import MLMTask, Trainer
    texts = corpus.generate_corpus(60, seed=0)
    tmp_path.mkdir()
    write_vocab(train_wordpiece(texts, 150), str(tmp_path / "vocab.txt"))
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    cfg = TrainingConfig(epochs=1, batch_size=16, max_length=24, log_every=100, **kw)
    mc = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=16, max_position_embeddings=24)
    model = tinybert.BertForMaskedLM(mc, seed=0, attention_backend="numpy")
    return Trainer(model, MLMTask(tok, texts[:50], texts[50:], cfg), cfg, str(tmp_path / "run"), tok).train()


def test_a_log_file_gets_progress_lines_and_no_bar(tmp_path, capsys):
    """stderr captured (not a terminal): a line at the first step and then every progress_seconds;
    progress=False: none."""
    _tiny_run(tmp_path / "a", progress_seconds=1e-6)                  # every step is due
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if " step " in l]
    assert len(lines) == 4, err                                      # 50 texts / 16 = 4 steps
    assert all(k in lines[-1] for k in ("step 4/4 (100.0%)", "loss", "tok/s", "elapsed", "eta 0:00:00"))
    assert "\r" not in err                                           # no tqdm bar redrawn in the log
    _tiny_run(tmp_path / "b", progress_seconds=3600)
    assert len([l for l in capsys.readouterr().err.splitlines() if " step " in l]) == 1   # the first step only
    _tiny_run(tmp_path / "c", progress=False, progress_seconds=1e-6)
    assert " step " not in capsys.readouterr().err
