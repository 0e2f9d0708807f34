"""What ``model(...)`` returns: transformers' output objects, with their field names and order.

    out = model(**inputs)                    # a ModelOutput
    out.last_hidden_state                    # by attribute      [B, T, H]
    out["last_hidden_state"]                 # by key
    out[0]                                   # by position: the first field that is not None
    out.to_tuple()                           # the fields that are not None, in order

A ModelOutput is a dict (so ``**out``, ``out.keys()`` and ``"loss" in out`` work) that holds only the
fields that were computed; a field that was not (``loss`` without ``labels=``) reads as None by
attribute and is skipped by position. So ``model(ids)[0]`` is the last hidden state, and
``model(ids, labels=y)[0]`` is the loss, as in transformers.

Arrays are NumPy (or CuPy on a GPU); ``loss`` is a Python float; ``hidden_states`` and
``attentions`` are tuples of arrays, one per layer (hidden_states: the embeddings' output first,
then each layer's: L + 1 arrays [B, T, H]; attentions: L arrays [B, A, T, T]).
"""
from __future__ import annotations

from tinybert.errors import InvalidType, InvalidValue


class ModelOutput(dict):
    """An ordered dict of the computed fields, with attribute access and positional indexing.

    ``fields`` (set by each subclass) is transformers' order of the fields."""

    fields: tuple = ()

    def __init__(self, **values):
        unknown = [name for name in values if name not in self.fields]
        if unknown:
            raise InvalidValue(f"{type(self).__name__} has no field(s) {unknown}; its fields are {self.fields}")
        super().__init__()
        for name in self.fields:
            value = values.get(name)
            object.__setattr__(self, name, value)           # attribute access, None included
            if value is not None:
                dict.__setitem__(self, name, value)         # the dict holds computed fields only

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        raise InvalidType(f"index a {type(self).__name__} with a field name or a position, got {type(key).__name__}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only; build a new one")

    def to_tuple(self) -> tuple:
        """The computed fields in order (None fields skipped): transformers' ``return_dict=False``."""
        return tuple(self.values())

    def __repr__(self):
        parts = ", ".join(f"{k}={_describe(v)}" for k, v in self.items())
        return f"{type(self).__name__}({parts})"


def _describe(value):
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"array{list(shape)}"
    if isinstance(value, tuple):
        return f"tuple of {len(value)}"
    return repr(value)


class BaseModelOutputWithPooling(ModelOutput):
    """BertModel: last_hidden_state [B, T, H], pooler_output [B, H] (None without a pooler)."""
    fields = ("last_hidden_state", "pooler_output", "hidden_states", "past_key_values", "attentions")


class MaskedLMOutput(ModelOutput):
    """BertForMaskedLM: loss (with labels), logits [B, T, V]."""
    fields = ("loss", "logits", "hidden_states", "attentions")


class SequenceClassifierOutput(ModelOutput):
    """BertForSequenceClassification: loss (with labels), logits [B, num_labels]."""
    fields = ("loss", "logits", "hidden_states", "attentions")


class CausalLMOutput(ModelOutput):
    """BertLMHeadModel: loss (with labels: next-token), logits [B, T, V], past_key_values (a KVCache)."""
    fields = ("loss", "logits", "past_key_values", "hidden_states", "attentions")
