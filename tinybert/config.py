"""BertConfig: the hyper-parameters of a BERT, with HF transformers' field names and defaults.

The defaults are BERT-base (L=12, H=768, A=12). ``to_dict()`` / ``from_dict()`` round-trip the
``config.json`` of an HF checkpoint; keys we do not use are kept and written back unchanged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from tinybert.errors import InvalidType, InvalidValue, MissingFile
from tinybert.hub import resolve_model_path, where_looked
from tinybert.nn.gelu import activation

MAX_LABELS = 1_000_000      # num_labels builds a table of this many names: a hostile 10¹² would not fit
MEMORY_LIMIT_ENV = "TINYBERT_MEMORY_LIMIT"   # bytes (or "12GB", "500MB") a model or a batch may take
MEMORY_SHARE = 0.8          # the default limit: this share of the machine's physical memory

# the sizes a user or a config.json chooses; the memory estimate names the one that weighs most
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")


class MemoryLimitExceeded(InvalidValue):
    """A size (a config field, a batch, a number of steps) would take more memory than the limit.
    ``field`` names the size that weighs most (a BertConfig field, or the argument), so that the
    command line can name its flag."""

    def __init__(self, message: str, field: str | None = None, value=None):
        super().__init__(message)
        self.field, self.value = field, value


def memory_limit() -> int:
    """The bytes one model, or one batch's activations, may take: $TINYBERT_MEMORY_LIMIT (a number of
    bytes, or with a unit: "12GB", "500MB"), else ``MEMORY_SHARE`` of the physical memory."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
        number = text.upper().rstrip("BKMGT")
        unit = text.upper()[len(number):]
        try:
            value = float(number) * units[unit]
        except (ValueError, KeyError):
            value = float("nan")
        if not (value >= 1):
            raise InvalidValue(f"{MEMORY_LIMIT_ENV}={text!r}: expected a number of bytes >= 1, optionally "
                               "with a unit (KB, MB, GB, TB), e.g. 12GB")
        return int(value)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not on this OS: a limit that still stops 10¹² numbers
        physical = 16 * 10**9
    return int(MEMORY_SHARE * physical)


def format_bytes(n: float) -> str:
    """1.5e9 -> "1.5 GB" (decimal units, as disks and the limit's variable)."""
    if n >= 10**15:                          # (an int of any size: no float overflow)
        return f"10^{len(str(int(n))) - 1} bytes"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def check_memory(nbytes: int, what: str, field: str | None = None, value=None) -> None:
    """Refuse (MemoryLimitExceeded naming ``what``, the bytes and the limit) ``nbytes`` above
    ``memory_limit()``: a clear error before the allocation, not a MemoryError after minutes."""
    limit = memory_limit()
    if nbytes > limit:
        raise MemoryLimitExceeded(
            f"{what} would take about {format_bytes(nbytes)}, more than the limit of {format_bytes(limit)} ("
            + (f"set by ${MEMORY_LIMIT_ENV}" if os.environ.get(MEMORY_LIMIT_ENV, "").strip() else
               f"{int(MEMORY_SHARE * 100)}% of this machine's memory; ${MEMORY_LIMIT_ENV} changes it") + ")",
            field, value)


def parameter_counts(config: "BertConfig") -> dict:
    """The numbers of parameters of each size field's share: {"embeddings": ..., "layers": ...,
    "heads": ...}; their sum is ``parameter_count(config)``."""
    v, h, i = config.vocab_size, config.hidden_size, config.intermediate_size
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    if config.add_cross_attention:
        layer += 4 * (h * h + h) + 2 * h
    return {"embeddings": (v + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h,
            "layers": config.num_hidden_layers * layer,
            "heads": (h * h + h) + max((h * h + h) + 2 * h + v, (h + 1) * _labels(config))}


def _labels(config) -> int:
    """The number of labels, as far as it is known and valid yet (it is checked after the sizes)."""
    if isinstance(config.id2label, dict):
        return len(config.id2label)
    n = config.num_labels
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_LABELS else 2


def parameter_count(config: "BertConfig") -> int:
    """How many parameters the largest model of ``config`` holds: the encoder, a pooler and the larger
    of the MLM head and the classifier (no model of tinybert holds more)."""
    return sum(parameter_counts(config).values())


# BERT-base's sizes: the field furthest above its own is named as the one that weighs most
_BASE_SIZES = {"num_hidden_layers": 12, "hidden_size": 768, "vocab_size": 30522, "max_position_embeddings": 512,
               "intermediate_size": 3072, "num_attention_heads": 12, "type_vocab_size": 2}


def heaviest_field(config: "BertConfig") -> str:
    """The size field furthest above BERT-base's own (for messages: the one to make smaller)."""
    from fractions import Fraction
    return max(_BASE_SIZES, key=lambda k: Fraction(getattr(config, k), _BASE_SIZES[k]))


def check_parameter_memory(config: "BertConfig", itemsize: int = 4) -> None:
    """Refuse a config whose parameters alone (``itemsize`` bytes each: 4 for float32) exceed the
    memory limit, naming the field that weighs most."""
    n = parameter_count(config)
    if n * itemsize > memory_limit():
        field_name = heaviest_field(config)
        sizes = ", ".join(f"{k}={getattr(config, k)}" for k in SIZE_FIELDS)
        check_memory(n * itemsize, f"BertConfig.{field_name}={getattr(config, field_name)} ({sizes}): its "
                     f"{n:,} parameters ({itemsize * 8}-bit)", field_name, getattr(config, field_name))


def activation_bytes(config: "BertConfig", batch_size: int, length: int, itemsize: int = 4) -> int:
    """About how many bytes one forward and backward of ``batch_size`` sequences of ``length`` tokens
    keep alive: per layer the hidden states, the feed-forward activations and the attention scores and
    probabilities that the backward reads, and the vocabulary logits of an LM head."""
    b, t, h, i = batch_size, length, config.hidden_size, config.intermediate_size
    per_layer = b * t * (12 * h + 3 * i) + 3 * b * config.num_attention_heads * t * t
    return itemsize * (config.num_hidden_layers * per_layer + 3 * b * t * (config.vocab_size + h))


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    id2label: dict | None = None
    label2id: dict | None = None
    num_labels: int | None = None
    problem_type: str | None = None
    is_decoder: bool = False                 # causal self-attention (BertLMHeadModel)
    add_cross_attention: bool = False        # a cross-attention sublayer in every layer (a decoder's)
    extra: dict = field(default_factory=dict, repr=False)   # other config.json keys, kept as-is

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidValue(f"BertConfig.{name}={v!r}: expected a positive integer")
        check_parameter_memory(self)          # before any model of this config allocates
        if self.hidden_size % self.num_attention_heads:
            raise InvalidValue(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}: each head gets hidden_size/num_attention_heads dims")
        try:                    # the activation layers know their names: one list, in nn/gelu.py
            activation(self.hidden_act)
        except ValueError as e:
            raise InvalidValue(str(e)) from None
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            v = getattr(self, name)
            if (v is not None or name != "classifier_dropout") and not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise InvalidValue(f"BertConfig.{name}={v!r}: expected a probability in [0, 1)")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise InvalidValue(f"layer_norm_eps={self.layer_norm_eps!r}: expected a positive number")
        if not (isinstance(self.initializer_range, (int, float)) and not isinstance(self.initializer_range, bool)
                and 0 <= self.initializer_range < float("inf")):
            raise InvalidValue(f"initializer_range={self.initializer_range!r}: expected a finite number >= 0")
        if self.pad_token_id is not None and (isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int)):
            raise InvalidValue(f"pad_token_id={self.pad_token_id!r}: expected an integer id or None")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise InvalidValue(f"pad_token_id={self.pad_token_id} is outside [0, vocab_size={self.vocab_size})")
        for name in ("is_decoder", "add_cross_attention"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValue(f"BertConfig.{name}={getattr(self, name)!r}: expected True or False")
        if self.add_cross_attention and not self.is_decoder:
            raise InvalidValue("BertConfig.add_cross_attention=True needs is_decoder=True: cross-attention "
                               "is a decoder's sublayer (as in transformers)")
        # labels, as HF: id2label wins, else num_labels, else 2
        if self.id2label is not None:
            if not isinstance(self.id2label, dict) or not all(str(k).lstrip("-").isdigit() for k in self.id2label):
                raise InvalidValue(f"id2label={self.id2label!r}: expected a mapping of integer ids to label names")
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if self.num_labels is not None and self.num_labels != len(self.id2label):
                raise InvalidValue(f"num_labels={self.num_labels} but id2label has {len(self.id2label)} entries")
        else:
            n = 2 if self.num_labels is None else self.num_labels
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_LABELS:
                raise InvalidValue(f"num_labels={n!r}: expected a positive integer up to {MAX_LABELS:,} (a "
                                   "label table id2label is built for it)")
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.num_labels = len(self.id2label)
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        d = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra", "num_labels"):
                continue
            d[f.name] = getattr(self, f.name)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["model_type"] = "bert"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        if not isinstance(d, dict):
            raise InvalidType(f"config must be a JSON object (dict), got {type(d).__name__}")
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise InvalidValue(f"model_type={model_type!r}: tinybert implements BERT only (model_type 'bert')")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known and k != "model_type"}
        return cls(**kwargs, extra=extra)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "BertConfig":
        """The config of a checkpoint: a folder holding config.json, a config.json file, the packaged
        ``"all-MiniLM-L6-v2"`` or a name in the local Hugging Face cache (tinybert/hub.py), with
        ``overrides`` applied (``num_labels=3``), as transformers' ``BertConfig.from_pretrained``."""
        folder_or_file = resolve_model_path(path)
        file = os.path.join(folder_or_file, "config.json") if os.path.isdir(folder_or_file) else folder_or_file
        if not os.path.isfile(file):
            raise MissingFile(f"no config.json for {os.fspath(path)!r}. Looked in: {where_looked(path)}")
        return cls.from_json_file(file).with_overrides(overrides, file)

    def with_overrides(self, overrides: dict, source: str = "config.json") -> "BertConfig":
        """A copy with the fields in ``overrides`` changed (the keyword arguments of from_pretrained); a
        new ``num_labels`` drops the old label names. A key that is neither a field nor a key of
        ``source`` is an InvalidType naming it."""
        if not overrides:
            return self
        d = self.to_dict()
        known = {f.name for f in fields(self)} - {"extra"}
        unknown = sorted(k for k in overrides if k not in known and k not in d)
        if unknown:
            raise InvalidType(f"from_pretrained got unexpected keyword argument(s) {unknown}: not a "
                              f"BertConfig field nor a key of {source}")
        if "num_labels" in overrides:
            d.pop("id2label", None)
            d.pop("label2id", None)
        d.update(overrides)
        return type(self).from_dict(d)

    @classmethod
    def from_json_file(cls, path) -> "BertConfig":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise MissingFile(f"config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidValue(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)


# ------------------------------------------------------------------------------------------------
# the defaults of a run: one home, read by the command line (values and help text) and the library
# ------------------------------------------------------------------------------------------------

# a new model pretrained by ``training.pretrain`` / ``tinybert pretrain`` (intermediate_size None:
# 4 × hidden_size); the names are pretrain()'s keywords
PRETRAIN_MODEL = {"vocab_size": 512, "num_layers": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": None,
                  "max_position_embeddings": 128, "dropout": 0.1, "attention_dropout": 0.0}
# the training of ``tinybert pretrain`` (TrainingConfig's own defaults serve the library)
PRETRAIN_TRAINING = {"epochs": 2, "batch_size": 64, "lr": 2e-3}
# ``pretrain --corpus`` / ``real_text.pretrain_on_corpus``: sized for 2 CPU cores (People's Daily: 7
# to 12 minutes measured, README); no dropout from the command line: a model this size, trained this
# briefly, underfits, and the held-out documents watch it
CORPUS_PRETRAIN = {"max_documents": {"peoples-daily": 600, "python-docs": 150}, "epochs": 4, "batch_size": 32,
                   "lr": 3e-3, "dropout": 0.0, "vocab_size": 3000, "num_layers": 2, "hidden_size": 128,
                   "num_heads": 4, "max_position_embeddings": 64}
# ``tinybert finetune``
FINETUNE_TRAINING = {"epochs": 4, "batch_size": 32, "lr": 1e-3, "patience": 2}
# the share of tokens masked in masked-language modelling (Devlin et al., 2019)
MLM_PROBABILITY = 0.15
