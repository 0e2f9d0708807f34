"""Lesson 07's fine-tuning pieces, shared by the lesson and its exercises: a classifier whose encoder
is copied from a pretrained MLM model (or left random), the fine-tuning loop, and its evaluation."""
from __future__ import annotations

import numpy as np

from _pretrain import small_config

import tinybert
from tinybert.losses import cross_entropy

BATCH = 16


def classifier(tok, mlm, seed: int, dropout: float = 0.1):
    """BertForSequenceClassification; its encoder copied from the pretrained ``mlm`` model (None:
    random). -> (model, how many tensors were copied)"""
    model = tinybert.BertForSequenceClassification(small_config(tok, dropout=dropout, num_labels=2),
                                                   seed=seed, attention_backend="numpy")
    copied = 0
    if mlm is not None:
        pretrained = dict(mlm.named_parameters())
        for name, p in model.named_parameters():
            if name in pretrained:                     # bert.embeddings.*, bert.encoder.*
                p.data[...] = pretrained[name].data
                copied += 1
    return model, copied


def accuracy_and_loss(model, ids, am, y):
    """accuracy and mean cross-entropy of ``model`` on ids [N, T] (attention mask am), labels y [N]"""
    model.eval()
    logits = model.forward(ids, attention_mask=am)
    model.train()
    return float((logits.argmax(-1) == y).mean()), float(cross_entropy(logits, y)[0])


def finetune(model, data, steps, seed, head_only=False, lr=1e-3, l2=0.0, momentum_sgd=False):
    """Fine-tune on data = (ids, attention_mask, labels) for ``steps`` batches of BATCH."""
    if head_only:                                     # the article's "train only the task part"
        model.bert.embeddings.requires_grad_(False)
        model.bert.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if momentum_sgd:
        opt = tinybert.SGD(params, lr=lr, momentum=0.9, weight_decay=l2)
    else:
        opt = tinybert.Adam(params, lr=lr, weight_decay=l2)          # weight_decay = L2 in the gradient
    ids, am, y = data
    rng = np.random.default_rng(seed)
    order, i = rng.permutation(len(y)), 0
    model.train()
    for _ in range(steps):
        if i >= len(y):
            order, i = rng.permutation(len(y)), 0
        rows, i = order[i:i + BATCH], i + BATCH
        t = int(am[rows].sum(1).max())
        logits = model.forward(ids[rows, :t], attention_mask=am[rows, :t])
        loss, dlogits = cross_entropy(logits, y[rows])
        model.zero_grad()
        model.backward(dlogits)
        opt.step()
    return model
