"""Lesson 04's generalisation experiment (step 9), shared with its exercises' solutions.

A small corpus (N_TRAIN generated sentences, 300 held out), a WordPiece vocabulary learned from it,
fixed masks to measure the loss, and MLM training of a 1-layer BertForMaskedLM until its train loss
reaches a target — so that models of different sizes are compared at the same fit of their data.
"""
import numpy as np

import tinybert
from _pretrain import encode, learned_tokenizer, mlm_batch, mlm_step, small_config
from tinybert.losses import cross_entropy
from tinybert.training.corpus import generate_corpus
from tinybert.training.masking import mask_tokens

N_TRAIN, N_HELD, TARGET, MAX_STEPS, LR, WARMUP = 40, 300, 0.8, 2000, 5e-3, 50


class SmallCorpus:
    """N_TRAIN training and N_HELD held-out sentences, their tokenizer, and fixed masks for the losses."""

    def __init__(self, seed: int):
        texts = generate_corpus(N_TRAIN + N_HELD, seed=seed)
        self.tok = learned_tokenizer(texts, vocab_size=400)
        self.train_ids, self.train_am = encode(self.tok, texts[:N_TRAIN])
        held_ids, held_am = encode(self.tok, texts[N_TRAIN:])
        self.fixed_train = [self._masks(self.train_ids, self.train_am, 90 + r) for r in range(3)]
        self.fixed_held = [self._masks(held_ids, held_am, 99)]

    def _masks(self, ids, am, seed):
        return mask_tokens(ids, np.random.default_rng(seed), self.tok.mask_token_id, self.tok.vocab_size,
                           self.tok.all_special_ids, attention_mask=am) + (am,)

    def model(self, width: int, seed: int):
        """A 1-layer, 2-head BertForMaskedLM of hidden size ``width``, no dropout."""
        return tinybert.BertForMaskedLM(small_config(self.tok, hidden=width, layers=1, heads=2, dropout=0.0),
                                        seed=seed, attention_backend="numpy")

    def batch(self, rows, rng):
        return mlm_batch(self.tok, self.train_ids, self.train_am, rows, rng)


def masked_loss(model, fixed_sets) -> float:
    """Mean MLM cross-entropy of ``model`` (in eval mode) over fixed (inputs, labels, attention_mask) sets."""
    model.eval()
    loss = float(np.mean([cross_entropy(model.forward(x, attention_mask=a), y)[0] for x, y, a in fixed_sets]))
    model.train()
    return loss


def train_to_loss(model, data: SmallCorpus, rng, target=TARGET, max_steps=MAX_STEPS, progress=None):
    """MLM steps (Adam, η = 5e-3 after 50 warm-up steps, decaying to 0 at MAX_STEPS, gradients clipped
    to norm 1) on random batches of 16 training sentences with fresh 80/10/10 masks, until the loss on
    the fixed train masks is ≤ target (checked every 10 steps), or max_steps. -> (steps, train loss)"""
    opt = tinybert.Adam(model.parameters(), lr=LR)
    schedule = tinybert.get_linear_schedule_with_warmup(opt, WARMUP, MAX_STEPS)
    train_loss = masked_loss(model, data.fixed_train)
    for step in range(1, max_steps + 1):
        mlm_step(model, opt, schedule, *data.batch(rng.integers(0, N_TRAIN, 16), rng))
        if step % 10 == 0 or step == max_steps:
            train_loss = masked_loss(model, data.fixed_train)
            if progress:
                progress(step, max_steps, f"C = {model.config.hidden_size}: train loss {train_loss:.2f}, step")
            if train_loss <= target:
                return step, train_loss
    return max_steps, train_loss


def multiply_adds_per_token(config) -> int:
    """Multiply-adds of one token's forward pass through the weight matrices of a BertForMaskedLM
    (Q, K, V, O, the FFN, the MLM transform and decoder; attention's T² part and biases left out)."""
    C, I = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * C * C + 2 * C * I) + C * C + C * config.vocab_size
