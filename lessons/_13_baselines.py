"""A baseline with one character of context for lesson 13 and its exercises (no model, only counts)."""
from __future__ import annotations

from collections import Counter

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
