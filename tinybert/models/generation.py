"""Text generation with a causal decoder: one token at a time, greedy or sampled, with a KV cache.

    ids = prompt                                            [B, T]
    repeat max_new_tokens times:
        logits = model.forward(ids)[:, -1]                  the next token's scores   [B, V]
        greedy:   next = argmax(logits)
        sampling: next ~ softmax(filter(logits / temperature))   (top_k, then top_p)
        ids = [ids | next]

Without the cache every step runs the whole prefix again; with it (``use_cache=True``) the first
step runs the prompt and fills a ``KVCache`` (each layer's keys and values, and the encoder's keys
and values for cross-attention, computed once), and every later step runs the one new token
against the cached keys and values (``nn/kv_cache.py``). The two give the same logits up to
rounding; tests/test_decoder.py proves it.

Filters, as transformers applies them: top_k keeps the k highest scores; top_p keeps the smallest
set of most likely tokens whose probabilities sum to at least p (always the most likely one).
After ``eos_token_id`` a sequence is finished: it is padded with ``pad_token_id`` (the eos id when
the config has none) and generation stops once every sequence has finished.
"""
from __future__ import annotations

import numbers

import numpy as np

from tinybert.config import check_memory
from tinybert.errors import InvalidType, InvalidValue
from tinybert.nn.kv_cache import KVCache
from tinybert.xp import to_numpy


def _check_generate_args(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, seed):
    config = model.decoder_config
    if not hasattr(input_ids, "shape"):
        input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise InvalidValue(f"input_ids must be a [batch >= 1, seq_len >= 1] array of token ids (the prompt), "
                           f"got shape {tuple(input_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise InvalidValue(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    total = input_ids.shape[1] + int(max_new_tokens)
    if total > config.max_position_embeddings:
        raise InvalidValue(f"max_new_tokens={max_new_tokens}: the prompt's {input_ids.shape[1]} tokens + "
                           f"{max_new_tokens} new ones = {total} exceed max_position_embeddings="
                           f"{config.max_position_embeddings}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise InvalidValue(f"temperature={temperature!r}: expected a number > 0 (1.0 leaves the scores as they are)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise InvalidValue(f"top_k={top_k!r}: expected an integer >= 1 or None")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise InvalidValue(f"top_p={top_p!r}: expected a probability in (0, 1] or None")
    if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, numbers.Integral)
                                     or not 0 <= eos_token_id < config.vocab_size):
        raise InvalidValue(f"eos_token_id={eos_token_id!r}: expected a token id in [0, vocab_size={config.vocab_size})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise InvalidType(f"seed must be an integer or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise InvalidValue(f"seed={seed}: expected an integer >= 0 (NumPy's generators take no negative seed)")
    check_memory(generation_bytes(config, input_ids.shape[0], total, model.parameters()[0].data.dtype.itemsize),
                 f"generating {input_ids.shape[0]:,} sequences of {total} tokens at once", "batch",
                 input_ids.shape[0])
    return input_ids


def generation_bytes(config, batch: int, length: int, itemsize: int) -> int:
    """About the bytes ``generate`` holds for ``batch`` sequences of up to ``length`` tokens: the ids,
    every layer's cached keys and values, one step's hidden states, feed-forward activations and
    attention scores, and the vocabulary logits with their probabilities."""
    h, i = config.hidden_size, config.intermediate_size
    per_row = (2 * config.num_hidden_layers * length * h + length * (4 * h + i + config.num_attention_heads)
               + 3 * config.vocab_size)
    return batch * (8 * length + itemsize * per_row)


def filter_logits(logits, top_k=None, top_p=None):
    """Scores outside the top_k / top_p set -> −∞.  logits: [B, V] float64 -> [B, V]"""
    logits = logits.copy()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]          # the k-th highest score
        logits[logits < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")             # most likely first
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        p = np.exp(sorted_logits - sorted_logits[:, :1])
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p                          # mass of the more likely tokens
        drop_sorted = before >= top_p                                   # the set already reached p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits[drop] = -np.inf
    return logits


def next_tokens(logits, do_sample, temperature, top_k, top_p, rng):
    """logits: [B, V] (the last position's) -> the next token of each row: [B] int64."""
    logits = to_numpy(logits).astype(np.float64)
    if not do_sample:
        return logits.argmax(axis=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))                                     # inverse-CDF sampling
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def generate(model, input_ids, max_new_tokens, encoder_hidden_states=None, encoder_attention_mask=None,
             use_cache=True, do_sample=False, temperature=1.0, top_k=None, top_p=None, eos_token_id=None,
             seed=None):
    """Continue ``input_ids`` [B, T] by up to ``max_new_tokens`` tokens -> ids [B, T + n] (n <= max_new_tokens;
    fewer only when every sequence reached ``eos_token_id``).

    ``model``: a BertLMHeadModel (``encoder_hidden_states`` [B, S, H] and ``encoder_attention_mask``
    [B, S] when it has cross-attention). Runs in eval mode (no dropout) and restores the model's mode.
    ``seed`` seeds the sampling generator (NumPy's default_rng); greedy decoding ignores it.
    """
    input_ids = _check_generate_args(model, input_ids, max_new_tokens, temperature, top_k, top_p,
                                     eos_token_id, seed)
    config = model.decoder_config
    rng = np.random.default_rng(seed)
    ids = to_numpy(input_ids).astype(np.int64)
    pad = config.pad_token_id if config.pad_token_id is not None else eos_token_id
    finished = np.zeros(ids.shape[0], dtype=bool)
    cache = KVCache(config.num_hidden_layers) if use_cache else None
    with model.evaluating():
        step_ids = ids
        for _ in range(int(max_new_tokens)):
            xp = model.xp
            logits = model.forward(xp.asarray(step_ids), encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, cache=cache)
            new = next_tokens(logits[:, -1], do_sample, temperature, top_k, top_p, rng)
            if eos_token_id is not None:
                new = np.where(finished, pad, new)
                finished |= new == eos_token_id
            ids = np.concatenate([ids, new[:, None]], axis=1)
            step_ids = new[:, None] if use_cache else ids
            if eos_token_id is not None and finished.all():
                break
    return ids
