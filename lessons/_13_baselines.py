"""A baseline with one character of context for lesson 13 and its exercises (no model, only counts)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from tinybert.text.tokenizer import is_chinese_char


def _chinese(counter: Counter) -> list:
    return [c for c, _ in counter.most_common() if is_chinese_char(c)]


def bigram_guess(train_docs, held_docs) -> dict:
    """Guess each held-out Chinese character as the Chinese character that most often follows the one
    before it in the training documents (the commonest Chinese character when that one was never
    followed by any). -> {"bigram": its accuracy, "unigram": always the commonest one's, "common": that
    character, "n": how many held-out characters were guessed}"""
    follow, counts = {}, Counter()
    for d in train_docs:
        for t in d.texts:
            counts.update(t)
            for a, b in zip(t, t[1:]):
                follow.setdefault(a, Counter())[b] += 1
    common = _chinese(counts)[0]
    best = {a: _chinese(c)[0] for a, c in follow.items() if _chinese(c)}
    pairs = [(a, b) for d in held_docs for t in d.texts for a, b in zip(t, t[1:]) if is_chinese_char(b)]
    return {"bigram": sum(best.get(a, common) == b for a, b in pairs) / len(pairs),
            "unigram": sum(b == common for _, b in pairs) / len(pairs), "common": common, "n": len(pairs)}


def bigram_on_masked(train_ids, train_mask, inputs, labels, vocab_size: int) -> dict:
    """The bigram guess scored on an MLM's own targets: each masked position (labels ≠ -100) is guessed
    as the token that most often follows, in the training rows, the token just before it *in the
    corrupted input the model reads* (so a [MASK] before it gives no context: the commonest token).

    train_ids, train_mask: [N, T] tokenized training rows; inputs, labels: [M, T] a masked batch.
    -> {"bigram": its accuracy, "unigram": always the commonest token's, "n": the targets}"""
    prev, nxt = train_ids[:, :-1], train_ids[:, 1:]
    real = train_mask[:, 1:] == 1
    follow = np.zeros((vocab_size, vocab_size), dtype=np.int64)
    np.add.at(follow, (prev[real], nxt[real]), 1)                    # follow[a, b]: b right after a
    common = int(np.bincount(train_ids[train_mask == 1], minlength=vocab_size).argmax())
    best = np.where(follow.sum(1) > 0, follow.argmax(1), common)     # [V]: the guess after each token
    rows, cols = np.nonzero(labels != -100)
    guess = best[inputs[rows, cols - 1]]                             # position 0 is [CLS], never a target
    target = labels[rows, cols]
    return {"bigram": float(np.mean(guess == target)), "unigram": float(np.mean(target == common)),
            "n": int(rows.size)}
