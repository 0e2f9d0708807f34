"""transformers' Auto classes: the model class a checkpoint needs, read from its config.json.

    AutoModel.from_pretrained(path)                            BertModel (EncoderDecoderModel for an
                                                               "encoder-decoder" checkpoint)
    AutoModelForMaskedLM.from_pretrained(path)                 BertForMaskedLM
    AutoModelForSequenceClassification.from_pretrained(path)   BertForSequenceClassification
    AutoModelForCausalLM.from_pretrained(path)                 BertLMHeadModel
    AutoTokenizer.from_pretrained(path)                        BertTokenizer

As in transformers, ``model_type`` picks the family (tinybert has one: "bert", plus "encoder-decoder")
and the Auto class picks the head; ``architectures`` (what the checkpoint was saved as) says what the
checkpoint holds: ``io.checkpoint.checkpoint_kind`` reads it, and the CLI uses it to refuse a checkpoint that a verb
cannot use.
"""
from __future__ import annotations

import json
import os

from tinybert.errors import CheckpointError, InvalidValue
from tinybert.io.checkpoint import checkpoint_kind, read_config_json  # noqa: F401 (re-exported)
from tinybert.io.paths import TOKENIZER_CONFIG_NAME, resolve_model_path
from tinybert.models import (BertForMaskedLM, BertForSequenceClassification, BertLMHeadModel, BertModel,
                             EncoderDecoderModel)
from tinybert.text.tokenizer import BertTokenizer

class _Auto:
    """The one method every Auto class has: from_pretrained, picking ``model_class`` for a BERT."""

    model_class = None

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        folder, d = read_config_json(path)
        model_type = d.get("model_type", "bert")
        if model_type == "encoder-decoder" and cls is AutoModel:
            return EncoderDecoderModel.from_pretrained(folder, **kwargs)
        if model_type != "bert":
            raise InvalidValue(f"{folder}: model_type={model_type!r} (architectures {d.get('architectures')}); "
                               f"{cls.__name__} in tinybert loads BERT checkpoints (model_type 'bert')")
        return cls.model_class.from_pretrained(folder, **kwargs)


class AutoModel(_Auto):
    """The bare encoder (BertModel), whatever head the checkpoint also holds."""
    model_class = BertModel


class AutoModelForMaskedLM(_Auto):
    model_class = BertForMaskedLM


class AutoModelForSequenceClassification(_Auto):
    model_class = BertForSequenceClassification


class AutoModelForCausalLM(_Auto):
    model_class = BertLMHeadModel


class AutoTokenizer:
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """BertTokenizer.from_pretrained, after checking that tokenizer_config.json (when there is one)
        names a BERT tokenizer."""
        folder = resolve_model_path(path)
        file = os.path.join(folder, TOKENIZER_CONFIG_NAME)
        if os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as f:
                    name = json.load(f).get("tokenizer_class")
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise CheckpointError(f"cannot read {file}: {e}") from None
            if name not in (None, "BertTokenizer", "BertTokenizerFast"):
                raise InvalidValue(f"{file}: tokenizer_class={name!r}; tinybert has BertTokenizer only")
        return BertTokenizer.from_pretrained(folder, **kwargs)


__all__ = ["AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification", "AutoModelForCausalLM",
           "AutoTokenizer", "checkpoint_kind", "read_config_json"]
