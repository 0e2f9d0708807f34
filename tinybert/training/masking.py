"""Masked-language-model inputs: BERT's dynamic 80/10/10 masking.

For each sequence, every *eligible* token (not [CLS]/[SEP]/[PAD]/any special id, not padding) is
chosen independently with probability p = 0.15 (Devlin et al., 2019). Of the chosen tokens

    80% -> [MASK]          10% -> a random non-special token          10% -> left unchanged

and the label of a chosen position is its original id; every other label is ``ignore_index`` (-100),
so the loss counts only the chosen ~15%. The random and unchanged 20% keep the model from learning
that only [MASK] positions matter (at fine-tuning time there is no [MASK]).

"Dynamic": the masks are drawn afresh every time a batch is built (RoBERTa), from a NumPy Generator
the caller owns, so a run is reproducible and resumable from its generator state.

Whole-word masking (``word_ids``): the choice is made per *word* — a word split into WordPiece tokens
("play", "##ing") is chosen or not as a whole — and the 80/10/10 then applies to each of its tokens
(as Google's ``create_pretraining_data.py``). ``word_ids_from_tokens`` computes the word index of
each token from the "##" continuation prefix.

Shapes: input_ids, attention_mask, word_ids: [B, T]; returns inputs [B, T], labels [B, T].
"""
from __future__ import annotations

import numpy as np

from tinybert.errors import InvalidValue

IGNORE_INDEX = -100


def word_ids_from_tokens(input_ids, is_continuation) -> np.ndarray:
    """[B, T] ids -> [B, T] word index per token (0, 1, ... within each row).

    ``is_continuation``: [V] bool, True for ids whose token starts with "##". A continuation token
    gets the word index of the token before it.
    """
    ids = np.asarray(input_ids)
    cont = np.asarray(is_continuation, dtype=bool)[ids]
    starts = ~cont
    return np.cumsum(starts, axis=1) - 1


def mask_tokens(input_ids, rng: np.random.Generator, mask_token_id: int, vocab_size: int,
                special_ids, attention_mask=None, mlm_probability: float = 0.15,
                word_ids=None, ignore_index: int = IGNORE_INDEX):
    """BERT's MLM corruption of a batch.

    Args:
        input_ids: [B, T] int, the clean tokens.
        rng: numpy Generator (its state advances; same state -> same masks).
        mask_token_id: the id of [MASK].
        vocab_size: V; random replacements are drawn uniformly from the ids in [0, V) that are not
            in ``special_ids``.
        special_ids: ids never chosen ([PAD], [UNK], [CLS], [SEP], [MASK]).
        attention_mask: [B, T] 0/1 or None; positions with 0 (padding) are never chosen.
        mlm_probability: p, the chance that an eligible token (or word) is chosen.
        word_ids: [B, T] int or None; when given, whole-word masking (see the module docstring).
    Returns:
        (inputs [B, T] int64, labels [B, T] int64): inputs with the 80/10/10 replacements;
        labels = the original id where chosen, ``ignore_index`` elsewhere.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise InvalidValue(f"input_ids must be a [B, T] integer array, got shape {ids.shape} dtype {ids.dtype}")
    if not 0.0 < mlm_probability < 1.0:
        raise InvalidValue(f"mlm_probability={mlm_probability!r}: expected a probability in (0, 1)")
    special = np.zeros(vocab_size, dtype=bool)
    special[list(special_ids)] = True
    if special.all():
        raise InvalidValue("every id is special: nothing can be masked or drawn as a random token")
    eligible = ~special[ids]
    if attention_mask is not None:
        am = np.asarray(attention_mask)
        if am.shape != ids.shape:
            raise InvalidValue(f"attention_mask has shape {am.shape}, expected {ids.shape}")
        eligible &= am != 0

    if word_ids is None:
        chosen = eligible & (rng.random(ids.shape) < mlm_probability)
    else:
        wid = np.asarray(word_ids)
        if wid.shape != ids.shape:
            raise InvalidValue(f"word_ids has shape {wid.shape}, expected {ids.shape}")
        n_words = int(wid.max()) + 1 if wid.size else 0
        word_chosen = rng.random((ids.shape[0], max(n_words, 1))) < mlm_probability   # [B, W]
        chosen = eligible & np.take_along_axis(word_chosen, np.clip(wid, 0, None), axis=1)

    u = rng.random(ids.shape)                            # one draw decides [MASK] / random / keep
    to_mask = chosen & (u < 0.8)
    to_random = chosen & (u >= 0.8) & (u < 0.9)
    normal_ids = np.flatnonzero(~special)
    random_tokens = normal_ids[rng.integers(len(normal_ids), size=ids.shape)]

    inputs = ids.astype(np.int64, copy=True)
    inputs[to_mask] = mask_token_id
    inputs[to_random] = random_tokens[to_random]
    labels = np.where(chosen, ids, ignore_index).astype(np.int64)
    return inputs, labels


class DynamicMasking:
    """BERT's masking for one tokenizer's vocabulary: ``masking(input_ids, attention_mask, rng)`` ->
    (inputs, labels), drawn afresh at every call (``mask_tokens``), by word when ``whole_word_mask``.

    input_ids, attention_mask: [B, T]; rng: the numpy Generator to draw from.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, whole_word_mask: bool = False):
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = tokenizer.vocab_size
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.mlm_probability = mlm_probability
        self.is_continuation = None
        if whole_word_mask:
            vocab = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
            self.is_continuation = np.array([t.startswith("##") for t in vocab])

    def __call__(self, input_ids, attention_mask, rng: np.random.Generator):
        word_ids = None if self.is_continuation is None else word_ids_from_tokens(input_ids, self.is_continuation)
        return mask_tokens(input_ids, rng, self.mask_token_id, self.vocab_size, self.special_ids,
                           attention_mask=attention_mask, mlm_probability=self.mlm_probability, word_ids=word_ids)
