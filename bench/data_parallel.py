"""Data parallelism, measured here and modelled for a cluster.

1. Measured (this machine): training steps of a small BERT (L=2, H=128, A=4, I=512, batch 32 x 64
   tokens, float32, dropout 0.1) through the real ``Trainer`` step — forward, backward, gradient
   all-reduce, AdamW — as one process with 2 threads against ``mpiexec -n 2`` ranks with 1 thread
   each, the same global batch (and 1 process with 1 thread, the base of both). The sides alternate (A B A B ...) so that machine noise hits
   both alike; medians are reported. Also the bytes all-reduced per step (every trainable gradient,
   float32, plus 4 float64 of loss statistics).

2. Modelled: a ring all-reduce of S bytes over N machines sends 2(N−1)/N · S bytes from each machine
   in 2(N−1) messages (reduce-scatter, then all-gather), so

       T_ring = 2(N−1)/N · S / β + 2(N−1) · α          β: link bandwidth, α: per-message latency

   For BERT-base (110M parameters, float32 gradients: S = 440 MB) at 10 and 100 Gb/s on 8–64
   machines. When the all-reduce of one layer's gradients overlaps the backward of the layers
   below it (Horovod, PyTorch DDP), communication hides behind compute while a step's compute
   time is at least T_ring: the table's figure is the shortest compute step that still hides it.

3. Tried: overlapping the all-reduce with the backward (``Iallreduce``). ``overlap_allreduce``
   starts the all-reduce of each encoder layer's gradients as soon as that layer's backward ends
   (the layers run top to bottom in the backward, so the last layer's gradients travel while the
   layers below compute), then waits for all of them before the optimizer step. The 2-rank side
   runs both ways (``sync``: the library's one ``Allreduce`` per bucket after the backward;
   ``overlap``), interleaved, with the seconds each step spends in the all-reduce call. The
   library keeps the overlap only if it pays; see the README for what it measured.

    python bench/data_parallel.py [--steps 6] [--rounds 3]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ALPHA = 5e-6                    # seconds per message (a fast Ethernet/RoCE fabric; TCP is ~20-50 µs)
BERT_BASE_PARAMS = 110_000_000


def cost_model() -> list[str]:
    from tinybert.training.distributed import ring_allreduce_seconds

    size = BERT_BASE_PARAMS * 4
    lines = [f"ring all-reduce of BERT-base gradients (110M float32 = {size / 1e6:.0f} MB), alpha = {ALPHA * 1e6:.0f} us:",
             "  machines |  10 Gb/s  | 100 Gb/s   (the shortest compute step that hides it)"]
    for n in (8, 16, 32, 64):
        lines.append(f"  {n:8d} | {ring_allreduce_seconds(size, n, 10, ALPHA):7.3f} s | {ring_allreduce_seconds(size, n, 100, ALPHA):7.3f} s")
    return lines


# ---------------------------------------------------------------------------------------------
# the measured side: one worker process (or rank) timing Trainer steps
# ---------------------------------------------------------------------------------------------

def overlap_allreduce(world, model):
    """Make ``world.allreduce_gradients`` overlap with the backward (the experiment of part 3).

    Each encoder layer's ``backward`` is wrapped: when it returns, that layer's gradients are copied
    into one flat buffer and a nonblocking ``Iallreduce`` of it starts; the wrapper also calls
    ``Testall`` on the requests already started (MPI progresses a nonblocking collective only while
    a process is inside an MPI call, unless it runs a progress thread). ``allreduce_gradients`` then
    all-reduces the rest (embeddings, head) as the library does, waits for the layers' requests and
    copies their sums back. Assumes one backward per step (no gradient accumulation)."""
    import numpy as np

    MPI, comm = world.MPI, world.comm
    pending, in_layers = [], set()
    for layer in model.bert.encoder.layers:
        params = [p for p in layer.parameters() if p.requires_grad]
        in_layers.update(id(p) for p in params)

        def backward(dout, _backward=layer.backward, params=params):
            dx = _backward(dout)
            flat = np.concatenate([p.grad.reshape(-1) for p in params])
            pending.append((params, flat, comm.Iallreduce(MPI.IN_PLACE, flat, op=MPI.SUM)))
            MPI.Request.Testall([r for _, _, r in pending])
            return dx

        layer.backward = backward
    rest = [p for p in model.parameters() if id(p) not in in_layers]
    blocking = world.allreduce_gradients

    def allreduce_gradients(params):
        blocking(rest)
        MPI.Request.Waitall([r for _, _, r in pending])
        for params_, flat, _ in pending:
            start = 0
            for p in params_:
                p.grad[...] = flat[start:start + p.grad.size].reshape(p.grad.shape)
                start += p.grad.size
        pending.clear()

    world.allreduce_gradients = allreduce_gradients


def timed(world):
    """Wrap ``world.allreduce_gradients`` to add the seconds it takes to the returned list."""
    seconds, call = [], world.allreduce_gradients

    def allreduce_gradients(params):
        start = time.perf_counter()
        call(params)
        seconds.append(time.perf_counter() - start)

    world.allreduce_gradients = allreduce_gradients
    return seconds


def worker(steps: int, mode: str):
    import numpy as np

    import tinybert
    from tinybert.text.tokenizer import BertTokenizer, write_vocab
    from tinybert.text.wordpiece_trainer import train_wordpiece
    from tinybert.training import MLMTask, Trainer, TrainingConfig, corpus, distributed

    world = distributed.world()
    folder = tempfile.mkdtemp()
    texts = corpus.generate_corpus(2000, seed=0)
    write_vocab(train_wordpiece(texts, 2000), os.path.join(folder, "vocab.txt"))
    tok = BertTokenizer(os.path.join(folder, "vocab.txt"))
    conf = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=512, max_position_embeddings=64)
    model = tinybert.BertForMaskedLM(conf, seed=0, dtype=np.float32)
    cfg = TrainingConfig(batch_size=32, max_length=64, progress=False)
    task = MLMTask(tok, texts, texts[:50], cfg)
    trainer = Trainer(model, task, cfg, os.path.join(folder, "run"), tok, world=world)
    batches, mask_rng = trainer._epoch_batches(0)
    batches = [task.make_batch(rows, mask_rng) for rows in batches[:steps + 1]]
    model.train()
    if mode == "overlap" and world.size > 1:
        overlap_allreduce(world, model)
    in_allreduce = timed(world)
    trainer._step(0, batches[0])                      # warm-up (Numba's cache, BLAS)
    world.barrier()
    tokens, start = 0, time.perf_counter()
    for i, batch in enumerate(batches[1:]):
        trainer._step(i + 1, batch)
        tokens += int(batch["attention_mask"].sum())
    world.barrier()
    seconds = time.perf_counter() - start
    grad_bytes = sum(p.grad.nbytes for p in model.parameters() if p.requires_grad) + 4 * 8
    alone = []                                        # the same bytes all-reduced with no rank late
    flat = np.zeros(sum(p.grad.size for p in model.parameters() if p.requires_grad), dtype=np.float32)
    for _ in range(20):
        world.barrier()
        start = time.perf_counter()
        world.allreduce_sum_(flat)
        alone.append(time.perf_counter() - start)
    digest = hashlib.sha256(b"".join(p.data.tobytes() for p in model.parameters())).hexdigest()
    if world.is_main:
        print(json.dumps({"weights_sha256": digest, "tokens_per_s": tokens / seconds, "allreduce_bytes": grad_bytes,
                          "parameters": model.num_parameters(), "step_s": seconds / steps,
                          "allreduce_s": statistics.median(in_allreduce[1:]),
                          "allreduce_alone_s": statistics.median(alone)}))
    shutil.rmtree(folder, ignore_errors=True)


def run_side(ranks: int, threads: int, steps: int, mode: str = "sync") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(steps), "--mode", mode]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("sync", "overlap"), default="sync", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.steps, args.mode)
    one, two, single, overlapped = [], [], [], []
    for _ in range(args.rounds):                      # interleaved: noise hits all sides alike
        one.append(run_side(1, 2, args.steps))
        two.append(run_side(2, 1, args.steps))
        single.append(run_side(1, 1, args.steps))
        overlapped.append(run_side(2, 1, args.steps, "overlap"))
    a = statistics.median(r["tokens_per_s"] for r in one)
    b = statistics.median(r["tokens_per_s"] for r in two)
    c = statistics.median(r["tokens_per_s"] for r in single)
    d = statistics.median(r["tokens_per_s"] for r in overlapped)
    if {r["weights_sha256"] for r in two} != {r["weights_sha256"] for r in overlapped} or len({r["weights_sha256"] for r in two}) != 1:
        raise SystemExit("the overlapped all-reduce did not give the weights of the synchronous one, bit for bit")
    ms = lambda runs, key: 1e3 * statistics.median(r[key] for r in runs)      # noqa: E731
    print(f"small BERT ({one[0]['parameters']:,} parameters), batch 32 x 64 tokens, float32, {args.steps} steps x "
          f"{args.rounds} rounds, medians:")
    print(f"  1 process x 2 threads : {a:9,.0f} tokens/s")
    print(f"  2 ranks x 1 thread    : {b:9,.0f} tokens/s   (ratio {b / a:.2f})")
    print(f"  1 process x 1 thread  : {c:9,.0f} tokens/s   (2 ranks / this: {b / c:.2f})")
    print(f"  all-reduced per step  : {two[0]['allreduce_bytes'] / 1e6:.2f} MB, in {ms(two, 'allreduce_s'):.2f} ms "
          f"of a {ms(two, 'step_s'):.0f} ms step ({ms(two, 'allreduce_alone_s'):.2f} ms when no rank is late: "
          "the rest is waiting for the slower rank)")
    print(f"  2 ranks, Iallreduce overlapped with the backward: {d:9,.0f} tokens/s (ratio to sync {d / b:.3f}); "
          f"waiting {ms(overlapped, 'allreduce_s'):.2f} ms of a {ms(overlapped, 'step_s'):.0f} ms step; the same weights "
          "bit for bit")
    print("\n".join(cost_model()))


if __name__ == "__main__":
    main()
