"""Tiny float64 training runs with dropout on, for the data-parallel tests (tests/test_distributed.py).

In the test process they run as one process; the same file is also started by
``mpiexec -n N python tests/dp_runs.py WORKDIR``, where each rank trains both runs data-parallel
and writes its final weights to WORKDIR/{kind}_rank{r}.npz (arrays only, read without pickle),
then starts the pretraining run again in WORKDIR/stopped with 2 micro-batches a step, stopped
after step 3 (Ctrl-C's path), for the test to resume in one process; and resumes WORKDIR/stopped1,
which the test stopped in one process, on the N ranks (resumed_rank{r}.npz).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import tinybert
from tinybert.text.tokenizer import BertTokenizer, write_vocab
from tinybert.text.wordpiece_trainer import train_wordpiece
from tinybert.training import ClassificationTask, CLMTask, MLMTask, Trainer, TrainingConfig, corpus

KINDS = ("pretrain", "finetune", "clm")
EPOCHS = 3


def tokenizer(folder):
    """A 200-token WordPiece vocabulary of the generated corpus (the same on every rank)."""
    texts = corpus.generate_corpus(120, seed=0)
    path = os.path.join(folder, f"vocab_{os.getpid()}.txt")
    write_vocab(train_wordpiece(texts, 200), path)
    return BertTokenizer(path), texts


def _bert_config(tok, **extra):
    return tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.1,
                               attention_probs_dropout_prob=0.1, **extra)


def train(kind, out, tok, texts, grad_accum_steps=1, world=None, stop_at=None, resume=False):
    """Train the tiny ``kind`` run in ``out`` (asking it to stop after step ``stop_at``, as Ctrl-C
    does; or resuming it); -> (trainer, {name: weights})."""
    if kind in ("pretrain", "clm"):   # 100 texts in batches of 15: 7 steps, the last of 10 rows; 2 ranks split 8 + 7
        cfg = TrainingConfig(epochs=EPOCHS, batch_size=15, lr=3e-3, seed=7, max_length=32, log_every=1,
                             progress=False, grad_accum_steps=grad_accum_steps)
        if kind == "pretrain":
            model = tinybert.BertForMaskedLM(_bert_config(tok), seed=3, dtype=np.float64, attention_backend="numpy")
            task = MLMTask(tok, texts[:100], texts[100:], cfg)
        else:                         # a causal decoder: causal attention dropout, next-token loss
            model = tinybert.BertLMHeadModel(_bert_config(tok, is_decoder=True), seed=3, dtype=np.float64,
                                             attention_backend="numpy")
            task = CLMTask(tok, texts[:100], texts[100:], cfg)
    else:                    # 40 sentences in batches of 9: 5 steps, the last of 4 rows
        data = corpus.generate_sentiment_task(20, 5, 5, seed=0)
        cfg = TrainingConfig(epochs=EPOCHS, batch_size=9, lr=1e-2, seed=5, max_length=32, log_every=1,
                             progress=False, grad_accum_steps=grad_accum_steps)
        model = tinybert.BertForSequenceClassification(_bert_config(tok), seed=0, dtype=np.float64,
                                                       attention_backend="numpy")
        task = ClassificationTask(tok, data["train"], data["validation"], cfg, corpus.LABELS)
    def on_step(trainer, step, loss):
        if step == stop_at:
            trainer.request_stop()

    trainer = Trainer(model, task, cfg, out, tok, world=world, on_step=on_step)
    trainer.train(resume=resume)
    return trainer, {n: p.data.copy() for n, p in model.named_parameters()}


if __name__ == "__main__":
    from tinybert.training import distributed

    workdir = sys.argv[1]
    world = distributed.world()
    tok, texts = tokenizer(workdir)
    for kind in KINDS:
        trainer, weights = train(kind, os.path.join(workdir, kind), tok, texts, 1, world)
        losses = np.array([r["loss"] for r in trainer.history if r["kind"] == "train"])
        scores = np.array([[r["loss"], r["accuracy"]] for r in trainer.history if r["kind"] == "eval"])
        np.savez(os.path.join(workdir, f"{kind}_rank{world.rank}.npz"), __losses__=losses, __eval__=scores, **weights)
    train("pretrain", os.path.join(workdir, "stopped"), tok, texts, 2, world, stop_at=3)
    # a run stopped in one process (by the test, before mpiexec) resumes here on N ranks
    _, weights = train("pretrain", os.path.join(workdir, "stopped1"), tok, texts, 1, world, resume=True)
    np.savez(os.path.join(workdir, f"resumed_rank{world.rank}.npz"), **weights)
