"""The training loop, one for both stages (pretraining and fine-tuning), generic over its task::

    for epoch:                                  batches shuffled by a generator seeded (seed, epoch)
        for batch:                              MLM: masked afresh (dynamic masking), same seeding
            loss, dlogits = task.forward_loss(model, batch)     stop if loss is NaN/inf (name the
            model.zero_grad(); model.backward(dlogits)          step and the layer, keep the last
            clip_grad_norm(‖g‖ ≤ max_grad_norm)                  good checkpoint, suggest a lower lr)
            AdamW step; lr schedule step (warm-up, linear decay)
        task.evaluate on validation; metrics.jsonl; checkpoint; early stopping (patience)

The loop never looks inside the model: ``model.backward(dlogits)`` is the model's whole gradient path
(a frozen encoder, ``config.freeze_encoder``, is the model's business: ``model.freeze_encoder()``),
and what differs between the tasks is asked of the task (its score, whether it keeps ``best/``).

Run folder (``out``)::

    run_config.json       the training settings and the model's BertConfig
    metrics.jsonl         one JSON object a line: {"kind": "train", step, loss, lr, tokens_per_s, ...}
                          every ``log_every`` steps, {"kind": "eval", step, epoch, split, ...} after
                          each epoch
    checkpoint/           the last checkpoint (``tinybert.training.checkpoints``): after each epoch, on
                          Ctrl-C, and every ``save_steps`` optimizer steps when that is set
    best/                 with a task that keeps it: the model with the best validation score (HF format)
    *.png                 plots (``tinybert.training.plots``, drawn by ``stages``)

Resuming (``resume=True``) reloads ``checkpoint/`` and continues. Every random draw comes from a
generator that is either re-derived from (seed, epoch) — batch order and masks, replayed up to the
saved batch — or saved — the dropout generator ``model.rng`` — so a resumed float64 run reproduces
an uninterrupted one bit for bit. Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and
returns ``{"interrupted": True, ...}``; a second Ctrl-C aborts at once. The run owns its folder for
its whole length (``tinybert.training.runfolder``).

Data parallel (``mpiexec -n N``; ``tinybert.training.distributed``): every rank builds the same
global batch, computes its rows (``_gradients``), and the gradients are summed over the ranks before
the step; rank 0 alone writes the run folder and prints. ``grad_accum_steps`` K splits the batch into
K micro-batches the same way, in time instead of over ranks. Both give one process's model.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict

import numpy as np

from tinybert.errors import IncompleteCheckpoint, InvalidType, InvalidValue, ResumeMismatch, TrainingDiverged
from tinybert.io.checkpoint import load_weights
from tinybert.io.files import write_text_atomic
from tinybert.models.nonfinite import nonfinite_parameters, trace_nonfinite
from tinybert.optim import AdamW, bert_param_groups, clip_grad_norm, get_linear_schedule_with_warmup
from tinybert.training.checkpoints import (STATE_NAME, check_checkpoint_files, check_training_state, checkpoint_dir,
                                           checkpoint_to_resume, json_roundtrip, read_metrics, read_optimizer_buffers, read_training_state,
                                           resume_differences, save_training_checkpoint, write_json)
from tinybert.training import distributed
from tinybert.config import MemoryLimitExceeded
from tinybert.training.config import TrainingConfig, check_training_memory, flag, with_flag
from tinybert.training.progress import ProgressLines
from tinybert.training.masking import IGNORE_INDEX
from tinybert.training.runfolder import claim_run_folder, replace_previous_run
from tinybert.xp import to_numpy


def global_grad_norm(params) -> float:
    """‖g‖₂ over every trainable parameter's gradient (float64), NaN/inf when any gradient is."""
    return math.sqrt(sum(float((to_numpy(p.grad).astype(np.float64) ** 2).sum()) for p in params
                         if p.requires_grad))


class Trainer:
    """One training run: ``Trainer(model, task, config, out, tokenizer).train(resume=False)``.

    model: BertForMaskedLM (task MLMTask) or BertForSequenceClassification (ClassificationTask).
    run_arguments: what the run was asked to build and read (``pretrain``/``finetune`` record their
    arguments), compared on resume. on_step: optional ``callback(trainer, step, loss)`` after each
    optimizer step (tests use it to simulate Ctrl-C with ``trainer.request_stop()``). world: the
    processes of the run (``distributed.world()``, the default: MPI ranks under mpiexec, else one).
    """

    def __init__(self, model, task, config: TrainingConfig, out: str, tokenizer=None, on_step=None,
                 run_arguments: dict | None = None, world=None):
        if not isinstance(config, TrainingConfig):
            raise InvalidType(f"config must be a TrainingConfig, got {type(config).__name__}")
        self.model, self.task, self.config, self.out = model, task, config, os.fspath(out)
        self.tokenizer = tokenizer if tokenizer is not None else task.tokenizer
        self.on_step = on_step
        self.run_arguments = json_roundtrip(run_arguments or {})
        self.data = task.data_fingerprint()
        self.resume_changes: dict = {}
        try:                               # the optimizer's moments and a batch's activations: bounded first
            check_training_memory(model.config, config, np.dtype(model.parameters()[0].data.dtype).itemsize,
                                  task.n_train)
        except MemoryLimitExceeded as e:           # (a new model's sizes were checked with their flags)
            raise with_flag(e, model_flags=False) from None
        if config.freeze_encoder:
            model.freeze_encoder()
        model.to(config.device)            # before the optimizer, whose buffers follow the parameters
        self.world = distributed.world() if world is None else world
        # the shapes first (a Bcast of buffers that differ in size would die in MPI, not refuse)
        self.world.check_same("model (its configuration and parameter shapes)", {
            "config": model.config.to_dict(), "dtype": str(model.dtype),
            "shapes": [[n, list(p.data.shape)] for n, p in model.named_parameters()]})
        self.world.broadcast_parameters(model)     # every rank starts from rank 0's weights ...
        self.world.broadcast_rng(model.rng)        # ... and draws rank 0's dropout seeds
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
        self.progress_lines = ProgressLines(task.name, self.total_steps, config.epochs, config.progress_seconds)
        self._stop_requested = False             # this rank's Ctrl-C, agreed on by all ranks in _gradients

    # -- Ctrl-C --------------------------------------------------------------------------------
    def request_stop(self):
        """Ask the loop to save and return after the current step (what Ctrl-C does); under MPI
        after the next step, when every rank has heard of it."""
        self._stop_requested = True
        if self.world.size == 1:
            self._stop = True

    def _on_sigint(self, signum, frame):
        self.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C aborts at once
        if self.world.is_main:
            print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

    @contextlib.contextmanager
    def _ctrl_c_stops_after_the_step(self):
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        try:
            yield
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    # -- checkpoints ---------------------------------------------------------------------------
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
        """Write ``out/checkpoint/`` (model, optimizer, training state) in one atomic swap (rank 0)."""
        if not self.world.is_main:
            return checkpoint_dir(self.out)
        return save_training_checkpoint(self.out, self.model, self.tokenizer, self.optimizer, self._state())

    def load_checkpoint(self, folder: str):
        """Restore weights, optimizer, schedule, counters and RNG state from a checkpoint folder.

        Refuses (``IncompleteCheckpoint``) a checkpoint that lacks a file or a piece of state, and
        (``ResumeMismatch``) one whose run differs from this Trainer's settings, arguments or data.
        """
        check_checkpoint_files(folder)
        state = read_training_state(folder)
        self.resume_changes = resume_differences(state, self._state(), self.out, folder)
        check_training_state(state, os.path.join(folder, STATE_NAME), self.steps_per_epoch,
                             len(self.optimizer.param_groups))
        if self.config.epochs < state["epoch"]:         # run_config.json would record fewer than were trained
            raise ResumeMismatch(f"epochs={self.config.epochs} (--epochs): the run in {self.out} has already "
                                 f"trained {state['epoch']} epoch(s); expected --epochs {state['epoch']} or more")
        load_weights(self.model, folder)
        buffers = read_optimizer_buffers(folder, self.optimizer, int(state["optimizer"]["step"]))
        self.optimizer.load_state_dict({"step": state["optimizer"]["step"], "lr": state["optimizer"]["lr"],
                                        "buffers": buffers})
        self.schedule.load_state_dict(state["schedule"])
        try:
            self.model.rng.bit_generator.state = state["model_rng"]
        except (ValueError, TypeError, KeyError) as e:
            raise IncompleteCheckpoint(f"{os.path.join(folder, STATE_NAME)}: model_rng is not the state of a "
                                       f"{type(self.model.rng.bit_generator).__name__} generator ({e}); the "
                                       "checkpoint was edited or damaged") from None
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.epoch_stats, self.best = state["epoch_stats"], state["best"]
        # metrics.jsonl: keep what was logged up to the checkpoint, drop rows written after it
        rows = read_metrics(os.path.join(self.out, "metrics.jsonl"))
        self.history = [r for r in rows if r.get("step", 0) <= self.step]   # all were logged before the save
        if self.world.is_main:
            write_text_atomic(os.path.join(self.out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.history))

    # -- bookkeeping ---------------------------------------------------------------------------
    def _log(self, row: dict):
        """Append ``row`` to metrics.jsonl; a NaN or inf in it stops the run, naming the value (JSON
        has no NaN, and a NaN validation score would choose best/ by the accuracy of NaN logits)."""
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            last = checkpoint_dir(self.out)
            raise TrainingDiverged(
                f"the {row.get('split', row.get('kind'))} {', '.join(f'{k} became {row[k]}' for k in bad)} at step "
                f"{self.step} (epoch {row.get('epoch')}): the model computes non-finite values; training "
                f"stopped before logging it or keeping a best model. Try a lower learning rate (e.g. --lr "
                f"{self.config.lr / 10:g}). " + (f"The last good checkpoint is kept at {last}." if last
                                                 else "No checkpoint had been saved yet."))
        self.history.append(row)
        if not self.world.is_main:
            return
        with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")

    def _write_run_config(self, resumed_from: str | None):
        """run_config.json: what this run uses now, and (after a resume with allowed changes) a
        "resumes" list of {"step", "changed": {name: [before, now]}}."""
        if not self.world.is_main:
            return
        path = os.path.join(self.out, "run_config.json")
        resumes = []
        if resumed_from is not None and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    resumes = json.load(f).get("resumes", [])
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise InvalidValue(f"{path} is not a valid run_config.json ({e}); fix it or start a new run") from None
            resumes.append({"step": self.step, "from": resumed_from, "changed": self.resume_changes})
        write_json(path, {"task": self.task.name, "training": asdict(self.config),
                          "model": self.model.config.to_dict(), "model_class": type(self.model).__name__,
                          "num_parameters": self.model.num_parameters(), "world_size": self.world.size,
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
    def train(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Run (or continue) the training. -> {"history", "best", "interrupted", "early_stopped",
        "checkpoint", "step"}.

        The run folder is claimed for the whole run (``runfolder.claim_run_folder``): a folder that
        holds another run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
        """
        claim = claim_run_folder(self.out, resume=resume, overwrite=overwrite) if self.world.is_main \
            else contextlib.nullcontext()              # rank 0 owns the folder; the others only read it
        with self.world.stop_all_on_error(), claim:
            self._start(resume)
            with self._ctrl_c_stops_after_the_step():
                interrupted, early_stopped = self._epochs()
            if interrupted:
                folder = self.save_checkpoint()
                self._print(f"interrupted at step {self.step}: saved {folder}; continue with --resume")
            self.world.barrier()                       # rank 0 has written everything the others may read
        return {"history": self.history, "best": self.best, "interrupted": interrupted,
                "early_stopped": early_stopped, "checkpoint": checkpoint_dir(self.out), "step": self.step}

    def _start(self, resume: bool):
        """A new run (an empty metrics.jsonl) or the state of the last checkpoint; run_config.json."""
        resumed_from = None
        self.world.check_same("configuration and data", {
            "training": asdict(self.config), "arguments": self.run_arguments, "data": self.data,
            "model": self.model.config.to_dict(), "resume": resume})
        if resume:
            resumed_from = checkpoint_to_resume(self.out)
            self.load_checkpoint(resumed_from)
            self._print(f"resuming from {resumed_from} at step {self.step} (epoch {self.epoch + 1}, batch "
                        f"{self.batch_in_epoch})" + "".join(f"; {flag(k)} {a} -> {b}" for k, (a, b) in self.resume_changes.items()))
        elif self.world.is_main:
            replace_previous_run(self.out)         # overwrite: the old run goes only now, all checked
            write_text_atomic(os.path.join(self.out, "metrics.jsonl"), "")
        self._write_run_config(resumed_from)

    def _epochs(self) -> tuple[bool, bool]:
        """The epochs left; -> (interrupted, early_stopped)."""
        self.model.train()
        while self.epoch < self.config.epochs:
            finished = self._epoch()
            if not finished:                       # Ctrl-C in the middle of the epoch
                return True, False
            early_stopped = self._end_of_epoch()
            if self._stop:
                return True, early_stopped
            if early_stopped:
                return False, True
        return False, False

    def _epoch_batches(self, epoch):
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        order = rng.permutation(self.task.n_train)
        bs = self.config.batch_size
        return [order[i:i + bs] for i in range(0, len(order), bs)], np.random.default_rng([self.config.seed, epoch, 2])

    def _epoch(self) -> bool:
        """One pass over the training batches (after a resume, from the saved batch on); -> False
        when Ctrl-C stopped it before its last batch."""
        from tqdm.auto import tqdm

        batches, mask_rng = self._epoch_batches(self.epoch)
        bar = tqdm(total=len(batches), initial=self.batch_in_epoch, leave=False,
                   desc=f"{self.task.name} epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=(None if self.config.progress is None else not self.config.progress)
                   if self.world.is_main else True)
        t_last, tokens = time.perf_counter(), 0
        lines = (self.config.progress is None and not sys.stderr.isatty()   # a log file: lines, not a bar
                 and self.world.is_main)
        for bi, rows in enumerate(batches):
            batch = self.task.make_batch(rows, mask_rng)     # replayed batches keep the RNG in step
            if bi < self.batch_in_epoch:
                continue
            loss, grad_norm = self._step(bi, batch)
            n_tokens = int(batch["attention_mask"].sum())
            tokens += n_tokens
            if self.step % self.config.log_every == 0:
                now = time.perf_counter()
                tps = tokens / max(now - t_last, 1e-9)
                t_last, tokens = now, 0
                self._log({"kind": "train", "step": self.step, "epoch": self.epoch + 1, "loss": loss,
                           "lr": self.schedule.get_last_lr()[0], "grad_norm": grad_norm,
                           "tokens_per_s": round(tps, 1)})
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            if lines:
                self.progress_lines.update(self.step, self.epoch + 1, loss, n_tokens)
            if self.config.save_steps and self.step % self.config.save_steps == 0:
                self.save_checkpoint()                 # a kill from now on loses at most save_steps steps
            if self.on_step is not None:
                self.on_step(self, self.step, loss)
            if self._stop:
                break
        bar.close()
        return not (self._stop and self.batch_in_epoch < len(batches))

    def _step(self, bi: int, batch) -> tuple[float, float]:
        """One optimizer step on ``batch`` (the ``bi``-th of its epoch); -> (loss, gradient norm).
        A non-finite loss or gradient stops the run first (``_diverged``)."""
        loss, correct, count = self._gradients(batch)
        if not math.isfinite(loss):
            self._diverged(f"the loss became {loss}", bi, lambda: self.task.forward_loss(self.model, batch))
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
        return loss, grad_norm

    def _gradients(self, batch) -> tuple[float, int, int]:
        """Forward and backward of this rank's pieces of ``batch`` (its share of each of the
        grad_accum_steps micro-batches), the gradients summed over the ranks: every rank ends with
        p.grad = ∇ of the mean loss over the whole batch. -> (loss, n_correct, n_counted) of the batch.

        A piece's loss is the mean over its n_r counted targets (rows, or masked tokens); its
        gradient is scaled by n_r / n before the backward, so the sum over pieces and ranks is the
        batch mean (``distributed``). Every piece's forward draws the same dropout seeds (the
        generator is rewound to the step's start) at its global rows (``set_batch_offset``), which
        is what one forward of the whole batch draws.
        """
        labels = batch["labels"]
        n_rows, total = len(labels), int((labels != IGNORE_INDEX).sum())
        pieces = distributed.micro_batches(n_rows, self.config.grad_accum_steps, self.world.size, self.world.rank)
        rng, start_state = self.model.rng, self.model.rng.bit_generator.state
        stats = np.zeros(4)                          # Σ loss·n_r, correct, counted, Ctrl-C requests
        self.model.zero_grad()
        for i, (lo, hi) in enumerate(pieces or [(0, 1)]):   # no rows: one forward keeps the generator in step
            if i:
                rng.bit_generator.state = start_state
            distributed.set_batch_offset(self.model, lo)
            piece = {k: v[lo:hi] for k, v in batch.items()}
            loss, dlogits, correct, count = self.task.forward_loss(self.model, piece)
            if not pieces or count == 0:
                continue
            self.model.backward(dlogits if count == total else dlogits * (count / total))
            stats += (loss * count, correct, count, 0)
        distributed.set_batch_offset(self.model, 0)
        stats[3] = self._stop_requested
        self.world.allreduce_sum_(stats)
        self.world.allreduce_gradients(self.model.parameters())
        if stats[3]:
            self._stop = True                        # every rank stops after this same step
        if self.world.size == 1 and len(pieces) == 1:
            return loss, correct, count              # one piece: its own mean, as it was computed
        return (stats[0] / total if total else 0.0), int(stats[1]), int(stats[2])

    def _print(self, text: str):
        if self.world.is_main:
            print(text)

    def _forward_backward(self, batch):
        self.model.zero_grad()
        self.model.backward(self.task.forward_loss(self.model, batch)[1])

    def _end_of_epoch(self) -> bool:
        """Evaluate, log, keep the best model, checkpoint; -> True when early stopping says stop."""
        st = self.epoch_stats
        metrics = self.task.evaluate(self.model, seed=self.config.seed, world=self.world)   # sharded
        row = {"kind": "eval", "step": self.step, "epoch": self.epoch + 1, "split": "validation",
               "train_loss": st["loss_sum"] / max(st["batches"], 1),
               "train_accuracy": st["correct"] / max(st["count"], 1)}
        row.update({k: v for k, v in metrics.items() if k not in ("precision", "recall", "f1", "support")})
        self._log(row)
        self._print(self.describe_epoch(row))
        stop = False
        score = _as_score(self.task.validation_score(metrics))      # a tuple: ties go to the next entry
        if self.best["score"] is None or score > _as_score(self.best["score"]):
            self.best = {"score": list(score), "epoch": self.epoch + 1, "bad_epochs": 0}
            if self.task.keeps_best and self.world.is_main:
                self.model.save_pretrained(os.path.join(self.out, "best"), tokenizer=self.tokenizer)
        else:
            self.best["bad_epochs"] += 1
            if self.config.patience is not None and self.best["bad_epochs"] >= self.config.patience:
                self._print(f"early stopping: no better validation score for {self.config.patience} epoch(s); "
                            f"the best was epoch {self.best['epoch']}")
                stop = True
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_stats = {"loss_sum": 0.0, "correct": 0, "count": 0, "batches": 0}
        self.save_checkpoint()
        return stop

    def describe_epoch(self, row) -> str:
        """The one-line summary of an epoch's "eval" row."""
        return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
                f"validation loss {row['loss']:.4f} acc {row['accuracy']:.3f}" + self.task.describe(row))


def _as_score(value) -> tuple:
    """A validation score as a tuple compared entry by entry (accuracy, then −loss: a tie in accuracy
    goes to the lower loss); a number (a checkpoint from before) is a 1-tuple."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
