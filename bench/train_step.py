"""One MLM training step of a BERT-mini — tinybert against HF transformers on PyTorch, one run.

    L=4, H=256, A=4, I=1024, vocab 30522, batch 8 x 128 tokens, float32, dropout 0.1,
    logits for every position (as HF computes them), loss on 15% of positions, AdamW.

Both sides use the same number of threads (NumPy's BLAS via threadpoolctl, torch.set_num_threads).
Steps alternate between the two so that machine noise hits both alike; the median of each is
reported, with their ratio (tinybert time / PyTorch time: < 1 means tinybert is faster).

    python bench/train_step.py [--steps 10] [--threads N] [--profile]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import tinybert

CONFIG = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
              intermediate_size=1024, max_position_embeddings=512, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1)
BATCH, SEQ = 8, 128


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, CONFIG["vocab_size"], (BATCH, SEQ))
    labels = np.where(rng.random(ids.shape) < 0.15, ids, -100)
    mask = np.ones_like(ids)
    return ids, mask, labels


def tinybert_step_fn(model, opt, ids, mask, labels):
    def step():
        logits = model.forward(ids, attention_mask=mask)
        loss, dlogits = tinybert.cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)
        opt.step()
        return loss
    return step


def torch_step_fn(ids, mask, labels):
    import torch
    import transformers

    model = transformers.BertForMaskedLM(transformers.BertConfig(**CONFIG)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    t_ids, t_mask, t_labels = map(torch.tensor, (ids, mask, labels))

    def step():
        out = model(input_ids=t_ids, attention_mask=t_mask, labels=t_labels)
        opt.zero_grad(set_to_none=False)
        out.loss.backward()
        opt.step()
        return out.loss.item()
    return step


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--profile", action="store_true", help="profile tinybert's step with cProfile")
    ap.add_argument("--backend", default="auto", help="attention backend for tinybert")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    ids, mask, labels = make_batch()
    model = tinybert.BertForMaskedLM(tinybert.BertConfig(**CONFIG), seed=0, attention_backend=args.backend)
    opt = tinybert.AdamW(tinybert.bert_param_groups(model, 0.01), lr=1e-4)
    ours, theirs = tinybert_step_fn(model, opt, ids, mask, labels), torch_step_fn(ids, mask, labels)

    with threadpool_limits(limits=args.threads, user_api="blas"):
        if args.profile:
            import cProfile
            import pstats
            ours()
            cProfile.runctx("for _ in range(3): ours()", globals(), {"ours": ours}, "/tmp/train_step.prof")
            pstats.Stats("/tmp/train_step.prof").sort_stats("tottime").print_stats(25)
            return
        for _ in range(2):          # warm-up: first-call allocations, JIT, caches
            ours(), theirs()
        t_ours, t_torch = [], []
        for _ in range(args.steps):
            t_ours.append(timed(ours))
            t_torch.append(timed(theirs))
    a, b = statistics.median(t_ours), statistics.median(t_torch)
    print(f"BERT-mini MLM training step (B={BATCH}, T={SEQ}, float32, dropout 0.1, AdamW), "
          f"{args.threads} threads, median of {args.steps}")
    print(f"  tinybert (NumPy)            {a * 1e3:8.1f} ms")
    print(f"  transformers (PyTorch {torch.__version__}) {b * 1e3:8.1f} ms")
    print(f"  ratio tinybert / PyTorch    {a / b:8.2f}x")
    return a / b


if __name__ == "__main__":
    main()
