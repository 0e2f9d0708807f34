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
    *.png                 plots (see ``tinybert.plots``)

Resuming (``resume=True``) reloads ``checkpoint/`` and continues. Every random draw comes from a
generator that is either re-derived from (seed, epoch) — batch order and masks, replayed up to the
saved batch — or saved — the dropout generator ``model.rng`` — so a resumed float64 run reproduces
an uninterrupted one bit for bit. Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and
returns ``{"interrupted": True, ...}``; a second Ctrl-C aborts at once.

A checkpoint is never half-written: it is built in ``checkpoint.tmp/`` and swapped in by renames
(the previous one stays as ``checkpoint.old/`` until the swap is done, and is used if the swap was
cut short).
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

from tinybert.atomic import write_text_atomic
from tinybert.losses import cross_entropy
from tinybert.masking import IGNORE_INDEX, mask_tokens, word_ids_from_tokens
from tinybert.metrics import classification_metrics, unigram_baseline
from tinybert.optim import AdamW, bert_param_groups, clip_grad_norm, get_linear_schedule_with_warmup
from tinybert.xp import get_array_module, to_numpy

STATE_NAME = "training_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message names the step and what to do."""


@dataclass
class TrainingConfig:
    """The settings of one training run (saved as ``run_config.json``).

    epochs, batch_size: passes over the training data, examples per step.
    lr, weight_decay, warmup_ratio, max_grad_norm: AdamW's base rate and decoupled decay; the share
        of steps spent warming up; the global gradient-norm clip.
    seed: fixes batch order, masks and dropout (the model's own seed fixes its initial weights).
    max_length: truncate sequences to this many tokens ([CLS] and [SEP] included).
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
    max_length: int = 64
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    patience: int | None = None
    freeze_encoder: bool = False
    log_every: int = 10
    progress: bool | None = None
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}={v!r}: expected a positive integer")
        for name in ("lr", "weight_decay", "max_grad_norm"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r}: expected a finite number >= 0")
        if self.lr == 0:
            raise ValueError("lr=0: the model would not change; expected a positive learning rate")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio!r}: expected a number in [0, 1)")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience <= 0):
            raise ValueError(f"patience={self.patience!r}: expected a positive integer or None")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: expected 'cpu' or 'cuda'")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def encode_texts(tokenizer, texts, max_length: int):
    """texts: list of N str -> (ids [N, T] int64 right-padded with [PAD], lengths [N]).

    Each row is ``[CLS] tokens [SEP]``, truncated to ``max_length``.
    """
    if len(texts) == 0:
        raise ValueError("no texts to encode: the data set is empty")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length)
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].sum(axis=1).astype(np.int64)


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
        self.train_ids, self.train_len = encode_texts(tokenizer, train_texts, config.max_length)
        self.val_ids, self.val_len = encode_texts(tokenizer, val_texts, config.max_length)
        self.vocab_size = tokenizer.vocab_size
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        vocab = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        self.is_continuation = np.array([t.startswith("##") for t in vocab])
        self.n_train = len(self.train_ids)

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
            raise ValueError("the validation text gave no masked token to score; give more validation text")
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
        self.train_ids, self.train_len = encode_texts(tokenizer, train[0], config.max_length)
        self.train_y = self._ids(train[1], "training")
        self.val_ids, self.val_len = encode_texts(tokenizer, val[0], config.max_length)
        self.val_y = self._ids(val[1], "validation")
        self.n_train = len(self.train_ids)

    def _ids(self, labels, split):
        unknown = sorted(set(labels) - set(self.label2id))
        if unknown:
            raise ValueError(f"the {split} labels {unknown} are not among the model's labels {self.label_names}")
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
    """The run's last complete checkpoint folder (``checkpoint/``, or ``checkpoint.old/`` when a swap
    was cut short), or None."""
    for name in ("checkpoint", "checkpoint.old"):
        folder = os.path.join(out, name)
        if os.path.isfile(os.path.join(folder, STATE_NAME)):
            return folder
    return None


class Trainer:
    """One training run: ``Trainer(model, task, config, out, tokenizer).train(resume=False)``.

    model: BertForMaskedLM (task MLMTask) or BertForSequenceClassification (ClassificationTask).
    on_step: optional ``callback(trainer, step, loss)`` after each optimizer step (tests use it to
    simulate Ctrl-C with ``trainer.request_stop()``).
    """

    def __init__(self, model, task, config: TrainingConfig, out: str, tokenizer=None, on_step=None):
        if not isinstance(config, TrainingConfig):
            raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
        self.model, self.task, self.config, self.out = model, task, config, os.fspath(out)
        self.tokenizer = tokenizer if tokenizer is not None else task.tokenizer
        self.on_step = on_step
        if config.freeze_encoder:
            if not hasattr(model, "classifier"):
                raise ValueError("freeze_encoder applies to fine-tuning a classifier only")
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

    def _state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_stats": dict(self.epoch_stats), "best": dict(self.best),
                "schedule": self.schedule.state_dict(),
                "optimizer": {"step": self.optimizer.step_count, "lr": [g["lr"] for g in self.optimizer.param_groups]},
                "model_rng": self.model.rng.bit_generator.state,
                "dtype": str(self.model.parameters()[0].data.dtype),
                "training_config": asdict(self.config)}

    def save_checkpoint(self) -> str:
        """Write ``out/checkpoint/`` (HF folder + training state), swapping it in by renames."""
        from safetensors.numpy import save_file

        final = os.path.join(self.out, "checkpoint")
        tmp, old = final + ".tmp", final + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, tokenizer=self.tokenizer)
        buffers = self.optimizer.state_dict()["buffers"]
        save_file({k: np.ascontiguousarray(v) for k, v in buffers.items()}, os.path.join(tmp, OPTIMIZER_NAME))
        _write_json(os.path.join(tmp, STATE_NAME), self._state())
        if os.path.isdir(final):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, folder: str):
        """Restore weights, optimizer, schedule, counters and RNG state from a checkpoint folder."""
        from safetensors.numpy import load_file

        from tinybert.checkpoint import hf_name, read_checkpoint_tensors

        with open(os.path.join(folder, STATE_NAME), encoding="utf-8") as f:
            state = json.load(f)
        dtype = str(self.model.parameters()[0].data.dtype)
        if state["dtype"] != dtype:
            raise ValueError(f"the checkpoint at {folder} was trained in {state['dtype']} but this model is "
                             f"{dtype}; resume with the same --dtype")
        tensors = read_checkpoint_tensors(folder)
        for name, p in self.model.named_parameters():
            key = hf_name(name)
            if key not in tensors:
                raise ValueError(f"the checkpoint at {folder} lacks {key!r}: was it written by another model?")
            if tensors[key].shape != p.data.shape:
                raise ValueError(f"the checkpoint at {folder} has {key!r} of shape {tensors[key].shape}, "
                                 f"the model expects {p.data.shape}: resume with the same model settings")
            p.data[...] = get_array_module(p.data).asarray(tensors[key])   # NumPy, or CuPy on a GPU
        buffers = load_file(os.path.join(folder, OPTIMIZER_NAME)) if os.path.isfile(
            os.path.join(folder, OPTIMIZER_NAME)) else {}
        self.optimizer.load_state_dict({"step": state["optimizer"]["step"], "lr": state["optimizer"]["lr"],
                                        "buffers": buffers})
        self.schedule.load_state_dict(state["schedule"])
        self.model.rng.bit_generator.state = state["model_rng"]
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.epoch_stats, self.best = state["epoch_stats"], state["best"]
        # metrics.jsonl: keep what was logged up to the checkpoint, drop rows written after it
        path = os.path.join(self.out, "metrics.jsonl")
        rows = []
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        self.history = [r for r in rows if r["step"] <= self.step]   # all were logged before the save
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)

    # -- training ------------------------------------------------------------------------------
    def _epoch_batches(self, epoch):
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        order = rng.permutation(self.task.n_train)
        bs = self.config.batch_size
        return [order[i:i + bs] for i in range(0, len(order), bs)], np.random.default_rng([self.config.seed, epoch, 2])

    def train(self, resume: bool = False) -> dict:
        """Run (or continue) the training. -> {"history", "best", "interrupted", "checkpoint", "step"}."""
        from tqdm.auto import tqdm

        os.makedirs(self.out, exist_ok=True)
        if resume:
            folder = checkpoint_dir(self.out)
            if folder is None:
                raise FileNotFoundError(f"nothing to resume: {self.out} holds no checkpoint/ with {STATE_NAME}")
            self.load_checkpoint(folder)
            print(f"resuming from {folder} at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch})")
        else:
            open(os.path.join(self.out, "metrics.jsonl"), "w").close()
        _write_json(os.path.join(self.out, "run_config.json"),
                    {"task": self.task.kind, "training": asdict(self.config),
                     "model": self.model.config.to_dict(), "model_class": type(self.model).__name__,
                     "num_parameters": int(sum(p.data.size for p in self.model.parameters()))})

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
                        last = checkpoint_dir(self.out)
                        raise TrainingDiverged(
                            f"the loss became {loss} at step {self.step + 1} (epoch {self.epoch + 1}, batch "
                            f"{bi + 1}) with learning rate {self.schedule.get_last_lr()[0]:.3g}; training "
                            f"stopped. Try a lower learning rate (e.g. --lr {self.config.lr / 10:g}). "
                            + (f"The last good checkpoint is kept at {last}." if last else
                               "No checkpoint had been saved yet."))
                    self.model.zero_grad()
                    self.task.backward(self.model, dlogits)
                    grad_norm = clip_grad_norm(self.model.parameters(), self.config.max_grad_norm) \
                        if self.config.max_grad_norm > 0 else float("nan")
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
        row.update({k: v for k, v in metrics.items() if k not in ("precision", "recall", "f1")})
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
        raise ValueError(f"need at least 2 texts to hold some out for validation, got {len(texts)}")
    order = np.random.default_rng([seed, 3]).permutation(len(texts))
    n_val = max(1, int(round(fraction * len(texts))))
    held = set(order[:n_val].tolist())
    return ([t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held])


def pretrain(out, config: TrainingConfig, texts=None, val_texts=None, init_from=None, vocab_size=512,
             num_layers=2, hidden_size=64, num_heads=4, intermediate_size=None, dropout=0.1,
             attention_dropout=0.0, max_position_embeddings=64, corpus_size=20000, dtype=np.float32,
             attention_backend="auto", model_seed=0, resume=False, plots=True) -> dict:
    """Stage 1: masked-language modelling. -> {"metrics", "checkpoint", "plots", "interrupted", ...}.

    texts: training texts (None: the embedded generated corpus of ``corpus_size`` documents, which
        leaves out the classification task's validation and test sentences). val_texts: held-out
        texts (None: 5% of ``texts``, or a separately generated set for the embedded corpus).
    init_from: a checkpoint folder to continue pretraining (its vocab and weights); otherwise a
        WordPiece vocabulary of up to ``vocab_size`` tokens is trained on ``texts`` and a fresh
        BertForMaskedLM (num_layers, hidden_size, num_heads, ...) is built.
    """
    from tinybert.config import BertConfig
    from tinybert.corpus import generate_corpus, generate_sentiment_task
    from tinybert.models import BertForMaskedLM
    from tinybert.tokenizer import BertTokenizer, write_vocab
    from tinybert.wordpiece_trainer import train_wordpiece

    out = os.fspath(out)
    if texts is None:
        task = generate_sentiment_task(seed=config.seed)
        held = set(task["validation"][0]) | set(task["test"][0])
        texts = generate_corpus(corpus_size, seed=config.seed, exclude=held)
        if val_texts is None:
            val_texts = generate_corpus(max(200, corpus_size // 20), seed=config.seed + 1, exclude=held)
    elif val_texts is None:
        texts, val_texts = _split_off(list(texts), 0.05, config.seed)
    if not texts:
        raise ValueError("the pretraining corpus is empty")
    os.makedirs(out, exist_ok=True)
    last = checkpoint_dir(out) if resume else None
    if resume and last is None:
        raise FileNotFoundError(f"nothing to resume: {out} holds no checkpoint/ with {STATE_NAME}")
    if last is not None:                                  # the run's own model and vocab
        tokenizer = BertTokenizer.from_pretrained(last)
        model = BertForMaskedLM(BertConfig.from_json_file(os.path.join(last, "config.json")), seed=model_seed,
                                dtype=dtype, attention_backend=attention_backend)
    elif init_from is not None:
        tokenizer = BertTokenizer.from_pretrained(init_from)
        model = BertForMaskedLM.from_pretrained(init_from, dtype=dtype, seed=model_seed,
                                                attention_backend=attention_backend)
    else:
        vocab = train_wordpiece(texts, vocab_size)
        write_vocab(vocab, os.path.join(out, "vocab.txt"))
        tokenizer = BertTokenizer(os.path.join(out, "vocab.txt"), model_max_length=max_position_embeddings)
        mconf = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                           num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
                           hidden_dropout_prob=dropout, attention_probs_dropout_prob=attention_dropout,
                           max_position_embeddings=max_position_embeddings,
                           pad_token_id=tokenizer.pad_token_id)
        model = BertForMaskedLM(mconf, seed=model_seed, dtype=dtype, attention_backend=attention_backend)
    if config.max_length > model.config.max_position_embeddings:
        config.max_length = model.config.max_position_embeddings
    task = MLMTask(tokenizer, texts, val_texts, config)
    trainer = Trainer(model, task, config, out, tokenizer)
    result = trainer.train(resume=resume)
    metrics = task.evaluate(model, seed=config.seed)
    result.update(metrics=metrics, model=model, tokenizer=tokenizer, plots=[])
    if plots:
        base = metrics["unigram_perplexity"]
        result["plots"].append(plot_files(trainer.history, out, "mlm", baseline_loss=math.log(base)))
        sample = texts[0] if texts else "the soup was good , not bad ."
        result["plots"].append(_attention_plot(model, tokenizer, sample, os.path.join(out, "attention.png")))
    return result


def _attention_plot(model, tokenizer, text, path):
    from tinybert.plots import plot_attention
    return plot_attention(model, tokenizer, text, path)


def plot_files(history, out, kind, baseline_loss=None):
    from tinybert.plots import plot_loss_curves
    title = "Pretraining (masked-language model)" if kind == "mlm" else "Fine-tuning (classification)"
    return plot_loss_curves(history, os.path.join(out, "loss.png"), title=title, baseline_loss=baseline_loss)


def finetune(out, model_path, config: TrainingConfig, train=None, val=None, test=None, dropout=None,
             dtype=np.float32, attention_backend="auto", model_seed=0, resume=False, from_scratch=False,
             plots=True, sample_text=None) -> dict:
    """Stage 2: fine-tune ``BertForSequenceClassification`` from the checkpoint ``model_path``.

    train/val/test: (texts, label names) pairs; None for the embedded minimal-pair task (for user data
    a missing ``val`` is 10% of ``train``). The label ids follow ``corpus.check_label_sets``.
    config.freeze_encoder trains the head only. ``dropout`` overrides the checkpoint's dropout
    probability; ``from_scratch`` keeps the checkpoint's vocabulary and shape but not its weights
    (the no-pretraining comparison). The model with the best validation accuracy (``best/``) is
    scored on ``test`` (or on ``val``). -> {"metrics", "label_names", "checkpoint", "best", "plots", ...}
    """
    from tinybert.checkpoint import resolve_path
    from tinybert.config import BertConfig
    from tinybert.corpus import check_label_sets, generate_sentiment_task
    from tinybert.models import BertForSequenceClassification
    from tinybert.tokenizer import BertTokenizer

    out = os.fspath(out)
    if train is None:
        task_data = generate_sentiment_task(seed=config.seed)
        train, val = task_data["train"], val or task_data["validation"]
        test = test or task_data["test"]
    check_label_sets(train[1])
    if val is None:                       # hold out 10% of each label (stratified), at least one each
        texts, labels = list(train[0]), list(train[1])
        held = set()
        for name in sorted(set(labels)):
            idx = [i for i, l in enumerate(labels) if l == name]
            if len(idx) < 2:
                raise ValueError(f"label {name!r} has a single training example: cannot hold one out for "
                                 "validation; give --val or more examples")
            order = np.random.default_rng([config.seed, 4]).permutation(len(idx))
            held.update(idx[j] for j in order[:max(1, round(0.1 * len(idx)))])
        val = ([texts[i] for i in sorted(held)], [labels[i] for i in sorted(held)])
        train = ([t for i, t in enumerate(texts) if i not in held], [l for i, l in enumerate(labels) if i not in held])
    names = check_label_sets(train[1], val[1], "validation")
    if test is not None:
        check_label_sets(train[1], test[1], "test")
    os.makedirs(out, exist_ok=True)
    last = checkpoint_dir(out) if resume else None
    if resume and last is None:
        raise FileNotFoundError(f"nothing to resume: {out} holds no checkpoint/ with {STATE_NAME}")
    source = last or resolve_path(model_path)
    tokenizer = BertTokenizer.from_pretrained(source)
    overrides = {"id2label": dict(enumerate(names)), "num_labels": len(names)}
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, classifier_dropout=dropout)
    if last is not None or from_scratch:
        d = BertConfig.from_json_file(os.path.join(source, "config.json")).to_dict()
        d.update(overrides)
        model = BertForSequenceClassification(BertConfig.from_dict(d), seed=model_seed, dtype=dtype,
                                              attention_backend=attention_backend)
    else:
        import logging
        log = logging.getLogger("tinybert")
        level = log.level
        log.setLevel(logging.ERROR)       # "newly initialized classifier" is expected here
        try:
            model = BertForSequenceClassification.from_pretrained(
                source, dtype=dtype, seed=model_seed, attention_backend=attention_backend,
                ignore_mismatched_sizes=True, **overrides)
        finally:
            log.setLevel(level)
    if config.max_length > model.config.max_position_embeddings:
        config.max_length = model.config.max_position_embeddings
    task = ClassificationTask(tokenizer, train, val, config, names)
    trainer = Trainer(model, task, config, out, tokenizer)
    result = trainer.train(resume=resume)
    best_dir = os.path.join(out, "best")
    best = BertForSequenceClassification.from_pretrained(best_dir, dtype=dtype, attention_backend=attention_backend)
    eval_split = test if test is not None else val
    ids, lengths = encode_texts(tokenizer, eval_split[0], config.max_length)
    metrics = task.evaluate(best, ids=ids, lengths=lengths, y=task._ids(eval_split[1], "test"))
    metrics["split"] = "test" if test is not None else "validation"
    _write_json(os.path.join(out, "test_metrics.json"), dict(metrics, label_names=names))
    result.update(metrics=metrics, label_names=names, best=best_dir, model=best, tokenizer=tokenizer, plots=[])
    if plots:
        from tinybert.plots import plot_confusion_matrix, plot_train_vs_val
        result["plots"] += [
            plot_files(trainer.history, out, "classification"),
            plot_train_vs_val({"fine-tuning": trainer.history}, os.path.join(out, "train_vs_val.png")),
            plot_confusion_matrix(metrics["confusion_matrix"], names, os.path.join(out, "confusion_matrix.png"),
                                  title=f"Confusion matrix ({metrics['split']}, accuracy {metrics['accuracy']:.3f})"),
            _attention_plot(best, tokenizer, sample_text or eval_split[0][0], os.path.join(out, "attention.png"))]
    return result
