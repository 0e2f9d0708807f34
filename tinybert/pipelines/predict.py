"""A model's answer for text: the class of a sentence, the words behind each [MASK].

    classify(model, tokenizer, texts)          -> [(label, probability)] per text   (tinybert predict)
    fill_mask(model, tokenizer, text, top_k)   -> [(position, [(token, probability)])] per [MASK]
                                                                                    (tinybert fill-mask)
    checkpoint_heads(path)                     which task heads a checkpoint's tensors hold
    load_masked_lm(path, fresh_head=False)     a BertForMaskedLM, refusing a checkpoint without an
                                               MLM head (a random head predicts confident nonsense)

Texts longer than the model reads are truncated, and it is said how many were (``text.truncation``);
the model runs in eval mode (no dropout) and is handed back in the mode it was in.
"""
from __future__ import annotations

import numpy as np

from tinybert.errors import CheckpointError, InvalidValue
from tinybert.io.checkpoint import checkpoint_part, read_checkpoint_header, read_config
from tinybert.io.paths import checkpoint_folder
from tinybert.models.bert import BertForMaskedLM
from tinybert.models.nonfinite import check_finite_outputs
from tinybert.nn.softmax import softmax
from tinybert.text.truncation import encode_with_note
from tinybert.xp import to_numpy


def classify(model, tokenizer, texts) -> list[tuple[str, float]]:
    """The most probable label of each text with a BertForSequenceClassification, and its probability
    p = softmax(logits) [N, K]."""
    enc = encode_with_note(tokenizer, texts, model.config.max_position_embeddings, "texts", padding=True)
    with model.evaluating():
        logits = to_numpy(model.forward(enc["input_ids"], attention_mask=enc["attention_mask"]))
    check_finite_outputs(logits, "the classifier's logits")
    probs = softmax(logits.astype(np.float64))                                   # [N, K]
    best = probs.argmax(axis=-1)
    return [(model.config.id2label[int(k)], float(row[k])) for k, row in zip(best, probs)]


def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[tuple[int, list[tuple[str, float]]]]:
    """The ``top_k`` likeliest tokens at each [MASK] of ``text`` with a BertForMaskedLM: -> for each
    mask, (its token position, [(token, probability), ...] most probable first)."""
    positions = model.config.max_position_embeddings
    ids = encode_with_note(tokenizer, [text], positions, "texts")["input_ids"][0]
    where = np.flatnonzero(ids == tokenizer.mask_token_id)
    if where.size == 0:
        if tokenizer.mask_token in text:
            raise InvalidValue(f"every {tokenizer.mask_token} lies beyond the model's {positions} tokens, which "
                               "were all it can read: shorten the text")
        raise InvalidValue(f"the text has no {tokenizer.mask_token}: write it where a word should be predicted")
    with model.evaluating():
        logits = to_numpy(model.forward(ids[None, :]))[0]                        # [T, V]
    check_finite_outputs(logits[where], "the MLM head's logits at the [MASK] positions")
    probs = softmax(logits[where].astype(np.float64))                            # [M, V]
    return [(int(pos), [(tokenizer.convert_ids_to_tokens(int(i)), float(row[i])) for i in np.argsort(-row)[:top_k]])
            for pos, row in zip(where, probs)]


def checkpoint_heads(path) -> set:
    """The task heads whose tensors a checkpoint holds: a subset of {"masked_lm", "classifier"}
    (read from the safetensors header; no weights are loaded)."""
    keys = read_checkpoint_header(checkpoint_folder(path))
    heads = set()
    for key in keys:
        if checkpoint_part(key) == "head":
            heads.add("masked_lm" if key.startswith("cls.predictions.") else
                      "classifier" if key.startswith("classifier.") else "other")
    return heads - {"other"}


def load_masked_lm(path, fresh_head: bool = False, **kwargs) -> BertForMaskedLM:
    """``BertForMaskedLM.from_pretrained(path)``, refused (CheckpointError) when the checkpoint has no
    masked-language-model head: its predictions would come from a randomly initialised head, which
    prints confident-looking nonsense. ``fresh_head=True`` loads it anyway with a new random head
    (to train it, or to see what an untrained head says)."""
    folder = checkpoint_folder(path)
    if not fresh_head and "masked_lm" not in checkpoint_heads(folder):
        arch = (read_config(folder).extra.get("architectures") or ["an unnamed architecture"])[0]
        raise CheckpointError(
            f"the checkpoint at {folder} ({arch}) has no masked-language-model head (no cls.predictions.* "
            "tensors), so fill-mask would predict from random weights. Checkpoints with one: those written by "
            "`tinybert pretrain` (RUN/checkpoint), and HF's *ForMaskedLM / *ForPreTraining checkpoints such as "
            "bert-base-uncased; sentence-embedding models (all-MiniLM-L6-v2) and fine-tuned classifiers have "
            "none. Pass fresh_head=True (--fresh-head) to use a new, untrained head anyway")
    return BertForMaskedLM.from_pretrained(folder, **kwargs)
