"""How well a vocabulary covers a text: the share of its words that stay whole.

    word_coverage(tokenizer, texts) -> {"words", "whole", "pieces", "unknown"}   shares of the words
    warn_poor_coverage(tokenizer, texts, where)   a warning when most words fall apart

A checkpoint pretrained on other text (the demo's 371-piece vocabulary, an English vocabulary on
Chinese) cuts most words of new text into pieces or [UNK]; fine-tuning it then learns slowly or not
at all, and nothing else says why. A word is what basic tokenization yields (whitespace and
punctuation split, CJK characters apart) holding a letter or digit; it is "whole" when WordPiece
keeps it as one token, "pieces" when it becomes several, "unknown" when it becomes [UNK].
"""
from __future__ import annotations

import logging

from tinybert.text.tokenizer import basic_tokenize

logger = logging.getLogger("tinybert")
POOR_COVERAGE = 0.5          # warn when fewer than half of the words stay whole


def word_coverage(tokenizer, texts, max_words: int = 20000) -> dict:
    """Shares of the words of ``texts`` (the first ``max_words``) that WordPiece keeps whole, cuts into
    pieces, or maps to [UNK]. -> {"words": n, "whole": share, "pieces": share, "unknown": share}"""
    counts = {"whole": 0, "pieces": 0, "unknown": 0}
    n = 0
    for text in texts:
        for word in basic_tokenize(text, tokenizer.do_lower_case, tokenizer.tokenize_chinese_chars,
                                   tokenizer.strip_accents):
            if not any(ch.isalnum() for ch in word):
                continue
            pieces = tokenizer._wordpiece_cached(word)
            counts["unknown" if pieces == [tokenizer.unk_token] else "whole" if len(pieces) == 1 else "pieces"] += 1
            n += 1
            if n >= max_words:
                break
        if n >= max_words:
            break
    return {"words": n, **{k: (v / n if n else 0.0) for k, v in counts.items()}}


def warn_poor_coverage(tokenizer, texts, where: str) -> dict:
    """Log a warning (the ``tinybert`` logger) when fewer than half of the words of ``texts`` stay whole
    tokens of ``tokenizer``'s vocabulary. -> the coverage."""
    c = word_coverage(tokenizer, texts)
    if c["words"] and c["whole"] < POOR_COVERAGE:
        logger.warning("the vocabulary (%d tokens) fits %s poorly: of %d words, only %.0f%% stay whole tokens, "
                       "%.0f%% fall apart into pieces and %.0f%% become [UNK]; a model fine-tuned on text it "
                       "cannot read learns slowly or not at all. Start from a checkpoint whose vocabulary covers "
                       "this text, or pretrain on it first (tinybert pretrain --train ...)",
                       tokenizer.vocab_size, where, c["words"], 100 * c["whole"], 100 * c["pieces"],
                       100 * c["unknown"])
    return c
