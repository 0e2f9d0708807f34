"""Training data as arrays: texts encoded once, batches cut from them, validation held out, and a
fingerprint that tells a resumed run whether it reads what it read before.

    encode_texts(tokenizer, texts, max_length)   N texts -> ids [N, T] (right-padded), lengths [N]
    batch_rows(ids, lengths, rows)               the rows of one batch, trimmed to their longest
    split_off(texts, fraction, seed)             hold out a seeded share of texts (pretraining)
    hold_out_validation(train, seed)             10% of each label (fine-tuning)
"""
from __future__ import annotations

import hashlib

import numpy as np

from tinybert.errors import InvalidValue
from tinybert.text.truncation import encode_with_note


def encode_texts(tokenizer, texts, max_length: int, where: str = "texts"):
    """texts: list of N str -> (ids [N, T] int64 right-padded with [PAD], lengths [N]).

    Each row is ``[CLS] tokens [SEP]``, truncated to ``max_length``; how many texts were truncated
    is logged ("3 of 1,200 training texts were longer than 128 tokens ...").
    """
    if len(texts) == 0:
        raise InvalidValue(f"no texts to encode: the {where} are empty")
    if max_length is None:
        raise InvalidValue("max_length=None: pretrain() and finetune() set it to the model's "
                           "max_position_embeddings; a task built directly needs an integer max_length")
    enc = encode_with_note(tokenizer, texts, max_length, where, padding=True)
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].sum(axis=1).astype(np.int64)


def fingerprint(*arrays) -> str:
    """A short SHA-256 of arrays' shapes and bytes: the same data encoded the same way gives the same
    string, so a resumed run can tell that it reads what it read before."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def batch_rows(ids, lengths, rows):
    """The rows of a batch, trimmed to their longest: -> input_ids [B, T], attention_mask [B, T]."""
    t = int(lengths[rows].max())
    x = ids[rows, :t]
    mask = (np.arange(t)[None, :] < lengths[rows][:, None]).astype(np.int64)
    return x, mask


def split_off(texts, fraction, seed):
    """Hold out a seeded random ``fraction`` of texts (at least one): -> (rest, held_out)."""
    if len(texts) < 2:
        raise InvalidValue(f"need at least 2 texts to hold some out for validation, got {len(texts)}")
    order = np.random.default_rng([seed, 3]).permutation(len(texts))
    n_val = max(1, int(round(fraction * len(texts))))
    held = set(order[:n_val].tolist())
    return ([t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held])


def hold_out_validation(train, seed):
    """10% of each label of ``train`` = (texts, labels) (stratified, at least one each) -> (train, val)."""
    texts, labels = list(train[0]), list(train[1])
    held = set()
    for name in sorted(set(labels)):
        idx = [i for i, label in enumerate(labels) if label == name]
        if len(idx) < 2:
            raise InvalidValue(f"label {name!r} has a single training example: cannot hold one out for "
                               "validation; give --val or more examples")
        order = np.random.default_rng([seed, 4]).permutation(len(idx))
        held.update(idx[j] for j in order[:max(1, round(0.1 * len(idx)))])
    val = ([texts[i] for i in sorted(held)], [labels[i] for i in sorted(held)])
    rest = ([t for i, t in enumerate(texts) if i not in held],
            [label for i, label in enumerate(labels) if i not in held])
    return rest, val
