"""Sentence embeddings: a BERT's hidden states, mean-pooled over the real tokens, then L2-normalised.

For all-MiniLM-L6-v2 this is exactly what sentence-transformers computes: the model's
``modules.json`` lists three modules,

    Transformer (BertModel, max_seq_length 256)  ->  Pooling (mean)  ->  Normalize (L2)

    h = BertModel(ids)                        h: [B, T, H] last hidden states
    e = Σ_t m_t h_t / max(Σ_t m_t, 1e-9)      m: [B, T] attention mask (1 = real token) -> e: [B, H]
    ê = e / max(‖e‖₂, 1e-12)                  unit length, so cosine similarity = ê · ê'

The padding positions get m_t = 0 and so do not move the mean; [CLS] and [SEP] are real tokens and
do count (sentence-transformers counts them too). ``max_seq_length`` is 256 for this model (read from
``sentence_bert_config.json`` when the folder has one): longer texts are truncated to 256 tokens,
although the model has 512 position embeddings, because it was trained on at most 256.

sentence-transformers' names, so its documented snippets run here::

    model = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    embeddings = model.encode(["A man is eating food.", "Someone is having a meal."])   # [2, 384] float32
    model.similarity(embeddings, embeddings)                  # [2, 2] cosine similarities
    model.get_sentence_embedding_dimension()                  # 384

and the conveniences, under names that say what they take::

    model.similarity_of_texts("A man is eating food.", "Someone is having a meal.")  # a float in [-1, 1]
    model.mean_pooled(texts)                                  # [N, H] before the L2 normalisation
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from tinybert.errors import InvalidType, InvalidValue
from tinybert.io.paths import PACKAGED_MODEL, checkpoint_folder
from tinybert.models import BertModel
from tinybert.xp import to_numpy

SENTENCE_CONFIG_NAME = "sentence_bert_config.json"
POOLING_CONFIG = os.path.join("1_Pooling", "config.json")


def mean_pool(hidden, attention_mask):
    """Average of the hidden states over the positions where the mask is 1.

    hidden: [B, T, H] float; attention_mask: [B, T] 0/1 -> [B, H] (same dtype as hidden)

        e_b = Σ_t m_bt h_bt / max(Σ_t m_bt, 1e-9)
    """
    hidden = np.asarray(hidden)
    if hidden.ndim != 3:
        raise InvalidValue(f"hidden must have shape [B, T, H], got {hidden.shape}")
    m = np.asarray(attention_mask)
    if m.shape != hidden.shape[:2]:
        raise InvalidValue(f"attention_mask has shape {m.shape}, expected hidden's [B, T] = {hidden.shape[:2]}")
    m = m.astype(hidden.dtype)[:, :, None]                       # [B, T, 1]
    summed = (hidden * m).sum(axis=1)                            # [B, H]
    counts = np.maximum(m.sum(axis=1), 1e-9)                     # [B, 1]
    return summed / counts


def l2_normalize(x, eps=1e-12):
    """x: [N, H] -> x / max(‖x‖₂, eps) row by row (torch.nn.functional.normalize's eps)."""
    x = np.asarray(x)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def cosine_similarity(a, b):
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    a: [N, H], b: [M, H] -> [N, M];  cos(u, v) = u·v / (‖u‖ ‖v‖)
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidValue(f"cosine_similarity expects [N, H] and [M, H] arrays, got {a.shape} and {b.shape}")
    return l2_normalize(a) @ l2_normalize(b).T


def _read_json(file):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InvalidValue(f"{file} is not valid JSON: {e}") from None


class SentenceEncoder:
    """Texts -> unit-length sentence vectors with a BERT: mean pooling, then L2 normalisation.

    Args:
        model: a BertModel (its ``forward`` gives the hidden states [B, T, H]).
        tokenizer: a tinybert BertTokenizer for the same vocabulary.
        max_seq_length: texts are truncated to this many tokens, [CLS] and [SEP] included.

    Use ``SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")`` (or a checkpoint folder).
    """

    def __init__(self, model, tokenizer, max_seq_length: int = 256):
        if not isinstance(model, BertModel):
            raise InvalidType(f"model must be a tinybert.BertModel, got {type(model).__name__}")
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, (int, np.integer)) \
                or not 2 <= max_seq_length <= model.config.max_position_embeddings:
            raise InvalidValue(f"max_seq_length={max_seq_length!r}: expected an integer in "
                             f"[2, max_position_embeddings={model.config.max_position_embeddings}]")
        if len(tokenizer) != model.config.vocab_size:
            raise InvalidValue(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}: they do not belong together")
        self.model = model                      # run in eval mode by encode(), its own mode kept
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def from_pretrained(cls, path=PACKAGED_MODEL, dtype=np.float32, attention_backend="auto",
                        max_seq_length=None):
        """Load model, tokenizer and pooling settings from a folder (or ``"all-MiniLM-L6-v2"``).

        The folder holds an HF BERT (config.json, model.safetensors, vocab.txt); a sentence-transformers
        folder also has ``sentence_bert_config.json`` (max_seq_length: 256 for all-MiniLM-L6-v2) and
        ``1_Pooling/config.json`` (which must say mean pooling). Without them: mean pooling and
        max_seq_length = the tokenizer's model_max_length, capped by max_position_embeddings.
        """
        from tinybert.text.tokenizer import BertTokenizer

        folder = checkpoint_folder(path)
        pooling_file = os.path.join(folder, POOLING_CONFIG)
        if os.path.isfile(pooling_file):
            pooling = _read_json(pooling_file)
            if not pooling.get("pooling_mode_mean_tokens", False) or any(
                    pooling.get(k, False) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                                    "pooling_mode_mean_sqrt_len_tokens")):
                raise InvalidValue(f"{pooling_file} asks for a pooling other than mean pooling alone; "
                                 "SentenceEncoder implements mean pooling only")
        model = BertModel.from_pretrained(folder, dtype=dtype, attention_backend=attention_backend)
        tokenizer = BertTokenizer.from_pretrained(folder)
        if max_seq_length is None:
            st_file = os.path.join(folder, SENTENCE_CONFIG_NAME)
            if os.path.isfile(st_file):
                max_seq_length = _read_json(st_file).get("max_seq_length")
            if max_seq_length is None:
                max_seq_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
        return cls(model, tokenizer, max_seq_length)

    @property
    def dim(self) -> int:
        """H, the length of each sentence vector (384 for all-MiniLM-L6-v2)."""
        return self.model.config.hidden_size

    def get_sentence_embedding_dimension(self) -> int:
        """H, the length of each sentence vector (sentence-transformers' name for ``dim``)."""
        return self.dim

    def encode(self, sentences, batch_size: int = 32, show_progress_bar=None, normalize_embeddings: bool = False):
        """sentence-transformers' ``encode``: N texts -> [N, H] float32 unit vectors; one str -> [H].

        The L2 normalisation is this encoder's last module (all-MiniLM-L6-v2's modules.json ends with
        Normalize), so the vectors have unit length whatever ``normalize_embeddings`` says (in
        sentence-transformers that flag adds a normalisation a model without the module lacks).
        ``mean_pooled`` gives the vectors before it. ``show_progress_bar``: a line per batch on stderr.
        """
        for name, flag in (("normalize_embeddings", normalize_embeddings), ("show_progress_bar", show_progress_bar)):
            if flag is not None and not isinstance(flag, bool):
                raise InvalidType(f"{name} must be True or False, got {flag!r}")
        vectors = self.mean_pooled(sentences, batch_size, bool(show_progress_bar))
        vectors = l2_normalize(vectors).astype(np.float32, copy=False)
        return vectors[0] if isinstance(sentences, str) else vectors

    def mean_pooled(self, texts, batch_size: int = 32, show_progress_bar: bool = False):
        """The mean-pooled hidden states of N texts -> [N, H] float32, not normalised (one str: [1, H]).

        Texts are sorted by token count and cut into batches of ``batch_size``, so each batch pads
        to a similar length (less work on padding); the rows come back in the input order. The
        result does not depend on batch_size beyond float rounding.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise InvalidType(f"texts must be a str or a list of str, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidType(f"texts[{i}] must be a str, got {type(t).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InvalidValue(f"batch_size={batch_size!r}: expected a positive integer")
        texts = [t.strip() for t in texts]                        # as sentence-transformers does
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        lengths = [len(self.tokenizer.tokenize(t)) for t in texts]
        order = np.argsort([-n for n in lengths], kind="stable")   # longest first, ties in input order
        n_batches = -(-len(texts) // batch_size)
        for number, start in enumerate(range(0, len(texts), batch_size), 1):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_seq_length)
            with self.model.evaluating():
                hidden, _ = self.model.forward(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
            out[idx] = mean_pool(to_numpy(hidden), enc["attention_mask"])     # [b, H]
            if show_progress_bar:
                print(f"Batches: {number}/{n_batches}", file=sys.stderr, flush=True)
        return out

    def similarity(self, embeddings1, embeddings2):
        """sentence-transformers' ``similarity``: cosine similarity of embeddings [N, H] and [M, H]
        (or one [H] each) -> [N, M] float. For texts, ``similarity_of_texts``."""
        a, b = (np.asarray(e) for e in (embeddings1, embeddings2))
        if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
            raise InvalidType("similarity takes embeddings (float arrays from encode); for texts use "
                              "similarity_of_texts(a, b)")
        return cosine_similarity(np.atleast_2d(a), np.atleast_2d(b))

    def similarity_of_texts(self, a, b):
        """Cosine similarity of sentences: two str -> a float; a list of N and a list of M -> [N, M]."""
        single = isinstance(a, str) and isinstance(b, str)
        ea = self.encode([a] if isinstance(a, str) else a)
        eb = self.encode([b] if isinstance(b, str) else b)
        sims = cosine_similarity(ea, eb)
        return float(sims[0, 0]) if single else sims


__all__ = ["SentenceEncoder", "mean_pool", "l2_normalize", "cosine_similarity"]
