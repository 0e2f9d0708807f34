"""Data parallelism (tinybert/training/distributed.py): N ranks and K micro-batches give the model
one process gives on the whole batch, to rounding (float64, dropout on).

The key bias b_K is left out of the weight comparisons, and checked to be why: its gradient is 0 in
exact arithmetic (q·b_K is added to every score of a row; softmax ignores that), so what AdamW sees
there is rounding noise ~1e-21, which Adam's g/√v scales up to lr-sized steps of random sign — in
any run, even one process with another thread count. The test asserts that gradient is noise.
"""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tinybert_kernels import dispatch as tk
from tinybert.training import corpus, distributed
from tinybert_kernels import dropout as dropout_kernel
from tinybert_kernels import philox

sys.path.insert(0, os.path.dirname(__file__))
import dp_runs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
RTOL = 1e-10


def max_relative_difference(a: dict, b: dict) -> float:
    """max over tensors of max|a − b| / max|b|, the key bias excepted (see the module docstring)."""
    return max(float(np.abs(a[n] - b[n]).max() / np.abs(b[n]).max()) for n in b if not n.endswith("key.bias"))


def assert_key_bias_gradient_is_noise(trainer):
    grads = {n: p.grad for n, p in trainer.model.named_parameters()}
    for n in grads:
        if n.endswith("key.bias"):
            scale = np.abs(grads[n.replace("key.bias", "key.weight")]).max()
            assert np.abs(grads[n]).max() <= 1e-12 * scale, n


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference of each kind (K = 1), trained once for the module."""
    folder = tmp_path_factory.mktemp("dp")
    tok, texts = dp_runs.tokenizer(str(folder))
    out = {}
    for kind in dp_runs.KINDS:
        trainer, weights = dp_runs.train(kind, str(folder / kind), tok, texts)
        assert_key_bias_gradient_is_noise(trainer)
        losses = np.array([r["loss"] for r in trainer.history if r["kind"] == "train"])
        scores = np.array([[r["loss"], r["accuracy"]] for r in trainer.history if r["kind"] == "eval"])
        out[kind] = (weights, losses, scores)
    return folder, tok, texts, out


# ------------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(15, 2), (7, 3), (2, 4), (16, 4)])
def test_shards_cover_the_batch_once_in_order(n, world):
    shards = [distributed.shard(n, world, r) for r in range(world)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
    sizes = [b - a for a, b in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,k,world", [(15, 1, 2), (15, 4, 2), (10, 3, 3), (3, 3, 2)])
def test_micro_batches_of_all_ranks_cover_the_batch_once(n, k, world):
    rows = sorted(r for rank in range(world) for a, b in distributed.micro_batches(n, k, world, rank)
                  for r in range(a, b))
    assert rows == list(range(n))


@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 6), (9, 5, 5)])
def test_hidden_dropout_of_a_slice_is_the_whole_batch_mask_at_its_rows(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    whole = dropout_kernel.apply_mask(x, 0.3, 123)
    assert np.array_equal(whole, x * np.where(philox.dropout_keep(123, 0.3, shape), 1 / 0.7, 0))
    row = int(np.prod(shape[1:]))
    for lo, hi in [(0, 1), (1, 3), (2, shape[0])]:
        part = np.ascontiguousarray(x[lo:hi])
        assert np.array_equal(dropout_kernel.apply_mask(part, 0.3, 123, lo * row), whole[lo:hi])
        assert np.array_equal(philox.dropout_keep(123, 0.3, part.shape, lo * row),
                              philox.dropout_keep(123, 0.3, shape)[lo:hi])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_attention_dropout_of_a_slice_is_the_whole_batch_mask_at_its_rows(backend):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((5, 2, 7, 4)) for _ in range(3))
    out, lse = tk.attention_forward(q, k, v, dropout_p=0.2, dropout_seed=99, backend=backend)
    dout = rng.standard_normal(out.shape)
    grads = tk.attention_backward(q, k, v, out, lse, dout, dropout_p=0.2, dropout_seed=99, backend=backend)
    s = slice(2, 4)
    out2, lse2 = tk.attention_forward(q[s], k[s], v[s], dropout_p=0.2, dropout_seed=99, backend=backend,
                                      dropout_offset=2)
    grads2 = tk.attention_backward(q[s], k[s], v[s], out2, lse2, dout[s], dropout_p=0.2, dropout_seed=99,
                                   backend=backend, dropout_offset=2)
    # exact: a rank's rows are computed by the same code on the same tiles as in the whole batch
    assert np.array_equal(out[s], out2)
    for g, g2 in zip(grads, grads2):
        assert np.array_equal(g[s], g2)
    # the offset matters: without it the slice draws rows 0-1's masks
    out3, _ = tk.attention_forward(q[s], k[s], v[s], dropout_p=0.2, dropout_seed=99, backend=backend)
    assert not np.array_equal(out[s], out3)


@pytest.mark.parametrize("offset", [-1, 1.5, True, "2", np.float64(2.0)])
def test_every_backend_takes_a_batch_offset_and_checks_it(offset):
    """Every backend takes dropout_offset (the CUDA kernels are proven equal to the whole batch's
    rows under the simulator: tests/_cudasim_attention.py), and every one refuses a bad one."""
    from tinybert_kernels import attention_cuda, attention_cuda_tiled

    for backend in ("numpy", "numba", "cuda"):
        assert tk._offset_argument(backend, 0.1, 2) == {"dropout_offset": 2}
        assert tk._offset_argument(backend, 0.1, 0) == tk._offset_argument(backend, 0.0, 2) == {}
        with pytest.raises(ValueError, match=re.escape(f"dropout_offset={offset!r}: expected an integer >= 0")):
            tk._offset_argument(backend, 0.1, offset)
    q = np.zeros((1, 1, 4, 4))
    drop = dict(dropout_p=0.1, dropout_seed=7, dropout_offset=offset)
    calls = [lambda b=b: tk.attention_forward(q, q, q, backend=b, **drop) for b in ("numpy", "numba")]
    calls += [lambda b=b: tk.attention_backward(q, q, q, q, q[..., 0], q, backend=b, **drop)
              for b in ("numpy", "numba")]
    calls += [lambda m=m: m.attention_forward(q, q, q, **drop) for m in (attention_cuda, attention_cuda_tiled)]
    calls += [lambda m=m: m.attention_backward(q, q, q, q, q[..., 0], q, **drop)
              for m in (attention_cuda, attention_cuda_tiled)]
    for call in calls:                      # the CUDA modules check it before any launch
        with pytest.raises(ValueError, match="dropout_offset="):
            call()


def test_a_launcher_without_mpi4py_is_a_clear_error(monkeypatch):
    assert isinstance(distributed.world({}), distributed.SingleProcess)
    assert isinstance(distributed.world({"PMI_SIZE": "1"}), distributed.SingleProcess)
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py -> ImportError
    for env in ({"PMI_SIZE": "2", "PMI_RANK": "0"}, {"OMPI_COMM_WORLD_SIZE": "4"}, {"PMIX_RANK": "1"}):
        with pytest.raises(distributed.DistributedError, match=r"mpi4py is not installed.*tinybert\[mpi\]"):
            distributed.world(env)


def test_grad_accum_steps_must_fit_the_batch():
    from tinybert.training import TrainingConfig

    with pytest.raises(ValueError, match="grad_accum_steps=0"):
        TrainingConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match=r"grad_accum_steps=9 \(--grad-accum-steps\) exceeds batch_size=8"):
        TrainingConfig(batch_size=8, grad_accum_steps=9)


# ------------------------------------------------------------------------------------------------
# equality with one process
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", dp_runs.KINDS)
def test_grad_accumulation_gives_the_one_batch_model(runs, kind):
    folder, tok, texts, ref = runs
    trainer, weights = dp_runs.train(kind, str(folder / f"{kind}_k4"), tok, texts, grad_accum_steps=4)
    assert_key_bias_gradient_is_noise(trainer)
    rel = max_relative_difference(weights, ref[kind][0])
    print(f"{kind}: K=4 micro-batches vs one batch, max relative difference {rel:.1e}")
    assert rel <= RTOL


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: install the [mpi] extra (mpi4py + mpich)")
def test_two_ranks_give_the_one_process_model(runs):
    pytest.importorskip("mpi4py", reason="install the [mpi] extra (mpi4py + mpich)")
    folder, _, _, ref = runs
    work = folder / "mpi"
    work.mkdir()
    _, tok, texts, _ = runs
    dp_runs.train("pretrain", str(work / "stopped1"), tok, texts, stop_at=5)   # for the ranks to resume
    assert json.load(open(work / "stopped1" / "checkpoint" / "training_state.json"))["step"] == 5
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(HERE, "dp_runs.py"), str(work)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for epoch in range(1, dp_runs.EPOCHS + 1):    # rank 0 alone prints: once per run (+ stopped1's resumed run)
        assert proc.stdout.count(f"epoch {epoch}:") == len(dp_runs.KINDS) + 1, proc.stdout
    for kind in dp_runs.KINDS:
        weights, losses, scores = ref[kind]
        assert len(scores) == dp_runs.EPOCHS
        ranks = [dict(np.load(work / f"{kind}_rank{r}.npz")) for r in (0, 1)]
        for r, got in enumerate(ranks):
            loss_rel = float(np.abs(got.pop("__losses__") - losses).max() / np.abs(losses).max())
            got_scores = got.pop("__eval__")                         # validation of every epoch, sharded
            eval_rel = float(np.abs(got_scores[:, 0] - scores[:, 0]).max() / np.abs(scores[:, 0]).max())
            rel = max_relative_difference(got, weights)
            print(f"{kind}: rank {r} of 2 vs one process after {dp_runs.EPOCHS} epochs, max relative difference "
                  f"{rel:.1e} (training losses {loss_rel:.1e}, validation losses {eval_rel:.1e})")
            assert rel <= RTOL and loss_rel <= RTOL and eval_rel <= RTOL
            # validation accuracy of every epoch, exactly: a count of argmaxes over logits that differ by
            # ~1e-14 relative (same machine, same math library); only a tie that close could flip one
            assert np.array_equal(got_scores[:, 1], scores[:, 1])
        # the ranks hold one model, bit for bit: Allreduce hands both the same bytes, and both run the
        # same update code on them (no vendor library sits between that could differ)
        for n in ranks[0]:
            assert np.array_equal(ranks[0][n], ranks[1][n]), n
        run_config = json.load(open(work / kind / "run_config.json"))
        assert run_config["world_size"] == 2
        assert run_config["training"]["batch_size"] == (9 if kind == "finetune" else 15)   # the global batch
    # a stop asked on both ranks after step 3 is agreed on at the next all-reduce: both stop after step 4
    state = json.load(open(work / "stopped" / "checkpoint" / "training_state.json"))
    assert state["step"] == 4
    # ... and the run resumes in one process (another N, and K = 1) to the uninterrupted model
    _, resumed = dp_runs.train("pretrain", str(work / "stopped"), tok, texts, resume=True)
    rel = max_relative_difference(resumed, ref["pretrain"][0])
    print(f"pretrain: 2 ranks x 2 micro-batches for 4 steps, resumed in one process: max relative difference {rel:.1e}")
    assert rel <= RTOL
    assert json.load(open(work / "stopped" / "run_config.json"))["world_size"] == 1
    # a run stopped in one process after step 5 (in epoch 1) resumed on 2 ranks: the uninterrupted model too
    for r in (0, 1):
        rel = max_relative_difference(dict(np.load(work / f"resumed_rank{r}.npz")), ref["pretrain"][0])
        print(f"pretrain: stopped after 5 steps in one process, resumed on 2 ranks (rank {r}): max relative "
              f"difference {rel:.1e}")
        assert rel <= RTOL
    assert json.load(open(work / "stopped1" / "run_config.json"))["world_size"] == 2


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: install the [mpi] extra (mpi4py + mpich)")
def test_ranks_that_disagree_or_fail_stop_every_rank(tmp_path):
    """Rank 1 starting with other settings is refused at the start (a hash of the configuration and
    data, compared); a rank failing alone stops the others (MPI_Abort), instead of leaving them
    waiting in the next all-reduce."""
    pytest.importorskip("mpi4py", reason="install the [mpi] extra (mpi4py + mpich)")
    script = tmp_path / "bad_rank.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import numpy as np\n"
        "import dp_runs\n"
        "from tinybert.training import distributed, trainer\n"
        "world = distributed.world()\n"
        "mode = sys.argv[2]\n"
        "tok, texts = dp_runs.tokenizer(sys.argv[1])\n"
        "if mode == 'disagree' and world.rank == 1:\n"
        "    texts = texts[1:] + texts[:1]\n"
        "if mode == 'fail':\n"
        "    step = trainer.Trainer._step\n"
        "    def failing(self, bi, batch):\n"
        "        if self.step == 2 and world.rank == 1:\n"
        "            raise OSError('rank 1 lost its disk')\n"
        "        return step(self, bi, batch)\n"
        "    trainer.Trainer._step = failing\n"
        "dp_runs.train('pretrain', sys.argv[1] + '/' + mode, tok, texts, 1, world)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    for mode, message in (("disagree", r"ranks \[1\] have a different configuration and data from rank 0"),
                          ("fail", r"\[rank 1 of 2\] OSError: rank 1 lost its disk")):
        proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), str(tmp_path), mode],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode != 0
        assert re.search(message, proc.stderr), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "fail" / "checkpoint")   # stopped in epoch 1: nothing half-written


def test_the_cli_under_a_launcher_without_mpi4py_says_so(monkeypatch, tmp_path, capsys):
    from tinybert import cli

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    assert cli.main(["pretrain", "--out", str(tmp_path / "run")]) == 2
    assert "mpi4py is not installed" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")                      # refused before anything was written


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: install the [mpi] extra (mpi4py + mpich)")
def test_mpiexec_tinybert_pretrain_and_finetune(tmp_path):
    """The command line under mpiexec: rank 0 alone prints and writes; run_config.json says N; the
    fine-tuned model is the one a single process fine-tunes."""
    pytest.importorskip("mpi4py", reason="install the [mpi] extra (mpi4py + mpich)")
    exe = shutil.which("tinybert", path=os.path.dirname(sys.executable))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([MPIEXEC, "-n", "2", exe, "pretrain", "--out", str(out), "--epochs", "1",
                           "--corpus-size", "200", "--layers", "1", "--hidden", "16", "--heads", "2",
                           "--vocab-size", "150", "--batch-size", "15", "--max-length", "24", "--max-positions", "24",
                           "--grad-accum-steps", "2", "--no-progress", "--attention-backend", "numpy"],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint: ") == 1 and proc.stdout.count("epoch 1:") == 1, proc.stdout
    run_config = json.load(open(out / "run_config.json"))
    assert run_config["world_size"] == 2 and run_config["training"]["grad_accum_steps"] == 2
    assert (out / "loss.png").is_file() and (out / "checkpoint" / "model.safetensors").is_file()
    written = sorted(f for f in os.listdir(out) if not f.startswith("."))     # (.tinybert.lock: rank 0's claim)
    assert written == ["attention.png", "checkpoint", "loss.png", "metrics.jsonl", "run_config.json", "vocab.txt"]
    # ... and `mpiexec -n 2 tinybert finetune` from it: the model `tinybert finetune` gives in one process
    from tinybert.io.safetensors import read_safetensors

    finetune = [exe, "finetune", "--model", str(out / "checkpoint"), "--epochs", "1", "--batch-size", "16",
                "--max-length", "24", "--dtype", "float64", "--no-progress", "--attention-backend", "numpy"]
    one = subprocess.run(finetune + ["--out", str(tmp_path / "ft1")], capture_output=True, text=True, timeout=240,
                         env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([MPIEXEC, "-n", "2"] + finetune + ["--out", str(tmp_path / "ft2")], capture_output=True,
                         text=True, timeout=240, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("epoch 1:") == 1, two.stdout
    assert json.load(open(tmp_path / "ft2" / "run_config.json"))["world_size"] == 2
    weights = [read_safetensors(tmp_path / ft / "checkpoint" / "model.safetensors") for ft in ("ft1", "ft2")]
    rel = max_relative_difference(weights[1], weights[0])
    print(f"tinybert finetune, float64: mpiexec -n 2 vs one process, max relative difference {rel:.1e}")
    assert rel <= RTOL
    scores = [json.load(open(tmp_path / ft / "test_metrics.json")) for ft in ("ft1", "ft2")]
    assert scores[0]["accuracy"] == scores[1]["accuracy"]


def test_cross_attention_dropout_of_a_slice_is_the_whole_batch_at_its_rows():
    """A decoder's cross-attention draws per global row too: a slice of the batch with its offset
    gives the whole batch's rows (forward and both input gradients), and set_batch_offset reaches
    the cross-attention of every decoder layer."""
    from tinybert.config import BertConfig
    from tinybert.nn.cross_attention import CrossAttention
    from tinybert.nn.decoder import Decoder

    rng = np.random.default_rng(3)
    x, dout = (rng.standard_normal((5, 4, 8)) for _ in range(2))        # decoder states [B, Tq, C]
    memory = rng.standard_normal((5, 6, 8))                              # encoder output [B, Tk, C]
    memory_keep = np.ones((5, 6), dtype=bool)
    memory_keep[2, 4:] = False

    def run(lo, hi, offset):
        """(y, dx, dmemory) of rows lo:hi, the layer's rows counted from ``offset``."""
        layer = CrossAttention(8, 2, attention_dropout=0.3, rng=np.random.default_rng(11),
                               dtype=np.float64, backend="numpy")
        layer.batch_offset = offset
        y = layer(x[lo:hi], memory[lo:hi], memory_keep[lo:hi])
        return (y, *layer.backward(dout[lo:hi]))

    whole, part, unshifted = run(0, 5, 0), run(2, 4, 2), run(2, 4, 0)
    for name, w, p in zip(["y", "dx", "dmemory"], whole, part):
        np.testing.assert_allclose(p, w[2:4], rtol=1e-12, atol=1e-15, err_msg=name)
    # the offset matters: without it the slice draws rows 0-1's masks
    assert np.abs(unshifted[0] - whole[0][2:4]).max() > 1e-3 * np.abs(whole[0]).max()

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, is_decoder=True, add_cross_attention=True)
    decoder = Decoder(config, np.random.default_rng(0), np.random.default_rng(0), np.float64, "numpy")
    distributed.set_batch_offset(decoder, 3)
    assert [(layer.attention.batch_offset, layer.crossattention.batch_offset) for layer in decoder.layers] \
        == [(3, 3), (3, 3)]


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: install the [mpi] extra (mpi4py + mpich)")
@pytest.mark.parametrize("rank1_change,message", [
    (["--train", "no-such-file.txt"], r"no such file or folder: no-such-file.txt"),      # a file one rank lacks
    (["--epochs", "many"], r"argument --epochs: .*many"),                                # a usage error
    (["--hidden", "32"], r"ranks \[1\] have a different model \(its configuration and parameter shapes\)"),
])
def test_a_rank_that_fails_or_differs_at_the_start_stops_every_rank(tmp_path, rank1_change, message):
    """`mpiexec -n 2 tinybert pretrain` where rank 1 alone is given a missing file, a bad flag or
    another model shape: every rank stops within the timeout (before: the other rank spun at 94% CPU
    forever, or died in MPI_Bcast with "message sizes do not match") and the reason is printed.
    (The "[rank 1 of 2] exited with status 2 … stopping all 2 ranks" lines after the reason are not
    asserted: mpiexec forwards output asynchronously and may drop the last lines when it aborts.)"""
    pytest.importorskip("mpi4py", reason="install the [mpi] extra (mpi4py + mpich)")
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(corpus.generate_corpus(120, seed=0)) + "\n", encoding="utf-8")
    common = ["pretrain", "--out", str(tmp_path / "run"), "--train", str(corpus_file), "--epochs", "1",
              "--layers", "1", "--hidden", "16", "--heads", "2", "--vocab-size", "150", "--max-positions", "24",
              "--no-progress", "--attention-backend", "numpy"]
    script = tmp_path / "rank_differs.py"
    script.write_text("import json, sys\nfrom tinybert.training import distributed\nfrom tinybert.cli import main\n"
                      "argv = json.loads(sys.argv[1])\n"
                      "if distributed.world().rank == 1:\n    argv += json.loads(sys.argv[2])\n"
                      "sys.exit(main(argv))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), json.dumps(common),
                           json.dumps(rank1_change)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoint")
