"""Lesson 11's workers, for the lesson and its exercises: N copies of one model, each taking its
shard of one batch, and the sum of their weighted gradients against one process's gradient."""
from __future__ import annotations

import numpy as np

import tinybert
from tinybert.losses import cross_entropy
from tinybert.training import distributed

CONFIG = tinybert.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=32, num_labels=3,
                             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def make_batch(B: int, T: int, seed: int):
    """A labelled batch: ids [B, T], attention mask [B, T] (row 1 half padding), labels [B]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 60, (B, T))
    mask = np.ones_like(ids)
    mask[1, T // 2:] = 0                                     # one padded row
    return ids, mask, rng.integers(0, 3, B)


def model_copy(seed: int):
    """A worker's copy of the model: the same weights (seed) and the same dropout generator."""
    return tinybert.BertForSequenceClassification(CONFIG, seed=seed, dtype=np.float64,
                                                  attention_backend="numpy").train()


def gradients(model, batch, rows: slice, offset=None):
    """Forward and backward on ``rows`` of the batch, the loss gradient weighted by |rows| / B (the
    worker's share), with the dropout counters at the rows' global place (``offset``; None: rows.start).
    -> {parameter name: gradient}"""
    ids, mask, y = batch
    B = len(y)
    distributed.set_batch_offset(model, rows.start if offset is None else offset)
    logits = model.forward(ids[rows], attention_mask=mask[rows])
    _, dlogits = cross_entropy(logits, y[rows])
    model.zero_grad()
    model.backward(dlogits * (len(range(B)[rows]) / B))
    return {n: p.grad.copy() for n, p in model.named_parameters()}


def worker_gradients(batch, n_workers: int, seed: int, with_offset: bool = True):
    """Each of ``n_workers`` workers' weighted gradient on its shard. -> (shards, [gradients per worker]);
    ``with_offset=False``: every worker counts its dropout draws from 0 (the mistake step 3 shows)."""
    B = len(batch[2])
    shards = [distributed.shard(B, n_workers, r) for r in range(n_workers)]
    parts = [gradients(model_copy(seed), batch, slice(a, b), None if with_offset else 0) for a, b in shards]
    return shards, parts


def worst_relative_gap(parts, full, names):
    """max over ``names`` of max |Σ parts − full| / max |full|: how far the workers' sum misses."""
    return max(float(np.abs(sum(p[n] for p in parts) - full[n]).max() / np.abs(full[n]).max()) for n in names)
