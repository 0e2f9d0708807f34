"""The checks at a model's door: its three inputs on the way in, its gradient on the way back.

Bad input gets an error naming the argument, the value and what was expected, never a deep
IndexError or a silently wrong answer: ids inside the vocabulary, [B, T] shapes with B, T >= 1, a
sequence no longer than the position table, masks of 0 and 1 only, and a ``backward`` gradient of
the shape the last ``forward`` returned.
"""
from __future__ import annotations

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import InvalidType, InvalidValue
from tinybert.xp import to_numpy


def _check_ids(name, a, limit, limit_name, xp):
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise InvalidType(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise InvalidValue(f"{name} must have 2 dimensions [batch, seq_len], got shape {tuple(a.shape)} "
                         f"(wrap a single sequence as [ids])")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= limit:
            bad = lo if lo < 0 else hi
            raise InvalidValue(f"{name} contains {bad}, outside [0, {limit_name}={limit})")
    return xp.asarray(a)


def _check_embeds(config: BertConfig, input_ids, inputs_embeds, dtype, xp):
    """inputs_embeds: [B, T, hidden_size] floats, given instead of input_ids (not beside them)."""
    if input_ids is not None:
        raise InvalidValue("input_ids and inputs_embeds were both given: pass one of them (inputs_embeds "
                           "replaces the word-embedding lookup of input_ids)")
    if not hasattr(inputs_embeds, "dtype"):
        inputs_embeds = np.asarray(inputs_embeds)
    if inputs_embeds.dtype.kind != "f":
        raise InvalidType(f"inputs_embeds must be a float array, got dtype {inputs_embeds.dtype}")
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != config.hidden_size:
        raise InvalidValue(f"inputs_embeds has shape {tuple(inputs_embeds.shape)}, expected [batch, seq_len, "
                           f"hidden_size={config.hidden_size}]")
    return xp.asarray(inputs_embeds, dtype=dtype)


def check_inputs(config: BertConfig, input_ids, token_type_ids=None, attention_mask=None, xp=np,
                 inputs_embeds=None, dtype=np.float32):
    """Validate BERT's three inputs and return them as arrays (token types 0 and mask 1 by default).

    input_ids, token_type_ids: [B, T] integers (B, T >= 1); attention_mask: [B, T] of 1 (attend) and
    0 (padding), as bool, int or float — HF's additive form (0 / -10000) is refused, not guessed.
    inputs_embeds: [B, T, hidden_size] floats instead of input_ids (then returned, as ``dtype``, in
    place of the ids). Raises ValueError/TypeError that name the argument, the value and what was
    expected.
    """
    if inputs_embeds is None:
        input_ids = _check_ids("input_ids", input_ids, config.vocab_size, "vocab_size", xp)
        b, t = input_ids.shape
    else:
        input_ids = _check_embeds(config, input_ids, inputs_embeds, dtype, xp)
        b, t, _ = input_ids.shape
    if b == 0 or t == 0:
        raise InvalidValue(f"input_ids has shape {(b, t)}: expected at least one sequence "
                         "of at least one token ([batch >= 1, seq_len >= 1])")
    if t > config.max_position_embeddings:
        raise InvalidValue(f"sequence length {t} exceeds max_position_embeddings="
                         f"{config.max_position_embeddings}; truncate the input")
    if token_type_ids is None:
        token_type_ids = xp.zeros((b, t), dtype=np.int64)
    else:
        token_type_ids = _check_ids("token_type_ids", token_type_ids, config.type_vocab_size,
                                    "type_vocab_size", xp)
        if token_type_ids.shape != (b, t):
            raise InvalidValue(f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected "
                             f"input_ids' shape {(b, t)}")
    keep = _mask_to_keep("attention_mask", attention_mask, (b, t), "input_ids' shape", xp)
    return input_ids, token_type_ids, keep


def _mask_to_keep(name, mask, shape, shape_name, xp):
    """A 0/1 (or bool) mask of ``shape`` -> keep: bool array (True = attend), or None for no mask."""
    if mask is None:
        return None
    m = mask if hasattr(mask, "shape") else np.asarray(mask)
    if tuple(m.shape) != tuple(shape):
        raise InvalidValue(f"{name} has shape {tuple(m.shape)}, expected {shape_name} {tuple(shape)}")
    if m.dtype.kind not in "biuf":
        raise InvalidType(f"{name} must hold 0/1 (or bool), got dtype {m.dtype}")
    m = xp.asarray(m)
    if m.dtype.kind != "b":
        _check_zero_one_mask(m, name)
    return m != 0


def check_encoder_inputs(config: BertConfig, encoder_hidden_states, encoder_attention_mask, batch: int, xp=np):
    """Validate a decoder's cross-attention inputs; -> (memory [B, S, H], memory_keep [B, S] bool or None).

    encoder_hidden_states: [B, S, hidden_size] float, required by a model built with
    ``add_cross_attention`` and refused by one without; encoder_attention_mask: [B, S] of 1/0.
    """
    if not config.add_cross_attention:
        given = [n for n, v in (("encoder_hidden_states", encoder_hidden_states),
                                ("encoder_attention_mask", encoder_attention_mask)) if v is not None]
        if given:
            raise InvalidValue(f"{given[0]} was given, but this model has no cross-attention: build it with "
                               "BertConfig(is_decoder=True, add_cross_attention=True)")
        return None, None
    if encoder_hidden_states is None:
        raise InvalidValue("encoder_hidden_states is required: this decoder has cross-attention "
                           "(add_cross_attention=True); pass the encoder's output [B, S, hidden_size]")
    m = encoder_hidden_states
    if not hasattr(m, "dtype") or m.dtype.kind != "f":
        raise InvalidType(f"encoder_hidden_states must be a float array [B, S, hidden_size], got "
                          f"{type(m).__name__} {getattr(m, 'dtype', '')}")
    if m.ndim != 3 or m.shape[0] != batch or m.shape[1] == 0 or m.shape[2] != config.hidden_size:
        raise InvalidValue(f"encoder_hidden_states has shape {tuple(m.shape)}, expected [{batch}, S >= 1, "
                           f"{config.hidden_size}] (batch of input_ids, the config's hidden_size)")
    keep = _mask_to_keep("encoder_attention_mask", encoder_attention_mask, m.shape[:2],
                         "encoder_hidden_states' [B, S] =", xp)
    return xp.asarray(m), keep


def _check_zero_one_mask(m, name="attention_mask"):
    """attention_mask holds 1 (attend to this token) and 0 (padding), nothing else.

    HF's models turn that mask into an *additive* one internally (0 where kept, a large negative
    number where masked). Passing the additive form here would be read the wrong way round (-10000
    is not 0, so "keep"; 0 is "padding"), hence the error rather than a guess.
    """
    ok = (m == 0) | (m == 1)
    if not bool(ok.all()):
        bad = to_numpy(m[~ok]).ravel()[0].item()
        raise InvalidValue(
            f"{name} must hold 1 (attend) and 0 (padding) only, got {bad!r}. An HF-style "
            "additive mask (0 to keep, -10000 or finfo.min to mask) is the other convention: convert "
            f"it with {name} = (additive_mask == 0)")


def check_gradient_shape(name, grad, expected, model):
    """A backward's upstream gradient must have the shape of the forward's output: a dlogits of
    another shape would be reshaped into misaligned rows, not refused, by the array code below."""
    if expected is None:
        raise RuntimeError(f"{type(model).__name__}.backward() was called before forward(): run "
                           "forward first (it caches what backward needs)")
    shape = getattr(grad, "shape", None)
    if shape is None or tuple(shape) != tuple(expected):
        got = "no array" if shape is None else f"shape {tuple(shape)}"
        raise InvalidValue(f"{type(model).__name__}.backward: {name} has {got}, expected the shape of "
                         f"the last forward's output {tuple(expected)}")
