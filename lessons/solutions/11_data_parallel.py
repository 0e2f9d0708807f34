"""Solutions to lesson 11's exercises (data parallelism). Run one with
``python lessons/11_data_parallel.py --small --exercise k``."""
from _11_workers import gradients, make_batch, model_copy, worker_gradients, worst_relative_gap

from tinybert.training import distributed


def _batch(lesson):
    B, T = (7, 10) if lesson.small else (16, 24)          # the lesson's batch
    return B, make_batch(B, T, lesson.seed)


def exercise_1(lesson):
    """One worker, gradient accumulation: cut the batch into 2 micro-batches
    (distributed.micro_batches(B, 2, 1, 0)) and run them one after the other on the same model, each
    with its rows' global offset and its share of the batch, adding the gradients. A second forward
    draws new dropout seeds from the model's generator, so rewind it (model.rng.bit_generator.state)
    to where the step began before each micro-batch, as Trainer._gradients does.

    You should see: with the rewind, the accumulated gradient equals the whole batch's to rounding,
    dropout on — the all-reduce's sum, spread over time instead of over workers; without it, the
    second micro-batch drops other elements and the sum misses by far more than rounding."""
    B, batch = _batch(lesson)
    pieces = distributed.micro_batches(B, 2, 1, 0)
    lesson.value("micro-batches (rows)", pieces)
    full = gradients(model_copy(lesson.seed), batch, slice(0, B))
    names = [n for n in full if not n.endswith("key.bias")]
    worst = {}
    for rewind in (True, False):
        model = model_copy(lesson.seed)                      # one worker, one model
        start = model.rng.bit_generator.state
        parts = []
        for a, b in pieces:
            if rewind:
                model.rng.bit_generator.state = start        # the same dropout seeds for every piece
            parts.append(gradients(model, batch, slice(a, b)))
        worst[rewind] = worst_relative_gap(parts, full, names)
    lesson.claim("{k} micro-batches of {s} rows on one model, its generator rewound before each, add up to the "
                 "whole batch's gradient: worst relative difference {w:.1e}; without the rewind, {x:.1e}",
                 len(pieces) == 2 and worst[True] < 1e-12 and worst[False] > 1e-3, k=len(pieces),
                 s=[b - a for a, b in pieces], w=worst[True], x=worst[False])


def exercise_2(lesson):
    """Split the batch over 3 workers instead of 2: shard(B, 3, r).

    You should see: shards of unequal size (B = 7 with --small: 3, 2, 2 rows; B = 16: 6, 5, 5), and a
    sum of the three weighted gradients still equal to the one-process gradient, dropout on."""
    B, batch = _batch(lesson)
    full = gradients(model_copy(lesson.seed), batch, slice(0, B))
    shards, parts = worker_gradients(batch, 3, lesson.seed)
    sizes = [b - a for a, b in shards]
    names = [n for n in full if not n.endswith("key.bias")]
    worst = worst_relative_gap(parts, full, names)
    lesson.value("shards", shards)
    lesson.claim("3 workers take {s} rows (unequal), and their weighted gradients add up to the one-process "
                 "gradient: worst relative difference {w:.1e}", len(set(sizes)) > 1 and sum(sizes) == B
                 and worst < 1e-12, s=sizes, w=worst)


def exercise_3(lesson):
    """Set alpha to 50e-6 (TCP's latency) in ring_allreduce_seconds and look at 64 machines.

    You should see: the latency term 2(N−1)·α grows from 0.6 ms to 6.3 ms, still under 1 % of the
    bandwidth term 2(N−1)/N · n_bytes/β, 0.69 s for BERT-base's 440 MB at 10 Gb/s (one copy,
    n_bytes/β, would be 0.35 s; 6.3 ms is 1.8 % of that)."""
    n_bytes, N = 110e6 * 4, 64
    fast = distributed.ring_allreduce_seconds(n_bytes, N, 10)
    tcp = distributed.ring_allreduce_seconds(n_bytes, N, 10, alpha=50e-6)
    band = distributed.ring_allreduce_seconds(n_bytes, N, 10, alpha=0.0)
    lesson.value("64 machines, 10 Gb/s", f"{fast:.4f} s with α = 5 µs, {tcp:.4f} s with α = 50 µs")
    one_copy = n_bytes / (10e9 / 8)                          # n_bytes/β at 10 Gb/s
    lesson.value("n_bytes/β at 10 Gb/s (one copy)", f"{one_copy:.3f} s")
    lesson.claim("with α = 50 µs the latency term 2(N−1)·α is {l:.1f} ms (it was {f:.1f} ms), {p:.1%} of the "
                 "bandwidth term 2(N−1)/N · n_bytes/β = {b:.2f} s at 10 Gb/s ({q:.1%} of one copy n_bytes/β)",
                 (tcp - band) < 0.01 * band and abs((tcp - band) - 2 * 63 * 50e-6) < 1e-12
                 and abs(band - 2 * 63 / 64 * one_copy) < 1e-9, l=(tcp - band) * 1e3, f=(fast - band) * 1e3,
                 p=(tcp - band) / band, b=band, q=(tcp - band) / one_copy)
