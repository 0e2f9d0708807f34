"""Many workers, one model: data parallelism

BERT was pretrained on many accelerators at once. The simplest way to use N workers is data
parallelism: every worker holds the whole model, takes its share of each batch, computes the
gradient of its share, and the workers add their gradients up (an "all-reduce") before each takes
the same optimizer step. Here two workers run in this one process, so that every number can be
printed; `mpiexec -n 2 tinybert pretrain ...` runs the same code as two processes
(tinybert/training/distributed.py), and tests/test_distributed.py proves it gives one process's model.
"""
import numpy as np

import tinybert
from _stepper import Code, Lesson
from _11_workers import gradients, make_batch, model_copy, worker_gradients, worst_relative_gap

from tinybert.training import distributed
from tinybert.training.trainer import Trainer

lesson = Lesson("11", "Many workers, one model", __doc__)
plt = lesson.plt
B, T = (7, 10) if lesson.small else (16, 24)
N = 2                                                        # workers
batch = make_batch(B, T, lesson.seed)

# ------------------------------------------------------------------------------------------------
lesson.step("Split the batch",
            """rank r of N takes rows [start_r, stop_r): contiguous, sizes ⌈B/N⌉ or ⌊B/N⌋""",
            code=Code(distributed.shard), article="tools.compute")
shards = [distributed.shard(B, N, r) for r in range(N)]
lesson.value("batch rows", B)
for r, (a, b) in enumerate(shards):
    lesson.value(f"rank {r} takes rows", f"{a} … {b - 1}")
lesson.claim("the {n} shards cover the {b} rows once, in order ({s})",
             shards[0][0] == 0 and all(shards[r][1] == shards[r + 1][0] for r in range(N - 1))
             and shards[-1][1] == B, n=N, b=B, s=shards)

# ------------------------------------------------------------------------------------------------
lesson.step("The all-reduce is a sum of gradients",
            """∇L = (1/B) Σ_i ∇ℓ_i = Σ_r (B_r/B) · [(1/B_r) Σ_{i∈B_r} ∇ℓ_i]
each worker scales its local mean by its share B_r/B; Allreduce(SUM) adds the workers' arrays""",
            code=[Code(Trainer._gradients, "labels = batch", "stats[3] ="), Code(gradients, "distributed.set_batch_offset", "model.backward"),
                  Code(distributed.MPIWorld.allreduce_gradients)], article="pretrain.4")
full = gradients(model_copy(lesson.seed), batch, slice(0, B))       # one process, the whole batch
_, parts = worker_gradients(batch, N, lesson.seed)
summed = {n: sum(p[n] for p in parts) for n in full}        # what Allreduce(SUM) leaves on every rank
names = [n for n in full if not n.endswith("key.bias")]     # b_K: its gradient is 0 in exact arithmetic
worst = worst_relative_gap(parts, full, names)
name = "classifier.weight"
for r in range(N):
    lesson.show(f"rank {r}'s part of ∇{name}", parts[r][name][0])
lesson.show("their sum", summed[name][0])
lesson.show("one process, the whole batch", full[name][0])
lesson.claim("the sum of the {n} workers' weighted gradients is the whole batch's gradient, with dropout on: "
             "worst relative difference over every tensor {w:.1e} (rounding)", worst < 1e-12, n=N, w=worst)

# ------------------------------------------------------------------------------------------------
lesson.step("Dropout must not depend on the worker",
            """keep(element) = Philox(counter = the element's place in the GLOBAL batch, key = seed) ≥ p·2³²
a rank holding rows b₀… counts from b₀ (batch_offset), so it drops what one process drops""",
            code=[Code(distributed.set_batch_offset), Code(tinybert.nn.dropout.Dropout._apply)],
            article="pretrain.5")
_, forgetful = worker_gradients(batch, N, lesson.seed, with_offset=False)   # every rank counts from 0
worst_wrong = worst_relative_gap(forgetful, full, names)
lesson.claim("without the offset, every rank r > 0 draws row 0…'s masks for its rows and the sum misses the one-process "
             "gradient by {w:.1e} (relative) — with it, by {ok:.1e}", worst_wrong > 1e-3 and worst < 1e-12,
             w=worst_wrong, ok=worst)
fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
short = [n.replace("bert.encoder.layers.0.", "L0.").replace("bert.embeddings.", "emb.").replace("bert.pooler.", "pooler.")
         for n in names]
right = [max(worst_relative_gap(parts, full, [n]), 1e-18) for n in names]
bad = [max(worst_relative_gap(forgetful, full, [n]), 1e-18) for n in names]
ax.semilogy(range(len(names)), bad, "o", color="tab:red", label="every rank counting dropout from row 0 (no offset)")
ax.semilogy(range(len(names)), right, "o", color="tab:green", label="each rank at its rows' offset (distributed.py)")
ax.set_xticks(range(len(names)), short, rotation=60, ha="right", fontsize=7)
ax.set_xlabel("parameter tensor")
ax.set_ylabel("max |Σ workers − one process|\n/ max |one process|")
ax.set_title(f"{N} workers' summed gradient against one process's, per tensor (dropout on)")
ax.legend(loc="center right", fontsize=8)
lesson.savefig(fig, "gradient_sum")

# ------------------------------------------------------------------------------------------------
lesson.step("What the all-reduce costs",
            """ring all-reduce of n_bytes on N machines:  seconds = 2(N−1)/N · n_bytes/β + 2(N−1)·α
(β: bytes per second of a link, α: the latency of one message)""",
            code=Code(distributed.ring_allreduce_seconds), article="tools.compute")
n_bytes = 110e6 * 4                                              # BERT-base: 110M float32 gradients
machines = np.array([2, 4, 8, 16, 32, 64])
t10 = np.array([distributed.ring_allreduce_seconds(n_bytes, n, 10) for n in machines])
t100 = np.array([distributed.ring_allreduce_seconds(n_bytes, n, 100) for n in machines])
for n, a, b in zip(machines, t10, t100):
    lesson.value(f"{n:2d} machines", f"{a:.3f} s at 10 Gb/s, {b:.3f} s at 100 Gb/s")
growth = float(t10[-1] / t10[2])
speedup = float(t10[-1] / t100[-1])
lesson.say(f"""These numbers are the cost model's predictions, not measurements (two workers in one process
send nothing over a network). The model predicts that from 8 to 64 machines the all-reduce of BERT-base
takes only {growth:.2f}× as long, since each machine sends 2(N−1)/N < 2 copies of the gradients whatever N;
and that ten times the bandwidth makes it {speedup:.1f}× faster at 64 machines: at 440 MB the bandwidth
term 2(N−1)/N · n_bytes/β, not the latency α, decides.""")
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.plot(machines, t10, "o-", label="10 Gb/s")
ax.plot(machines, t100, "o-", label="100 Gb/s")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("machines N")
ax.set_ylabel("seconds per step")
ax.set_title("Ring all-reduce of BERT-base's gradients (440 MB)\n"
             "a step must compute at least this long to hide it")
ax.legend()
lesson.savefig(fig, "ring_allreduce")

lesson.end(
    ["Data parallelism splits each batch over workers that hold the same model; their gradients, each "
     "scaled by its share of the batch, add up to the whole batch's gradient — the all-reduce is a sum.",
     "With dropout the workers give one process's gradient only if each element's random draw is keyed on "
     "its place in the global batch, not in the worker's slice.",
     "A ring all-reduce costs about two copies of the gradients per machine whatever the number of "
     "machines, so the network's bandwidth decides how short a step can be."],
    try_next=[("Accumulate instead of distributing: one worker runs the batch as 2 micro-batches "
               "(distributed.micro_batches(B, 2, 1, 0)), each with its offset, rewinding the model's "
               "generator (model.rng.bit_generator.state) before each, and adds the gradients.",
               "the whole batch's gradient to rounding, dropout on — the all-reduce's sum spread over "
               "time; without the rewind the second piece drops other elements and the sum misses"),
              ("Split the batch over 3 workers here (shard(B, 3, r)).",
               "shards of unequal size (3, 2, 2 rows with --small), and a sum still equal to the "
               "one-process gradient"),
              ("Set alpha to 50e-6 (TCP) in ring_allreduce_seconds and look at 64 machines.",
               "the latency term 2(N−1)·α grows to ~6 ms: still under 1 % of the bandwidth term "
               "2(N−1)/N · n_bytes/β (0.69 s for 440 MB at 10 Gb/s)")])
