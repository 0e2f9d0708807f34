"""Pretraining (masked-language modelling) and fine-tuning (sequence classification) loops.

The article's two stages, one loop::

    for epoch:                                  batches shuffled by a generator seeded (seed, epoch)
        for batch:                              MLM: masked afresh (dynamic masking), same seeding
            logits = model.forward(batch)       [B, T, V] or [B, K]
            loss, dlogits = cross_entropy(...)  stop if loss is NaN/inf (name the step, keep the last
            model.zero_grad(); model.backward(dlogits)        good checkpoint, suggest a lower lr)
            clip_grad_norm(‖g‖ ≤ max_grad_norm); AdamW step; lr schedule step (warm-up, linear decay)
        evaluate on validation; metrics.jsonl; checkpoint; early stopping (fine-tuning)

Run folder (``out``)::

    run_config.json       the training settings and the model's BertConfig
    metrics.jsonl         one JSON object a line: {"kind": "train", step, loss, lr, tokens_per_s, ...}
                          every ``log_every`` steps, {"kind": "eval", step, epoch, split, ...} after
                          each epoch
    checkpoint/           the last checkpoint: HF format (config.json, model.safetensors, vocab.txt)
                          + training_state.json (step, epoch, schedule, RNG states, early stopping)
                          + optimizer.safetensors (AdamW's m and v, keyed '<group>.<index>.<name>')
    best/                 fine-tuning: the model with the best validation score (HF format)
    *.png                 plots (see ``tinybert.training.plots``)

Resuming (``resume=True``) reloads ``checkpoint/`` and continues. Every random draw comes from a
generator that is either re-derived from (seed, epoch) — batch order and masks, replayed up to the
saved batch — or saved — the dropout generator ``model.rng`` — so a resumed float64 run reproduces
an uninterrupted one bit for bit. Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and
returns ``{"interrupted": True, ...}``; a second Ctrl-C aborts at once.

A checkpoint is never half-written: it is built in a staging folder and swapped in by renames
(``tinybert.io.files.write_folder_atomic``; a swap cut short by a crash is finished on resume).

A run owns its folder (``tinybert.training.runfolder``): an OS lock keeps a second process out for the whole
run, a new run refuses a folder that holds one (``resume=True`` continues it, ``overwrite=True``
replaces it), and fine-tuning never writes into the folder of the checkpoint it reads.

``resume=True`` continues the run *as it was*: the training settings, the model and data arguments
and a fingerprint of the encoded data are saved with every checkpoint and compared; a difference is
refused, naming each one, except for the settings in ``MAY_CHANGE_ON_RESUME`` (``epochs`` to extend
a run, ``patience``, logging, progress bars, device), which are applied and recorded in
``run_config.json`` under ``"resumes"``. A checkpoint that lacks a piece (optimizer state, RNG
state, vocabulary) is refused rather than silently re-initialised.

A NaN or infinite loss or gradient stops the run before the optimizer step, naming the step and the
layer where the first non-finite value appeared (``models.trace_nonfinite`` re-runs that step with
every layer watched).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tinybert.errors import IncompleteCheckpoint, InvalidType, InvalidValue, MissingFile, ResumeMismatch, TrainingDiverged
from tinybert.io.checkpoint import load_weights, write_checkpoint_files
from tinybert.io.files import restore_previous, write_folder_atomic, write_text_atomic
from tinybert.io.safetensors import read_safetensors, write_safetensors
from tinybert.losses import cross_entropy
from tinybert.training.masking import IGNORE_INDEX, mask_tokens, word_ids_from_tokens
from tinybert.training.metrics import classification_metrics, unigram_baseline
from tinybert.models.nonfinite import nonfinite_parameters, trace_nonfinite
from tinybert.optim import AdamW, bert_param_groups, clip_grad_norm, get_linear_schedule_with_warmup
from tinybert.training.runfolder import check_not_inside, claim_run_folder
from tinybert.text.truncation import count_truncated, warn_truncated
from tinybert.xp import get_array_module, to_numpy

STATE_NAME = "training_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "vocab.txt", STATE_NAME, OPTIMIZER_NAME)
STATE_KEYS = ("step", "epoch", "batch_in_epoch", "epoch_stats", "best", "schedule", "optimizer",
              "model_rng", "dtype", "training_config", "run_arguments", "model_config", "data")

# TrainingConfig fields a resumed run may change (applied, and recorded in run_config.json)
MAY_CHANGE_ON_RESUME = ("epochs", "patience", "log_every", "progress", "device")

# the command-line flag of each setting, for messages
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
         "warmup_ratio": "--warmup-ratio", "max_grad_norm": "--max-grad-norm", "seed": "--seed",
         "max_length": "--max-length", "mlm_probability": "--mlm-probability",
         "whole_word_mask": "--whole-word-mask", "patience": "--patience", "freeze_encoder": "--head-only",
         "vocab_size": "--vocab-size", "num_layers": "--layers", "hidden_size": "--hidden",
         "num_heads": "--heads", "intermediate_size": "--intermediate", "dropout": "--dropout",
         "attention_dropout": "--attention-dropout", "max_position_embeddings": "--max-positions",
         "corpus_size": "--corpus-size", "init_from": "--init-from", "model": "--model",
         "dtype": "--dtype", "model_seed": "--seed", "from_scratch": "from_scratch"}


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
    progress: tqdm bars (None: only when stderr is a terminal).
    device: "cpu" (NumPy) or "cuda" (the model moves to CuPy; attention runs the CUDA kernel).
    """
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    max_length: int | None = 64
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    patience: int | None = None
    freeze_encoder: bool = False
    log_every: int = 10
    progress: bool | None = None
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every"):
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
        if self.device not in ("cpu", "cuda"):
            raise InvalidValue(f"device={self.device!r}: expected 'cpu' or 'cuda'")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def encode_texts(tokenizer, texts, max_length: int, where: str = "texts"):
    """texts: list of N str -> (ids [N, T] int64 right-padded with [PAD], lengths [N]).

    Each row is ``[CLS] tokens [SEP]``, truncated to ``max_length``; how many texts were truncated
    is logged ("3 of 1,200 training texts were longer than 128 tokens ...").
    """
    if len(texts) == 0:
        raise InvalidValue(f"no texts to encode: the {where} are empty")
    if max_length is None:
        raise InvalidValue("max_length=None: pretrain() and finetune() set it to the model's "
                         "max_position_embeddings; a task built directly needs an integer max_length")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length)
    lengths = enc["attention_mask"].sum(axis=1).astype(np.int64)
    warn_truncated(count_truncated(tokenizer, texts, lengths, max_length), len(texts), max_length, where)
    return enc["input_ids"].astype(np.int64), lengths


def fingerprint(*arrays) -> str:
    """A short SHA-256 of arrays' shapes and bytes: the same data encoded the same way gives the same
    string, so a resumed run can tell that it reads what it read before."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _batch_rows(ids, lengths, rows):
    """The rows of a batch, trimmed to their longest: -> input_ids [B, T], attention_mask [B, T]."""
    t = int(lengths[rows].max())
    x = ids[rows, :t]
    mask = (np.arange(t)[None, :] < lengths[rows][:, None]).astype(np.int64)
    return x, mask


class MLMTask:
    """Masked-language modelling data and scoring for ``BertForMaskedLM``.

    train/val texts are encoded once; every batch is masked afresh (``mask_tokens``) from the
    generator it is given. Validation masks come from a fixed generator, so epochs are comparable.
    """
    kind = "mlm"

    def __init__(self, tokenizer, train_texts, val_texts, config: TrainingConfig):
        self.tokenizer, self.config = tokenizer, config
        self.train_ids, self.train_len = encode_texts(tokenizer, train_texts, config.max_length, "training texts")
        self.val_ids, self.val_len = encode_texts(tokenizer, val_texts, config.max_length, "validation texts")
        self.vocab_size = tokenizer.vocab_size
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        vocab = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        self.is_continuation = np.array([t.startswith("##") for t in vocab])
        self.n_train = len(self.train_ids)

    def data_fingerprint(self) -> dict:
        """{"train": ..., "validation": ..., "n_train", "n_validation"}: what this task reads, encoded."""
        return {"train": fingerprint(self.train_ids, self.train_len), "n_train": len(self.train_ids),
                "validation": fingerprint(self.val_ids, self.val_len), "n_validation": len(self.val_ids)}

    def make_batch(self, rows, rng, split="train"):
        ids, lengths = (self.train_ids, self.train_len) if split == "train" else (self.val_ids, self.val_len)
        x, mask = _batch_rows(ids, lengths, rows)
        word_ids = word_ids_from_tokens(x, self.is_continuation) if self.config.whole_word_mask else None
        inputs, labels = mask_tokens(x, rng, self.tokenizer.mask_token_id, self.vocab_size, self.special_ids,
                                     attention_mask=mask, mlm_probability=self.config.mlm_probability,
                                     word_ids=word_ids)
        return {"input_ids": inputs, "attention_mask": mask, "labels": labels}

    def forward_loss(self, model, batch):
        """-> (loss, dlogits, n_correct, n_counted)."""
        logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, dlogits = cross_entropy(logits, batch["labels"])
        sel = batch["labels"] != IGNORE_INDEX
        correct = int((to_numpy(logits)[sel].argmax(axis=-1) == batch["labels"][sel]).sum())
        return loss, dlogits, correct, int(sel.sum())

    def backward(self, model, dlogits):
        model.backward(dlogits)

    def evaluate(self, model, batch_size=64, seed=0) -> dict:
        """Held-out MLM loss, perplexity = exp(loss), masked-token accuracy, and the unigram
        baseline's accuracy and perplexity on the same masked targets."""
        was_training = model.training
        model.eval()
        rng = np.random.default_rng([seed, 987654321])
        total, correct, count = 0.0, 0, 0
        targets = []
        for start in range(0, len(self.val_ids), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self.val_ids)))
            batch = self.make_batch(rows, rng, split="val")
            logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"])
            sel = batch["labels"] != IGNORE_INDEX
            n = int(sel.sum())
            if n == 0:
                continue
            loss, _ = cross_entropy(logits, batch["labels"])
            total += loss * n
            correct += int((to_numpy(logits)[sel].argmax(axis=-1) == batch["labels"][sel]).sum())
            count += n
            targets.append(batch["labels"][sel])
        model.train(was_training)
        if count == 0:
            raise InvalidValue("the validation text gave no masked token to score; give more validation text")
        loss = total / count
        train_tokens = self.train_ids[np.arange(self.train_ids.shape[1])[None, :] < self.train_len[:, None]]
        train_tokens = train_tokens[~np.isin(train_tokens, self.special_ids)]
        base = unigram_baseline(train_tokens, np.concatenate(targets), self.vocab_size)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count,
                "masked_tokens": count, "unigram_accuracy": base["accuracy"],
                "unigram_perplexity": base["perplexity"],
                "unigram_token": self.tokenizer.convert_ids_to_tokens(base["token"])}


class ClassificationTask:
    """Sequence-classification data and scoring for ``BertForSequenceClassification``.

    labels are given as names; ``label_names`` fixes their ids (the config's id2label).
    """
    kind = "classification"

    def __init__(self, tokenizer, train, val, config: TrainingConfig, label_names):
        self.tokenizer, self.config = tokenizer, config
        self.label_names = list(label_names)
        self.label2id = {n: i for i, n in enumerate(self.label_names)}
        self.train_ids, self.train_len = encode_texts(tokenizer, train[0], config.max_length, "training texts")
        self.train_y = self._ids(train[1], "training")
        self.val_ids, self.val_len = encode_texts(tokenizer, val[0], config.max_length, "validation texts")
        self.val_y = self._ids(val[1], "validation")
        self.n_train = len(self.train_ids)

    def data_fingerprint(self) -> dict:
        """{"train": ..., "validation": ..., "n_train", "n_validation"}: texts (encoded) and labels."""
        return {"train": fingerprint(self.train_ids, self.train_len, self.train_y), "n_train": len(self.train_ids),
                "validation": fingerprint(self.val_ids, self.val_len, self.val_y),
                "n_validation": len(self.val_ids)}

    def _ids(self, labels, split):
        unknown = sorted(set(labels) - set(self.label2id))
        if unknown:
            raise InvalidValue(f"the {split} labels {unknown} are not among the model's labels {self.label_names}")
        return np.array([self.label2id[l] for l in labels], dtype=np.int64)

    def make_batch(self, rows, rng=None, split="train"):
        ids, lengths, y = ((self.train_ids, self.train_len, self.train_y) if split == "train"
                           else (self.val_ids, self.val_len, self.val_y))
        x, mask = _batch_rows(ids, lengths, rows)
        return {"input_ids": x, "attention_mask": mask, "labels": y[rows]}

    def forward_loss(self, model, batch):
        logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, dlogits = cross_entropy(logits, batch["labels"])
        correct = int((to_numpy(logits).argmax(axis=-1) == batch["labels"]).sum())
        return loss, dlogits, correct, len(batch["labels"])

    def backward(self, model, dlogits):
        if self.config.freeze_encoder:      # only the head learns: no need to go through the encoder
            model.dropout.backward(model.classifier.backward(dlogits))
        else:
            model.backward(dlogits)

    def evaluate(self, model, batch_size=64, seed=0, ids=None, lengths=None, y=None) -> dict:
        """loss, accuracy, macro precision/recall/F1, per-class lists, confusion matrix."""
        ids = self.val_ids if ids is None else ids
        lengths = self.val_len if lengths is None else lengths
        y = self.val_y if y is None else y
        logits = predict_logits(model, ids, lengths, batch_size)
        loss, _ = cross_entropy(logits, y)
        m = classification_metrics(y, logits.argmax(axis=-1), len(self.label_names))
        m["loss"] = loss
        return m


def predict_logits(model, ids, lengths, batch_size=64) -> np.ndarray:
    """Eval-mode logits for encoded rows: ids [N, T], lengths [N] -> [N, K] (or [N, T, V])."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(ids), batch_size):
        rows = np.arange(start, min(start + batch_size, len(ids)))
        x, mask = _batch_rows(ids, lengths, rows)
        out.append(to_numpy(model.forward(x, attention_mask=mask)))
    model.train(was_training)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------

def _write_json(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def checkpoint_dir(out: str) -> str | None:
    """The run's last checkpoint folder ``out/checkpoint``, or None. (It only ever appears whole, by a
    rename; a swap cut short by a crash is finished first. Whether it holds every piece is
    ``check_checkpoint_files``' business.)"""
    folder = os.path.join(out, "checkpoint")
    restore_previous(folder)
    return folder if os.path.isdir(folder) else None


def check_checkpoint_files(folder: str) -> None:
    """Refuse a training checkpoint that lacks one of ``CHECKPOINT_FILES`` (naming it and why it
    matters): resuming without it would silently restart that piece from scratch."""
    why = {"config.json": "the model's shape", "model.safetensors": "the weights",
           "vocab.txt": "the vocabulary the data were encoded with", STATE_NAME: "the step, schedule and RNG states",
           OPTIMIZER_NAME: "AdamW's moment estimates"}
    for name in CHECKPOINT_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise IncompleteCheckpoint(
                f"cannot resume from {folder}: it lacks {name} ({why[name]}); resuming without it would "
                "not continue the run as it was. Start a new run (another --out, or --overwrite)")


def read_training_state(folder: str) -> dict:
    """``training_state.json`` of a checkpoint, every error naming the file."""
    path = os.path.join(folder, STATE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except json.JSONDecodeError as e:
        raise IncompleteCheckpoint(f"{path} is not valid JSON ({e}): the checkpoint is damaged; start a "
                                   "new run (another --out, or --overwrite)") from None
    except UnicodeDecodeError as e:
        raise IncompleteCheckpoint(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): the "
                                   "checkpoint is damaged") from None
    if not isinstance(state, dict):
        raise IncompleteCheckpoint(f"{path} holds {type(state).__name__}, expected a JSON object")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise IncompleteCheckpoint(f"{path} lacks {missing} (the saved state of the run: step, schedule, "
                                   "optimizer, dropout generator, settings and data): the run cannot continue "
                                   "as it was; was it written by another version, or edited? Start a new run "
                                   "(another --out, or --overwrite)")
    return state


def _describe_changes(saved: dict, now: dict, skip=(), label=lambda k: k) -> list[str]:
    """"name: the run has A, now B" for every key whose value differs (keys in ``skip`` ignored)."""
    out = []
    for k in sorted(set(saved) | set(now)):
        if k in skip:
            continue
        a, b = saved.get(k, "(unset)"), now.get(k, "(unset)")
        if a != b:
            out.append(f"{label(k)}: the run has {a!r}, now {b!r}")
    return out


def _flag(name: str) -> str:
    return f"{name} ({FLAGS[name]})" if name in FLAGS and FLAGS[name] != name else name


def _model_fields(config_dict: dict) -> dict:
    """The BertConfig fields of a config dict (not the keys a checkpoint adds, such as architectures)."""
    from tinybert.config import BertConfig
    keep = set(BertConfig.__dataclass_fields__) - {"extra", "num_labels"}
    return _json_roundtrip({k: v for k, v in config_dict.items() if k in keep})


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj))


def global_grad_norm(params) -> float:
    """‖g‖₂ over every trainable parameter's gradient (float64), NaN/inf when any gradient is."""
    return math.sqrt(sum(float((to_numpy(p.grad).astype(np.float64) ** 2).sum()) for p in params
                         if p.requires_grad))


class Trainer:
    """One training run: ``Trainer(model, task, config, out, tokenizer).train(resume=False)``.

    model: BertForMaskedLM (task MLMTask) or BertForSequenceClassification (ClassificationTask).
    on_step: optional ``callback(trainer, step, loss)`` after each optimizer step (tests use it to
    simulate Ctrl-C with ``trainer.request_stop()``).
    """

    def __init__(self, model, task, config: TrainingConfig, out: str, tokenizer=None, on_step=None,
                 run_arguments: dict | None = None):
        if not isinstance(config, TrainingConfig):
            raise InvalidType(f"config must be a TrainingConfig, got {type(config).__name__}")
        self.model, self.task, self.config, self.out = model, task, config, os.fspath(out)
        self.tokenizer = tokenizer if tokenizer is not None else task.tokenizer
        self.on_step = on_step
        # what the run was asked to build and read (pretrain/finetune arguments), compared on resume
        self.run_arguments = _json_roundtrip(run_arguments or {})
        self.data = task.data_fingerprint()
        self.resume_changes: dict = {}
        if config.freeze_encoder:
            if not hasattr(model, "classifier"):
                raise InvalidValue("freeze_encoder applies to fine-tuning a classifier only")
            model.bert.requires_grad_(False)
        model.to(config.device)            # before the optimizer, whose buffers follow the parameters
        self.optimizer = AdamW(bert_param_groups(model, config.weight_decay), lr=config.lr)
        self.steps_per_epoch = math.ceil(task.n_train / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.schedule = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.epoch_stats = {"loss_sum": 0.0, "correct": 0, "count": 0, "batches": 0}
        self.best = {"score": None, "epoch": None, "bad_epochs": 0}
        self.history: list[dict] = []
        self._stop = False

    # -- Ctrl-C --------------------------------------------------------------------------------
    def request_stop(self):
        """Ask the loop to save and return after the current step (what Ctrl-C does)."""
        self._stop = True

    def _on_sigint(self, signum, frame):
        self._stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C aborts at once
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _log(self, row: dict):
        self.history.append(row)
        with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl. A last line cut short by a crash is dropped (and said so); a
        damaged line elsewhere is an error naming the file and line."""
        path = os.path.join(self.out, "metrics.jsonl")
        if not os.path.isfile(path):
            return []
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
        rows = []
        for i, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines):
                    print(f"{path}: dropping its last line, cut short ({e})")
                    continue
                raise InvalidValue(f"{path}, line {i}: not valid JSON ({e}); fix or remove the line") from None
        return rows

    def _state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_stats": dict(self.epoch_stats), "best": dict(self.best),
                "schedule": self.schedule.state_dict(),
                "optimizer": {"step": self.optimizer.step_count, "lr": [g["lr"] for g in self.optimizer.param_groups]},
                "model_rng": self.model.rng.bit_generator.state,
                "dtype": str(self.model.parameters()[0].data.dtype),
                "training_config": asdict(self.config), "run_arguments": self.run_arguments,
                "model_config": self.model.config.to_dict(), "data": self.data}

    def save_checkpoint(self) -> str:
        """Write ``out/checkpoint/`` (HF folder + optimizer + training state) in one atomic swap
        (``tinybert.io.files.write_folder_atomic``); -> its path."""
        def fill(stage):
            write_checkpoint_files(self.model, stage, self.tokenizer)
            write_safetensors(self.optimizer.state_dict()["buffers"], os.path.join(stage, OPTIMIZER_NAME))
            _write_json(os.path.join(stage, STATE_NAME), self._state())

        return write_folder_atomic(os.path.join(self.out, "checkpoint"), fill)

    def check_resume_matches(self, state: dict, folder: str):
        """Refuse to resume when the settings, the run's arguments, the model's config or the data
        differ from the checkpoint's (naming each difference); keep the allowed changes of
        ``MAY_CHANGE_ON_RESUME`` in ``self.resume_changes`` ({name: [before, now]})."""
        now_cfg = _json_roundtrip(asdict(self.config))
        saved_cfg = state["training_config"]
        diffs = _describe_changes(saved_cfg, now_cfg, skip=MAY_CHANGE_ON_RESUME, label=_flag)
        diffs += _describe_changes(state["run_arguments"], self.run_arguments, label=_flag)
        diffs += _describe_changes(_model_fields(state["model_config"]), _model_fields(self.model.config.to_dict()),
                                   label=lambda k: f"model config {k}")
        for split in ("train", "validation"):
            a, b = state["data"].get(split), self.data[split]
            if a != b:
                n_a, n_b = state["data"].get(f"n_{split}"), self.data[f"n_{split}"]
                diffs.append(f"the {split} data: the run read {n_a} texts (fingerprint {a}), this call gives "
                             f"{n_b} (fingerprint {b}); a changed --train/--val, --corpus-size, vocabulary or "
                             "--max-length changes it")
        if diffs:
            raise ResumeMismatch(f"cannot resume the run in {self.out} as asked; it differs from the "
                                 f"checkpoint {folder} in: " + "; ".join(diffs) + ". Resume with the run's "
                                 "settings, or start a new run (another --out, or --overwrite)")
        self.resume_changes = {k: [saved_cfg.get(k), now_cfg[k]] for k in MAY_CHANGE_ON_RESUME
                               if saved_cfg.get(k) != now_cfg[k]}

    def _check_optimizer_buffers(self, buffers: dict, step: int, folder: str):
        """Every trainable parameter has its moment estimates in optimizer.safetensors (after the
        first step), of its own shape; nothing else is there."""
        expected = {}
        for gi, group in enumerate(self.optimizer.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.requires_grad:
                    expected[f"{gi}.{pi}"] = tuple(p.data.shape)
        seen = set()
        for key, arr in buffers.items():
            owner = key.rsplit(".", 1)[0]
            if owner not in expected or tuple(arr.shape) != expected[owner]:
                raise IncompleteCheckpoint(f"{os.path.join(folder, OPTIMIZER_NAME)} holds {key!r} of shape "
                                           f"{tuple(arr.shape)}, which matches no trainable parameter of this "
                                           "model: was it written by another model or --head-only setting?")
            seen.add(owner)
        if step > 0 and seen != set(expected):
            lost = sorted(set(expected) - seen)
            raise IncompleteCheckpoint(f"{os.path.join(folder, OPTIMIZER_NAME)} lacks the optimizer state of "
                                       f"{len(lost)} parameter(s) ({', '.join(lost[:4])}...); resuming would "
                                       "restart their moment estimates from zero")

    def load_checkpoint(self, folder: str):
        """Restore weights, optimizer, schedule, counters and RNG state from a checkpoint folder.

        Refuses (``IncompleteCheckpoint``) a checkpoint that lacks a file or a piece of state, and
        (``ResumeMismatch``) one whose run differs from this Trainer's settings, arguments or data.
        """
        check_checkpoint_files(folder)
        state = read_training_state(folder)
        dtype = str(self.model.parameters()[0].data.dtype)
        if state["dtype"] != dtype:
            raise ResumeMismatch(f"the checkpoint at {folder} was trained in {state['dtype']} but this model "
                                 f"is {dtype}; resume with the same --dtype")
        self.check_resume_matches(state, folder)
        load_weights(self.model, folder)
        buffers = read_safetensors(os.path.join(folder, OPTIMIZER_NAME))
        self._check_optimizer_buffers(buffers, int(state["optimizer"]["step"]), folder)
        self.optimizer.load_state_dict({"step": state["optimizer"]["step"], "lr": state["optimizer"]["lr"],
                                        "buffers": buffers})
        self.schedule.load_state_dict(state["schedule"])
        self.model.rng.bit_generator.state = state["model_rng"]
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.epoch_stats, self.best = state["epoch_stats"], state["best"]
        # metrics.jsonl: keep what was logged up to the checkpoint, drop rows written after it
        rows = self._read_metrics()
        self.history = [r for r in rows if r.get("step", 0) <= self.step]   # all were logged before the save
        write_text_atomic(os.path.join(self.out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.history))

    def _write_run_config(self, resumed_from: str | None):
        """run_config.json: what this run uses now, and (after a resume with allowed changes) a
        "resumes" list of {"step", "changed": {name: [before, now]}}."""
        path = os.path.join(self.out, "run_config.json")
        resumes = []
        if resumed_from is not None and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    resumes = json.load(f).get("resumes", [])
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise InvalidValue(f"{path} is not a valid run_config.json ({e}); fix it or start a new run") from None
            resumes.append({"step": self.step, "from": resumed_from, "changed": self.resume_changes})
        _write_json(path, {"task": self.task.kind, "training": asdict(self.config),
                           "model": self.model.config.to_dict(), "model_class": type(self.model).__name__,
                           "num_parameters": int(sum(p.data.size for p in self.model.parameters())),
                           "arguments": self.run_arguments, "data": self.data, "resumes": resumes})

    def _diverged(self, what: str, batch_index: int, rerun):
        """Stop the run: ``what`` happened at this step. ``rerun()`` repeats the step's forward (and
        backward) so that ``trace_nonfinite`` can name the layer where the first NaN/inf appeared."""
        where = trace_nonfinite(self.model, rerun)
        bad = nonfinite_parameters(self.model)
        last = checkpoint_dir(self.out)
        located = (f"The first non-finite value appeared in {where}" if where else
                   "Re-running the step gave finite values (it depends on this step's random draws)")
        if bad:
            located += f"; parameters holding NaN/inf: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
        raise TrainingDiverged(
            f"{what} at step {self.step + 1} (epoch {self.epoch + 1}, batch {batch_index + 1}) with learning "
            f"rate {self.schedule.get_last_lr()[0]:.3g}; training stopped before the optimizer step. "
            f"{located}. Try a lower learning rate (e.g. --lr {self.config.lr / 10:g}). "
            + (f"The last good checkpoint is kept at {last}." if last else "No checkpoint had been saved yet."))

    # -- training ------------------------------------------------------------------------------
    def _epoch_batches(self, epoch):
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        order = rng.permutation(self.task.n_train)
        bs = self.config.batch_size
        return [order[i:i + bs] for i in range(0, len(order), bs)], np.random.default_rng([self.config.seed, epoch, 2])

    def train(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Run (or continue) the training. -> {"history", "best", "interrupted", "checkpoint", "step"}.

        The run folder is claimed for the whole run (``runfolder.claim_run_folder``): a folder that
        holds another run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
        """
        with claim_run_folder(self.out, resume=resume, overwrite=overwrite):
            return self._train(resume)

    def _train(self, resume: bool) -> dict:
        from tqdm.auto import tqdm

        resumed_from = None
        if resume:
            folder = checkpoint_dir(self.out)
            if folder is None:
                raise MissingFile(f"nothing to resume: {self.out} holds no checkpoint/")
            self.load_checkpoint(folder)
            resumed_from = folder
            print(f"resuming from {folder} at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch})"
                  + "".join(f"; {_flag(k)} {a} -> {b}" for k, (a, b) in self.resume_changes.items()))
        else:
            write_text_atomic(os.path.join(self.out, "metrics.jsonl"), "")
        self._write_run_config(resumed_from)

        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        self._set_train_mode()
        interrupted = early_stopped = False
        try:
            while self.epoch < self.config.epochs and not early_stopped:
                batches, mask_rng = self._epoch_batches(self.epoch)
                bar = tqdm(total=len(batches), initial=self.batch_in_epoch, leave=False,
                           desc=f"{self.task.kind} epoch {self.epoch + 1}/{self.config.epochs}",
                           disable=None if self.config.progress is None else not self.config.progress)
                t_last, tokens = time.perf_counter(), 0
                for bi, rows in enumerate(batches):
                    batch = self.task.make_batch(rows, mask_rng)     # replayed batches keep the RNG in step
                    if bi < self.batch_in_epoch:
                        continue
                    loss, dlogits, correct, count = self.task.forward_loss(self.model, batch)
                    if not math.isfinite(loss):
                        self._diverged(f"the loss became {loss}", bi,
                                       lambda: self.task.forward_loss(self.model, batch))
                    self.model.zero_grad()
                    self.task.backward(self.model, dlogits)
                    grad_norm = clip_grad_norm(self.model.parameters(), self.config.max_grad_norm) \
                        if self.config.max_grad_norm > 0 else global_grad_norm(self.model.parameters())
                    if not math.isfinite(grad_norm):
                        self._diverged(f"the gradients became non-finite (norm {grad_norm})", bi,
                                       lambda: self._forward_backward(batch))
                    self.optimizer.step()
                    self.schedule.step()
                    self.step += 1
                    self.batch_in_epoch = bi + 1
                    st = self.epoch_stats
                    st["loss_sum"] += loss
                    st["correct"] += correct
                    st["count"] += count
                    st["batches"] += 1
                    tokens += int(batch["attention_mask"].sum())
                    if self.step % self.config.log_every == 0:
                        now = time.perf_counter()
                        tps = tokens / max(now - t_last, 1e-9)
                        t_last, tokens = now, 0
                        self._log({"kind": "train", "step": self.step, "epoch": self.epoch + 1,
                                   "loss": loss, "lr": self.schedule.get_last_lr()[0],
                                   "grad_norm": grad_norm, "tokens_per_s": round(tps, 1)})
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                    bar.update(1)
                    if self.on_step is not None:
                        self.on_step(self, self.step, loss)
                    if self._stop:
                        break
                bar.close()
                if self._stop and self.batch_in_epoch < len(batches):
                    interrupted = True
                    break
                early_stopped = self._end_of_epoch()
                if self._stop:
                    interrupted = True
                    break
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        if interrupted:
            folder = self.save_checkpoint()
            print(f"interrupted at step {self.step}: saved {folder}; continue with --resume")
        return {"history": self.history, "best": self.best, "interrupted": interrupted,
                "early_stopped": early_stopped, "checkpoint": checkpoint_dir(self.out), "step": self.step}

    def _forward_backward(self, batch):
        self.model.zero_grad()
        self.task.backward(self.model, self.task.forward_loss(self.model, batch)[1])

    def _set_train_mode(self):
        self.model.train()
        if self.config.freeze_encoder:      # a frozen encoder is a fixed feature extractor: no dropout
            self.model.bert.eval()

    def _end_of_epoch(self) -> bool:
        """Evaluate, log, checkpoint; -> True when early stopping says stop."""
        st = self.epoch_stats
        metrics = self.task.evaluate(self.model, seed=self.config.seed)
        self._set_train_mode()
        row = {"kind": "eval", "step": self.step, "epoch": self.epoch + 1, "split": "validation",
               "train_loss": st["loss_sum"] / max(st["batches"], 1),
               "train_accuracy": st["correct"] / max(st["count"], 1)}
        row.update({k: v for k, v in metrics.items() if k not in ("precision", "recall", "f1", "support")})
        self._log(row)
        print(self.describe_epoch(row))
        stop = False
        score = metrics["accuracy"] if self.task.kind == "classification" else -metrics["loss"]
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {"score": score, "epoch": self.epoch + 1, "bad_epochs": 0}
            if self.task.kind == "classification":
                self.model.save_pretrained(os.path.join(self.out, "best"), tokenizer=self.tokenizer)
        else:
            self.best["bad_epochs"] += 1
            if self.config.patience is not None and self.best["bad_epochs"] >= self.config.patience:
                print(f"early stopping: no better validation score for {self.config.patience} epoch(s); "
                      f"the best was epoch {self.best['epoch']}")
                stop = True
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_stats = {"loss_sum": 0.0, "correct": 0, "count": 0, "batches": 0}
        self.save_checkpoint()
        return stop

    def describe_epoch(self, row) -> str:
        s = (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
             f"validation loss {row['loss']:.4f} acc {row['accuracy']:.3f}")
        if self.task.kind == "mlm":
            s += f" perplexity {row['perplexity']:.2f} (unigram acc {row['unigram_accuracy']:.3f})"
        else:
            s += f" macro-F1 {row['macro_f1']:.3f}"
        return s


# ------------------------------------------------------------------------------------------------
# the two stages end to end (what the CLI verbs and the demo call)
# ------------------------------------------------------------------------------------------------

def _split_off(texts, fraction, seed):
    """Hold out a seeded random ``fraction`` of texts (at least one): -> (rest, held_out)."""
    if len(texts) < 2:
        raise InvalidValue(f"need at least 2 texts to hold some out for validation, got {len(texts)}")
    order = np.random.default_rng([seed, 3]).permutation(len(texts))
    n_val = max(1, int(round(fraction * len(texts))))
    held = set(order[:n_val].tolist())
    return ([t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held])


def resolve_max_length(config: TrainingConfig, model) -> None:
    """Set ``config.max_length`` to the model's max_position_embeddings when it is None; refuse a
    larger one (it would be cut to fit without a word)."""
    positions = model.config.max_position_embeddings
    if config.max_length is None:
        config.max_length = positions
    elif config.max_length > positions:
        raise InvalidValue(f"max_length={config.max_length} (--max-length) exceeds the model's "
                         f"max_position_embeddings={positions}: expected --max-length {positions} or less")


def pretrain(out, config: TrainingConfig, texts=None, val_texts=None, init_from=None, vocab_size=512,
             num_layers=2, hidden_size=64, num_heads=4, intermediate_size=None, dropout=None,
             attention_dropout=None, max_position_embeddings=64, corpus_size=20000, dtype=np.float32,
             attention_backend="auto", model_seed=0, resume=False, overwrite=False, plots=True) -> dict:
    """Stage 1: masked-language modelling. -> {"metrics", "checkpoint", "plots", "interrupted", ...}.

    texts: training texts (None: the embedded generated corpus of ``corpus_size`` documents, which
        leaves out the classification task's validation and test sentences). val_texts: held-out
        texts (None: 5% of ``texts``, or a separately generated set for the embedded corpus).
    init_from: a checkpoint folder to continue pretraining (its vocab, shape and weights; ``dropout``
        and ``attention_dropout`` override its probabilities when given); otherwise a WordPiece
        vocabulary of up to ``vocab_size`` tokens is trained on ``texts`` and a fresh BertForMaskedLM
        (num_layers, hidden_size, num_heads, intermediate_size (None: 4 x hidden_size), dropout
        (None: 0.1), attention_dropout (None: 0.0), ...) is built.
    resume / overwrite: continue the run in ``out`` / replace it (see ``tinybert.training.runfolder``); the
        run's arguments are compared on resume and a difference is refused.
    """
    from tinybert.io.paths import checkpoint_folder

    out = os.fspath(out)
    if init_from is not None:
        init_from = checkpoint_folder(init_from)
        check_not_inside(init_from, out, "--init-from")
    if init_from is not None:
        arguments = {"init_from": os.path.realpath(init_from), "dropout": dropout,
                     "attention_dropout": attention_dropout}
    else:
        arguments = {"vocab_size": vocab_size, "num_layers": num_layers, "hidden_size": hidden_size,
                     "num_heads": num_heads, "dropout": 0.1 if dropout is None else dropout,
                     "intermediate_size": 4 * hidden_size if intermediate_size is None else intermediate_size,
                     "attention_dropout": 0.0 if attention_dropout is None else attention_dropout,
                     "max_position_embeddings": max_position_embeddings}
    arguments.update(corpus_size=corpus_size if texts is None else None, dtype=np.dtype(dtype).name,
                     model_seed=model_seed)
    with claim_run_folder(out, resume=resume, overwrite=overwrite):
        return _pretrain_in_folder(out, config, texts, val_texts, init_from, arguments, attention_backend,
                                   dtype, resume, plots)


def _pretrain_in_folder(out, config, texts, val_texts, init_from, args, attention_backend, dtype, resume,
                        plots) -> dict:
    """``pretrain`` once the run folder is owned; ``args`` are the resolved model/data arguments."""
    from tinybert.config import BertConfig
    from tinybert.training.corpus import generate_corpus, generate_sentiment_task
    from tinybert.models import BertForMaskedLM
    from tinybert.text.tokenizer import BertTokenizer, write_vocab
    from tinybert.text.wordpiece_trainer import train_wordpiece

    if texts is None:
        corpus_size = args["corpus_size"]
        task = generate_sentiment_task(seed=config.seed)
        held = set(task["validation"][0]) | set(task["test"][0])
        texts = generate_corpus(corpus_size, seed=config.seed, exclude=held)
        if val_texts is None:
            val_texts = generate_corpus(max(200, corpus_size // 20), seed=config.seed + 1, exclude=held)
    elif val_texts is None:
        texts, val_texts = _split_off(list(texts), 0.05, config.seed)
    if not texts:
        raise InvalidValue("the pretraining corpus is empty")
    model_seed = args["model_seed"]
    last = checkpoint_dir(out) if resume else None
    if resume and last is None:
        raise MissingFile(f"nothing to resume: {out} holds no checkpoint/")
    if last is not None:                                  # the run's own model and vocab
        check_checkpoint_files(last)
        tokenizer = BertTokenizer.from_pretrained(last)
        model = BertForMaskedLM.from_pretrained(last, dtype=dtype, seed=model_seed,
                                                attention_backend=attention_backend)
    elif init_from is not None:
        overrides = {k: v for k, v in (("hidden_dropout_prob", args["dropout"]),
                                       ("attention_probs_dropout_prob", args["attention_dropout"])) if v is not None}
        tokenizer = BertTokenizer.from_pretrained(init_from)
        model = BertForMaskedLM.from_pretrained(init_from, dtype=dtype, seed=model_seed,
                                                attention_backend=attention_backend, **overrides)
    else:
        vocab = train_wordpiece(texts, args["vocab_size"])
        write_vocab(vocab, os.path.join(out, "vocab.txt"))
        tokenizer = BertTokenizer(os.path.join(out, "vocab.txt"), model_max_length=args["max_position_embeddings"])
        mconf = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=args["hidden_size"],
                           num_hidden_layers=args["num_layers"], num_attention_heads=args["num_heads"],
                           intermediate_size=args["intermediate_size"], hidden_dropout_prob=args["dropout"],
                           attention_probs_dropout_prob=args["attention_dropout"],
                           max_position_embeddings=args["max_position_embeddings"],
                           pad_token_id=tokenizer.pad_token_id)
        model = BertForMaskedLM(mconf, seed=model_seed, dtype=dtype, attention_backend=attention_backend)
    resolve_max_length(config, model)
    task = MLMTask(tokenizer, texts, val_texts, config)
    trainer = Trainer(model, task, config, out, tokenizer, run_arguments=args)
    result = trainer.train(resume=resume)
    metrics = task.evaluate(model, seed=config.seed)
    result.update(metrics=metrics, model=model, tokenizer=tokenizer, plots=[])
    if plots:
        base = metrics["unigram_perplexity"]
        result["plots"].append(plot_files(trainer.history, out, "mlm", baseline_loss=math.log(base)))
        result["plots"].append(_attention_plot(model, tokenizer, texts[0], os.path.join(out, "attention.png")))
    return result


def _attention_plot(model, tokenizer, text, path):
    from tinybert.training.plots import plot_attention
    return plot_attention(model, tokenizer, text, path)


def plot_files(history, out, kind, baseline_loss=None):
    from tinybert.training.plots import plot_loss_curves
    title = "Pretraining (masked-language model)" if kind == "mlm" else "Fine-tuning (classification)"
    return plot_loss_curves(history, os.path.join(out, "loss.png"), title=title, baseline_loss=baseline_loss)


def _hold_out_validation(train, seed):
    """10% of each label of ``train`` (stratified, at least one each) -> (train, val)."""
    texts, labels = list(train[0]), list(train[1])
    held = set()
    for name in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == name]
        if len(idx) < 2:
            raise InvalidValue(f"label {name!r} has a single training example: cannot hold one out for "
                             "validation; give --val or more examples")
        order = np.random.default_rng([seed, 4]).permutation(len(idx))
        held.update(idx[j] for j in order[:max(1, round(0.1 * len(idx)))])
    val = ([texts[i] for i in sorted(held)], [labels[i] for i in sorted(held)])
    rest = ([t for i, t in enumerate(texts) if i not in held], [l for i, l in enumerate(labels) if i not in held])
    return rest, val


def finetune(out, model_path, config: TrainingConfig, train=None, val=None, test=None, dropout=None,
             dtype=np.float32, attention_backend="auto", model_seed=0, resume=False, overwrite=False,
             from_scratch=False, plots=True, sample_text=None) -> dict:
    """Stage 2: fine-tune ``BertForSequenceClassification`` from the checkpoint ``model_path``.

    train/val/test: (texts, label names) pairs; None for the embedded minimal-pair task (for user data
    a missing ``val`` is 10% of ``train``). The label ids follow ``corpus.check_label_sets``.
    config.freeze_encoder trains the head only. ``dropout`` overrides the checkpoint's dropout
    probability; ``from_scratch`` keeps the checkpoint's vocabulary and shape but not its weights
    (the no-pretraining comparison). The model with the best validation accuracy (``best/``) is
    scored on ``test`` (or on ``val``). -> {"metrics", "label_names", "checkpoint", "best", "plots", ...}

    ``out`` must not hold ``model_path`` (nor lie inside it): the run would overwrite what it reads.
    resume / overwrite: continue the run in ``out`` / replace it (see ``tinybert.training.runfolder``).
    """
    from tinybert.io.paths import checkpoint_folder
    from tinybert.training.corpus import check_label_sets, generate_sentiment_task

    out = os.fspath(out)
    source = checkpoint_folder(model_path)
    check_not_inside(source, out, "--model")
    if train is None:
        task_data = generate_sentiment_task(seed=config.seed)
        train, val = task_data["train"], val or task_data["validation"]
        test = test or task_data["test"]
    check_label_sets(train[1])
    if val is None:
        train, val = _hold_out_validation(train, config.seed)
    names = check_label_sets(train[1], val[1], "validation")
    if test is not None:
        check_label_sets(train[1], test[1], "test")
    arguments = {"model": os.path.realpath(source), "dropout": dropout, "dtype": np.dtype(dtype).name,
                 "model_seed": model_seed, "from_scratch": from_scratch, "labels": names}
    with claim_run_folder(out, resume=resume, overwrite=overwrite):
        return _finetune_in_folder(out, source, config, train, val, test, names, arguments,
                                   attention_backend, dtype, resume, plots, sample_text)


def _finetune_in_folder(out, source, config, train, val, test, names, args, attention_backend, dtype, resume,
                        plots, sample_text) -> dict:
    """``finetune`` once the run folder is owned."""
    from tinybert.config import BertConfig
    from tinybert.training.metrics import MAX_CLASSES_SHOWN
    from tinybert.models import BertForSequenceClassification
    from tinybert.text.tokenizer import BertTokenizer

    last = checkpoint_dir(out) if resume else None
    if resume and last is None:
        raise MissingFile(f"nothing to resume: {out} holds no checkpoint/")
    if last is not None:
        check_checkpoint_files(last)
        source = last
    tokenizer = BertTokenizer.from_pretrained(source)
    overrides = {"id2label": dict(enumerate(names)), "num_labels": len(names)}
    if args["dropout"] is not None:
        overrides.update(hidden_dropout_prob=args["dropout"], classifier_dropout=args["dropout"])
    model_seed = args["model_seed"]
    if args["from_scratch"] and last is None:          # the checkpoint's vocabulary and shape, fresh weights
        d = BertConfig.from_json_file(os.path.join(source, "config.json")).to_dict()
        d.update(overrides)
        model = BertForSequenceClassification(BertConfig.from_dict(d), seed=model_seed, dtype=dtype,
                                              attention_backend=attention_backend)
    else:                                                 # a new classifier (and pooler) is expected here
        model = BertForSequenceClassification.from_pretrained(
            source, dtype=dtype, seed=model_seed, attention_backend=attention_backend,
            ignore_mismatched_sizes=True, log_loading_info=False, **overrides)
    resolve_max_length(config, model)
    task = ClassificationTask(tokenizer, train, val, config, names)
    trainer = Trainer(model, task, config, out, tokenizer, run_arguments=args)
    result = trainer.train(resume=resume)
    best_dir = os.path.join(out, "best")
    best = BertForSequenceClassification.from_pretrained(best_dir, dtype=dtype, attention_backend=attention_backend)
    eval_split = test if test is not None else val
    ids, lengths = encode_texts(tokenizer, eval_split[0], config.max_length, "test texts")
    metrics = task.evaluate(best, ids=ids, lengths=lengths, y=task._ids(eval_split[1], "test"))
    metrics["split"] = "test" if test is not None else "validation"
    _write_json(os.path.join(out, "test_metrics.json"), dict(metrics, label_names=names))
    result.update(metrics=metrics, label_names=names, best=best_dir, model=best, tokenizer=tokenizer, plots=[])
    if plots:
        from tinybert.training.plots import plot_confusion_matrix, plot_train_vs_val
        result["plots"] += [
            plot_files(trainer.history, out, "classification"),
            plot_train_vs_val({"fine-tuning": trainer.history}, os.path.join(out, "train_vs_val.png"))]
        if len(names) <= MAX_CLASSES_SHOWN:
            result["plots"].append(plot_confusion_matrix(
                metrics["confusion_matrix"], names, os.path.join(out, "confusion_matrix.png"),
                title=f"Confusion matrix ({metrics['split']}, accuracy {metrics['accuracy']:.3f})"))
        else:
            print(f"no confusion-matrix plot: {len(names)} classes (more than {MAX_CLASSES_SHOWN}); "
                  f"the commonest confusions are in {os.path.join(out, 'test_metrics.json')}")
        result["plots"].append(_attention_plot(best, tokenizer, sample_text or eval_split[0][0],
                                               os.path.join(out, "attention.png")))
    return result
