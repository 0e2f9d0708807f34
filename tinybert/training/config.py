"""The settings of one training run, and the flags that name them in messages.

``TrainingConfig`` is saved with every checkpoint (and in ``run_config.json``); resuming compares it
with the saved one and refuses a difference outside ``MAY_CHANGE_ON_RESUME``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tinybert.config import (MLM_PROBABILITY, SIZE_FIELDS, MemoryLimitExceeded, activation_bytes, check_memory, format_bytes,
                             heaviest_field, memory_limit, parameter_count)
from tinybert.errors import InvalidValue

# TrainingConfig fields a resumed run may change (applied, and recorded in run_config.json)
MAY_CHANGE_ON_RESUME = ("epochs", "patience", "log_every", "progress", "device", "save_steps", "progress_seconds",
                        "grad_accum_steps")

# the command-line flag of each setting, for messages
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
         "warmup_ratio": "--warmup-ratio", "max_grad_norm": "--max-grad-norm", "seed": "--seed",
         "max_length": "--max-length", "mlm_probability": "--mlm-probability",
         "whole_word_mask": "--whole-word-mask", "patience": "--patience", "freeze_encoder": "--head-only",
         "vocab_size": "--vocab-size", "num_layers": "--layers", "hidden_size": "--hidden",
         "num_heads": "--heads", "intermediate_size": "--intermediate", "dropout": "--dropout",
         "attention_dropout": "--attention-dropout", "max_position_embeddings": "--max-positions",
         "corpus_size": "--corpus-size", "init_from": "--init-from", "model": "--model",
         "dtype": "--dtype", "model_seed": "--seed", "from_scratch": "from_scratch",
         "save_steps": "--save-steps", "progress_seconds": "--progress-seconds",
         "grad_accum_steps": "--grad-accum-steps"}

# the flags that set a new model's BertConfig fields (pretrain), for messages
MODEL_FLAGS = {"vocab_size": "--vocab-size", "num_hidden_layers": "--layers", "hidden_size": "--hidden",
               "num_attention_heads": "--heads", "intermediate_size": "--intermediate",
               "max_position_embeddings": "--max-positions"}


@dataclass
class TrainingConfig:
    """The settings of one training run (saved as ``run_config.json``).

    epochs, batch_size: passes over the training data, examples per step.
    lr, weight_decay, warmup_ratio, max_grad_norm: AdamW's base rate and decoupled decay; the share
        of steps spent warming up; the global gradient-norm clip.
    seed: fixes batch order, masks and dropout (the model's own seed fixes its initial weights).
    max_length: truncate sequences to this many tokens ([CLS] and [SEP] included); None: the
        model's max_position_embeddings (``pretrain``/``finetune`` resolve it).
    mlm_probability, whole_word_mask: masking (pretraining only).
    patience: fine-tuning early stopping — stop after this many epochs without a better validation
        score (None: never stop early).
    freeze_encoder: fine-tune the classifier head only (the encoder's weights frozen, run in eval mode).
    log_every: steps between "train" rows of metrics.jsonl.
    progress: tqdm bars (None: only when stderr is a terminal, and one progress line every
        ``progress_seconds`` when it is not; False: neither).
    save_steps: also write the resumable checkpoint every this many optimizer steps (None: at the end
        of each epoch and on Ctrl-C only), so a killed run loses at most save_steps steps.
    progress_seconds: seconds between progress lines when stderr is not a terminal.
    device: "cpu" (NumPy) or "cuda" (the model moves to CuPy; attention runs the CUDA kernel).
    grad_accum_steps: K; each step's batch is run as K micro-batches whose gradients add up to the
        whole batch's (the same model to rounding, in 1/K of the activation memory). Under mpiexec
        each micro-batch is also split over the ranks (``tinybert/training/distributed.py``).
    """
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    max_length: int | None = 64
    mlm_probability: float = MLM_PROBABILITY
    whole_word_mask: bool = False
    patience: int | None = None
    freeze_encoder: bool = False
    log_every: int = 10
    progress: bool | None = None
    device: str = "cpu"
    save_steps: int | None = None
    progress_seconds: float = 30.0
    grad_accum_steps: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every", "grad_accum_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidValue(f"{name}={v!r}: expected a positive integer")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(
                self.max_length, int) or self.max_length < 2):
            raise InvalidValue(f"max_length={self.max_length!r}: expected an integer >= 2 (room for [CLS] "
                             "and [SEP]) or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidValue(f"seed={self.seed!r}: expected an integer >= 0")
        for name in ("lr", "weight_decay", "max_grad_norm"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidValue(f"{name}={v!r}: expected a finite number >= 0")
        if self.lr == 0:
            raise InvalidValue("lr=0: the model would not change; expected a positive learning rate")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidValue(f"warmup_ratio={self.warmup_ratio!r}: expected a number in [0, 1)")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience <= 0):
            raise InvalidValue(f"patience={self.patience!r}: expected a positive integer or None")
        if self.save_steps is not None and (isinstance(self.save_steps, bool) or not isinstance(self.save_steps, int)
                                            or self.save_steps <= 0):
            raise InvalidValue(f"save_steps={self.save_steps!r} (--save-steps): expected a positive integer (optimizer "
                               "steps between checkpoints) or None (checkpoints at the end of each epoch only)")
        if (isinstance(self.progress_seconds, bool) or not isinstance(self.progress_seconds, (int, float))
                or not math.isfinite(self.progress_seconds) or self.progress_seconds <= 0):
            raise InvalidValue(f"progress_seconds={self.progress_seconds!r} (--progress-seconds): expected a "
                               "finite number of seconds > 0")
        if self.grad_accum_steps > self.batch_size:
            raise InvalidValue(f"grad_accum_steps={self.grad_accum_steps} (--grad-accum-steps) exceeds "
                               f"batch_size={self.batch_size}: expected at most one micro-batch per example")
        if self.device not in ("cpu", "cuda"):
            raise InvalidValue(f"device={self.device!r}: expected 'cpu' or 'cuda'")


def max_length_for(model, max_length: int | None = None) -> int:
    """The sequence length to truncate to for ``model``: ``max_length``, or the model's
    max_position_embeddings when it is None; a larger one is refused (it would be cut to fit
    without a word)."""
    positions = model.config.max_position_embeddings
    if max_length is None:
        return positions
    if max_length > positions:
        raise InvalidValue(f"max_length={max_length} (--max-length) exceeds the model's "
                           f"max_position_embeddings={positions}: expected --max-length {positions} or less")
    return max_length


def fit_max_length(config: TrainingConfig, model) -> TrainingConfig:
    """A copy of ``config`` with ``max_length_for(model, config.max_length)`` (the caller's config is
    not changed)."""
    return dataclasses.replace(config, max_length=max_length_for(model, config.max_length))


def flag(name: str) -> str:
    """A setting with its command-line flag, for messages: "lr (--lr)"."""
    return f"{name} ({FLAGS[name]})" if name in FLAGS and FLAGS[name] != name else name


def with_flag(error: MemoryLimitExceeded, model_flags: bool = True) -> MemoryLimitExceeded:
    """``error`` (raised by ``BertConfig`` or ``check_training_memory``) with the command-line flag of
    the size it names put first: "--layers 100000: ..." (``model_flags``: the model's sizes were set
    by pretrain's flags; False for a model read from a checkpoint: "the model's num_hidden_layers=N")."""
    if error.field in MODEL_FLAGS and model_flags:
        prefix = f"{MODEL_FLAGS[error.field]} {error.value}"
    elif error.field in SIZE_FIELDS:
        prefix = f"the model's {error.field}={error.value}"
    elif error.field in FLAGS:
        prefix = f"{FLAGS[error.field]} {error.value}"
    else:
        return error
    return MemoryLimitExceeded(f"{prefix}: {error}", error.field, error.value)


def check_training_memory(model_config, config: TrainingConfig, itemsize: int, n_train: int | None = None) -> None:
    """Refuse a run whose model (its parameters, their gradients and AdamW's two moments) and one
    micro-batch's activations (``batch_size`` rows, at most ``n_train``, over ``grad_accum_steps``, of
    ``max_length`` tokens) would exceed ``memory_limit()``; the message names the flag that weighs most."""
    state = 4 * parameter_count(model_config) * itemsize
    rows = config.batch_size if n_train is None else max(1, min(config.batch_size, n_train))
    rows = -(-rows // config.grad_accum_steps)
    length = config.max_length or model_config.max_position_embeddings
    activations = activation_bytes(model_config, rows, length, itemsize) if n_train is not None else 0
    if state + activations <= memory_limit():
        return
    if activations > state:
        check_memory(state + activations, f"the activations of {rows:,} sequences of {length} tokens a step "
                     f"(--grad-accum-steps {config.grad_accum_steps}, --max-length {length}) and the model's "
                     f"{format_bytes(state)}", "batch_size", config.batch_size)
    name = heaviest_field(model_config)
    check_memory(state + activations, f"training a model of {parameter_count(model_config):,} parameters "
                 f"(weights, gradients and AdamW's two moments, {itemsize * 8}-bit)", name,
                 getattr(model_config, name))
