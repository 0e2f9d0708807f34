"""The foundation demo: build a small BERT, prove its gradients, and watch it learn.

1. Gradient check of the whole model (float64, dropout off): analytic vs numerical gradients.
2. A few AdamW steps of masked-language modelling on generated sequences with a learnable rule
   (each sequence repeats its first half), printing the loss falling.
"""
from __future__ import annotations

import time

import numpy as np

import tinybert
from tinybert.gradcheck import check_gradients, format_table


def model_gradcheck(seed: int = 0, max_checks: int = 6) -> dict:
    """Relative error of every parameter gradient of a tiny BertForMaskedLM (float64)."""
    config = tinybert.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=8,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = tinybert.BertForMaskedLM(config, seed=seed, dtype=np.float64, attention_backend="numpy")
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 20, (2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = np.where(rng.random(ids.shape) < 0.5, ids, -100)
    labels[:, 0] = ids[:, 0]

    def forward():
        logits = model.forward(ids, attention_mask=mask)
        return np.array(tinybert.cross_entropy(logits, labels)[0])

    def backward(g):
        model.zero_grad()
        _, dlogits = tinybert.cross_entropy(model.forward(ids, attention_mask=mask), labels)
        model.backward(dlogits * float(g))
        return {n: p.grad.copy() for n, p in model.named_parameters()}

    tensors = {n: p.data for n, p in model.named_parameters()}
    analytic = {n: (lambda r, n=n: r[n]) for n in tensors}
    return check_gradients(forward, backward, tensors, analytic, seed=seed, max_checks=max_checks)


def copy_task_batch(rng, batch, seq_len, vocab, mask_id):
    half = seq_len // 2
    first = rng.integers(5, vocab, (batch, half))
    ids = np.concatenate([first, first], axis=1)
    masked = rng.random(ids.shape) < 0.3
    masked[:, :half] = False                       # only the copy can be predicted from context
    labels = np.where(masked, ids, -100)
    inputs = np.where(masked, mask_id, ids)
    return inputs, labels


def main(seed: int = 0, out: str = "runs/demo", quick: bool = False) -> int:
    t0 = time.time()
    print("tinybert demo: a BERT in plain NumPy\n")
    results = model_gradcheck(seed)
    print(format_table(results, "BertForMaskedLM parameter"))
    print(f"worst relative error: {max(results.values()):.1e}  (float64 central differences)\n")

    vocab, mask_id = 40, 4
    config = tinybert.BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, max_position_embeddings=32,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = tinybert.BertForMaskedLM(config, seed=seed)
    steps = 20 if quick else 300
    opt = tinybert.AdamW(tinybert.bert_param_groups(model, 0.01), lr=3e-3)
    sched = tinybert.get_linear_schedule_with_warmup(opt, steps // 10, steps)
    rng = np.random.default_rng(seed)
    print(f"MLM on a copy task (the second half repeats the first): {steps} AdamW steps")
    for step in range(1, steps + 1):
        inputs, labels = copy_task_batch(rng, 32, 16, vocab, mask_id)
        logits = model.forward(inputs)
        loss, dlogits = tinybert.cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)
        tinybert.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step == 1 or step % max(1, steps // 10) == 0:
            print(f"  step {step:4d}  loss {loss:.3f}")
    print(f"\n(chance level is ln({vocab - 5}) = {np.log(vocab - 5):.3f}); done in {time.time() - t0:.1f}s")
    return 0
