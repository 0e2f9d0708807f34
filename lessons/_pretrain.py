"""Small pieces lessons 06, 07 and 10 share: a learned tokenizer and the MLM training step.

These are the article's pretraining steps written out plainly (tinybert/training/trainer.py has the
full-featured loop with checkpoints, evaluation and resuming):

    1. data       generate_corpus -> train_wordpiece -> BertTokenizer -> padded ids
    2. model      BertForMaskedLM(BertConfig(...))
    3. loss       cross_entropy on the masked positions only
    4. backprop   model.backward, clip_grad_norm, AdamW.step (+ warm-up / linear-decay schedule)
    5. regularize dropout inside the model, decoupled weight decay in AdamW (not L2: step 06.5)
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

import tinybert
from tinybert.training.corpus import generate_corpus
from tinybert.losses import cross_entropy, next_token_loss
from tinybert.training.masking import mask_tokens
from tinybert.text.tokenizer import BertTokenizer
from tinybert.text.wordpiece_trainer import save_wordpiece_vocab, train_wordpiece


def learned_tokenizer(texts, vocab_size: int = 1000) -> BertTokenizer:
    """A WordPiece vocabulary learned from ``texts`` (lesson 01), as a BertTokenizer."""
    tokens = train_wordpiece(texts, vocab_size)
    folder = tempfile.mkdtemp(prefix="tinybert_lesson_vocab_")
    return BertTokenizer(save_wordpiece_vocab(tokens, os.path.join(folder, "vocab.txt")))


def encode(tok: BertTokenizer, texts, max_length: int = 32):
    """texts -> (ids [N, T], attention_mask [N, T]) padded to the longest."""
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length)
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def small_config(tok: BertTokenizer, hidden: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1, **kw) -> tinybert.BertConfig:
    return tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=2 * hidden,
                               max_position_embeddings=64, hidden_dropout_prob=dropout,
                               attention_probs_dropout_prob=0.0, **kw)


def mlm_batch(tok, ids, am, rows, rng):
    """Rows of the data, trimmed to their longest, masked 80/10/10. -> inputs, attention_mask, labels."""
    t = int(am[rows].sum(axis=1).max())
    x, a = ids[rows, :t], am[rows, :t]
    inputs, labels = mask_tokens(x, rng, tok.mask_token_id, tok.vocab_size, tok.all_special_ids,
                                 attention_mask=a)
    return inputs, a, labels


def mlm_step(model, optimizer, schedule, inputs, attention_mask, labels, max_grad_norm=1.0):
    """One pretraining step: forward, loss, backward, clip, AdamW, schedule. -> loss."""
    logits = model.forward(inputs, attention_mask=attention_mask)          # [B, T, V]
    loss, dlogits = cross_entropy(logits, labels)                          # masked positions only
    model.zero_grad()
    model.backward(dlogits)                                                # fills every p.grad
    tinybert.clip_grad_norm(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    return loss


def pretrain_small(steps: int, seed: int = 0, n_sentences: int = 6000, batch_size: int = 32,
                   lr: float = 3e-3, exclude=(), log=None):
    """Pretrain a small BertForMaskedLM on the generated corpus. -> (model, tokenizer, losses)."""
    texts = generate_corpus(n_sentences, seed=seed, exclude=exclude)
    tok = learned_tokenizer(texts)
    ids, am = encode(tok, texts)
    model = tinybert.BertForMaskedLM(small_config(tok), seed=seed, attention_backend="numpy")
    opt = tinybert.AdamW(tinybert.bert_param_groups(model, 0.01), lr=lr)
    sched = tinybert.get_linear_schedule_with_warmup(opt, max(1, steps // 20), steps)
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        rows = rng.integers(0, len(ids), batch_size)
        losses.append(mlm_step(model, opt, sched, *mlm_batch(tok, ids, am, rows, rng)))
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"  pretraining step {step + 1:>4}/{steps}  MLM loss {losses[-1]:.3f}")
    return model.eval(), tok, losses


def train_causal_lm(tok, ids, am, steps: int, seed: int = 0, rng=None, log=None):
    """A small BertLMHeadModel (2 decoder layers, C = 64) trained ``steps`` Adam steps on next-token
    prediction over rows of ids [N, T] (attention mask am). -> (model, losses)"""
    cfg = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0, is_decoder=True)
    lm = tinybert.BertLMHeadModel(cfg, seed=seed, attention_backend="numpy")
    opt = tinybert.Adam(lm.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed) if rng is None else rng
    losses = []
    for step in range(1, steps + 1):
        rows = rng.integers(0, len(ids), 32)
        t = int(am[rows].sum(1).max())
        x_in, mask_in = ids[rows, :t], am[rows, :t]
        labels = np.where(mask_in == 1, x_in, -100)            # next_token_loss shifts them by one
        logits = lm.forward(x_in, attention_mask=mask_in)
        loss, dlogits = next_token_loss(logits, labels)
        lm.zero_grad()
        lm.backward(dlogits)
        tinybert.clip_grad_norm(lm.parameters(), 1.0)
        opt.step()
        losses.append(loss)
        if log and step % max(1, steps // 5) == 0:
            log(f"  step {step:>4}  next-token loss {loss:.3f}  (perplexity {np.exp(loss):.1f})")
    return lm, losses
