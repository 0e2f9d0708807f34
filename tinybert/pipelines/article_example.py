"""The article's code example, done right: what BertModel returns and what you can do with it.

The article tokenizes 我喜欢在雨中漫步, runs ``BertModel`` and then calls
``tokenizer.decode(outputs[0].numpy())``. That last line is the mistake: ``outputs = model(inputs)[0]``
is the last hidden state, a float array [1, T, H], so ``outputs[0]`` is [T, H] — one H-dimensional
vector per token — not token ids.
``decode`` maps integers to vocabulary entries; given vectors it either fails or, after a cast to
int, looks up meaningless ids. What the example wanted, done properly:

1. ``run_bert(model, tokenizer, text)`` -> the encoding and the hidden states [1, T, H];
2. ``nearest_tokens(model, tokenizer, hidden, k)`` -> per position, the vocabulary tokens whose
   embedding is closest: through the MLM head when the model has one (its decoder is tied to the
   word embeddings), else by cosine against the word-embedding matrix itself;
3. sentence similarity: ``tinybert.pipelines.sentence.SentenceEncoder`` and ``similarity_table`` below.

A fact the real vocabulary shows: all-MiniLM-L6-v2 uses bert-base-uncased's English WordPiece
vocabulary, which holds only some CJK characters — 我 and 中 are in it; 喜 欢 在 雨 漫 步 become
[UNK]. So the model sees "我 [UNK] [UNK] [UNK] [UNK] 中 [UNK] [UNK]": to work on Chinese, pick a
checkpoint whose vocabulary covers it (bert-base-chinese, multilingual models).
"""
from __future__ import annotations

import numpy as np

from tinybert.errors import InvalidType, InvalidValue
from tinybert.nn.softmax import softmax
from tinybert.pipelines.sentence import cosine_similarity, l2_normalize
from tinybert.xp import to_numpy

ARTICLE_TEXT = "我喜欢在雨中漫步"


def run_bert(model, tokenizer, text: str = ARTICLE_TEXT):
    """Tokenize one text ([CLS] text [SEP]) and run a BertModel on it.

    -> (encoding: dict of [1, T] int64 arrays input_ids/token_type_ids/attention_mask,
        hidden: [1, T, H] float — the last hidden states, the article's ``outputs``; its
        ``outputs[0]`` is ``hidden[0]``, [T, H])
    """
    if not isinstance(text, str):
        raise InvalidType(f"text must be a str, got {type(text).__name__}")
    enc = tokenizer([text])                     # a list of one text -> [1, T] arrays
    hidden, _ = model.forward(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    return enc, to_numpy(hidden)


def why_not_decode(hidden) -> str:
    """A one-paragraph explanation, with the actual shape and dtype, of why ``decode(hidden)`` is wrong."""
    hidden = np.asarray(hidden)
    return (f"outputs[0] has shape {list(hidden.shape)} and dtype {hidden.dtype}: one "
            f"{hidden.shape[-1]}-dimensional vector per token, not token ids. tokenizer.decode maps "
            "integer ids to vocabulary entries, so it cannot read vectors; to turn vectors back into "
            "tokens, compare them with the token embeddings (nearest_tokens) or use an MLM head.")


def _hidden_2d(hidden):
    hidden = np.asarray(to_numpy(hidden))
    if hidden.ndim == 3:
        if hidden.shape[0] != 1:
            raise InvalidValue(f"hidden must be [T, H] or [1, T, H] (one sequence), got {hidden.shape}")
        hidden = hidden[0]
    if hidden.ndim != 2:
        raise InvalidValue(f"hidden must be [T, H] or [1, T, H], got shape {hidden.shape}")
    return hidden


def nearest_tokens(model, tokenizer, hidden, k: int = 5):
    """The k vocabulary tokens nearest to each position's hidden state.

    Args:
        model: a BertModel or BertForMaskedLM (the one that produced ``hidden``).
        tokenizer: its BertTokenizer.
        hidden: [T, H] or [1, T, H] hidden states.
        k: how many tokens per position.
    Returns:
        a list of T lists of k ``(token, score)`` pairs, best first.

    With an MLM head (``BertForMaskedLM``): scores are the head's probabilities,
    ``softmax(LayerNorm(GELU(h W_Tᵀ + b_T)) W_Eᵀ + b)`` — the decoder is the word-embedding matrix
    W_E [V, H] (tied). Without one (all-MiniLM-L6-v2 ships no MLM head): scores are the cosines
    ``cos(h_t, W_E[v])`` against the same tied matrix, a rougher guide that skips the transform; for
    words the model knows, the nearest token is usually the input token itself.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidValue(f"k={k!r}: expected a positive integer")
    h = _hidden_2d(hidden)                                         # [T, H]
    head = getattr(model, "cls", None)
    if head is not None:
        logits = to_numpy(head.forward(h[None]))[0]                # [T, V]
        scores = softmax(logits.astype(np.float64))                 # [T, V] probabilities
        W = None
    else:
        bert = getattr(model, "bert", model)
        W = to_numpy(bert.embeddings.word_embeddings.weight.data)  # [V, H]
        if W.shape[1] != h.shape[1]:
            raise InvalidValue(f"hidden has width {h.shape[1]} but the model's embeddings have {W.shape[1]}")
        scores = l2_normalize(h) @ l2_normalize(W).T               # [T, V] cosines
    k = min(int(k), scores.shape[1])
    out = []
    for row in scores:
        top = np.argpartition(-row, k - 1)[:k]
        top = top[np.argsort(-row[top], kind="stable")]
        out.append([(tokenizer.convert_ids_to_tokens(int(i)), float(row[i])) for i in top])
    return out


def similarity_table(encoder, sentences):
    """Cosine similarity of every pair of sentences with a SentenceEncoder. -> [N, N] float32."""
    e = encoder.encode(list(sentences))
    return cosine_similarity(e, e)


def format_similarity_table(sentences, sims, width: int = 28) -> str:
    """A plain-text table of ``sims`` [N, N] with the sentences (cut to ``width``) as row labels."""
    sims = np.asarray(sims)
    labels = [s if len(s) <= width else s[:width - 1] + "…" for s in sentences]
    lines = [" " * (width + 3) + "".join(f" {j:>6d}" for j in range(len(sentences)))]
    for i, label in enumerate(labels):
        lines.append(f"{i:>2d} {label:<{width}}" + "".join(f" {v:6.3f}" for v in sims[i]))
    return "\n".join(lines)


__all__ = ["ARTICLE_TEXT", "run_bert", "why_not_decode", "nearest_tokens", "similarity_table",
           "format_similarity_table"]
