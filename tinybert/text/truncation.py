"""Saying so when texts are cut to fit: every place that tokenizes with a length limit calls these.

A BERT reads at most ``max_position_embeddings`` tokens, so longer texts are truncated (their end
is dropped, [SEP] kept). That is the right thing to do, but never silently: training data, plots
and the command line all report how many texts lost tokens, through the ``tinybert`` logger
(printed to stderr when nothing else is set up).
"""
from __future__ import annotations

import logging

logger = logging.getLogger("tinybert")


def full_length(tokenizer, text: str) -> int:
    """How many tokens ``text`` becomes with [CLS] and [SEP], before any truncation."""
    return len(tokenizer.tokenize(text)) + 2


def count_truncated(tokenizer, texts, lengths, max_length: int) -> int:
    """How many of ``texts`` were cut, given their encoded ``lengths`` (after truncation to
    ``max_length``). Only the rows that reached the limit are tokenized again, so this costs
    nothing when every text fits."""
    return sum(1 for text, n in zip(texts, lengths)
               if int(n) >= max_length and full_length(tokenizer, text) > max_length)


def warn_truncated(n_cut: int, n_total: int, max_length: int, where: str) -> None:
    """Log "3 of 1,200 training texts were longer than max_length=128 tokens: truncated"."""
    if n_cut:
        logger.warning("%s of %s %s %s longer than %d tokens and %s truncated to fit (their end is "
                       "not seen)", f"{n_cut:,}", f"{n_total:,}", where, "was" if n_cut == 1 else "were",
                       max_length, "was" if n_cut == 1 else "were")


def encode_with_note(tokenizer, texts, max_length: int, where: str, **kwargs):
    """``tokenizer(texts, truncation=True, max_length=max_length, **kwargs)`` that also says how many
    texts were truncated; -> the tokenizer's dict of arrays."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, **kwargs)
    lengths = enc["attention_mask"].sum(axis=-1)
    warn_truncated(count_truncated(tokenizer, texts, lengths, max_length), len(texts), max_length, where)
    return enc
