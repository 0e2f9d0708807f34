"""Training checkpoints: what ``out/checkpoint/`` holds, how it is written, and what resuming checks.

    checkpoint/   an HF folder (config.json, model.safetensors, vocab.txt, tokenizer_config.json)
                  + training_state.json  step, epoch, schedule, RNG states, early stopping, and the
                                         run's settings, arguments, model config and data fingerprint
                  + optimizer.safetensors AdamW's m and v, keyed '<group>.<index>.<name>'

It is written in one atomic swap (``tinybert.io.files.write_folder_atomic``) and its weights are read
back through the same loader as any pretrained checkpoint (``tinybert.io.checkpoint.load_weights``).
Resuming refuses a checkpoint that lacks a piece (``IncompleteCheckpoint``) and a run asked with
other settings, arguments, model or data (``ResumeMismatch``, naming each difference), except for
the settings of ``MAY_CHANGE_ON_RESUME``.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import IncompleteCheckpoint, InvalidValue, MissingFile, ResumeMismatch
from tinybert.io.checkpoint import write_checkpoint_files
from tinybert.io.files import restore_previous, write_folder_atomic, write_text_atomic
from tinybert.io.paths import CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME
from tinybert.io.safetensors import read_header, read_safetensors, write_safetensors
from tinybert.training.config import MAY_CHANGE_ON_RESUME, flag

CHECKPOINT_NAME = "checkpoint"
STATE_NAME = "training_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME, STATE_NAME, OPTIMIZER_NAME)
STATE_KEYS = ("step", "epoch", "batch_in_epoch", "epoch_stats", "best", "schedule", "optimizer",
              "model_rng", "dtype", "training_config", "run_arguments", "model_config", "data")


def nonfinite_entry(obj, where="") -> str | None:
    """The first place (``"metrics.loss"``, ``"lr[0]"``) in a JSON-like ``obj`` holding NaN or ±inf, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where or 'the value'} = {obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = nonfinite_entry(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def write_json(path, obj) -> None:
    """``obj`` as indented, sorted JSON, written atomically; a NaN or inf in it is refused, naming
    where (JSON has no NaN: a bare ``NaN`` would make the file unreadable to JSON readers)."""
    bad = nonfinite_entry(obj)
    if bad:
        raise InvalidValue(f"not writing {path}: {bad} is not a finite number")
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def json_roundtrip(obj):
    """``obj`` as JSON would give it back (tuples become lists ...), so that saved and current values compare."""
    return json.loads(json.dumps(obj))


def save_training_checkpoint(out: str, model, tokenizer, optimizer, state: dict) -> str:
    """Write ``out/checkpoint/`` whole (model, tokenizer, optimizer moments, ``state``); -> its path."""
    def fill(stage):
        write_checkpoint_files(model, stage, tokenizer)
        write_safetensors(optimizer.state_dict()["buffers"], os.path.join(stage, OPTIMIZER_NAME))
        write_json(os.path.join(stage, STATE_NAME), state)

    return write_folder_atomic(os.path.join(out, CHECKPOINT_NAME), fill)


def checkpoint_dir(out: str) -> str | None:
    """The run's last checkpoint folder ``out/checkpoint``, or None. (It only ever appears whole, by a
    rename; a swap cut short by a crash is finished first. Whether it holds every piece is
    ``check_checkpoint_files``' business.)"""
    folder = os.path.join(out, CHECKPOINT_NAME)
    restore_previous(folder)
    return folder if os.path.isdir(folder) else None


def checkpoint_to_resume(out: str) -> str:
    """The checkpoint a resumed run continues from, with every file it needs; MissingFile ("nothing
    to resume") when ``out`` holds none."""
    folder = checkpoint_dir(out)
    if folder is None:
        raise MissingFile(f"nothing to resume: {out} holds no {CHECKPOINT_NAME}/")
    check_checkpoint_files(folder)
    return folder


def check_checkpoint_files(folder: str) -> None:
    """Refuse a training checkpoint that lacks one of ``CHECKPOINT_FILES`` (naming it and why it
    matters): resuming without it would silently restart that piece from scratch."""
    why = {CONFIG_NAME: "the model's shape", WEIGHTS_NAME: "the weights",
           VOCAB_NAME: "the vocabulary the data were encoded with", STATE_NAME: "the step, schedule and RNG states",
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_training_state(state: dict, path: str, steps_per_epoch: int, n_groups: int) -> None:
    """Range-check the counters of a ``training_state.json`` (``path``, for messages) against the run
    that reads it (``steps_per_epoch`` batches an epoch, ``n_groups`` optimizer parameter groups): an
    edited or damaged state (``step: -5``, ``batch_in_epoch: 10**9``) would skip or repeat training
    without a word. IncompleteCheckpoint naming the file, the field, its value and what was expected."""
    def bad(field, expected):
        value = state
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else value
        raise IncompleteCheckpoint(f"{path}: {field}={value!r}, expected {expected}; the checkpoint was edited "
                                   "or damaged: start a new run (another --out, or --overwrite)")

    for field in ("step", "epoch", "batch_in_epoch"):
        if not _is_int(state[field]) or state[field] < 0:
            bad(field, "an integer >= 0")
    if state["batch_in_epoch"] > steps_per_epoch:
        bad("batch_in_epoch", f"at most {steps_per_epoch} (the batches of an epoch of this run)")
    if state["step"] != state["epoch"] * steps_per_epoch + state["batch_in_epoch"]:
        bad("step", f"epoch × {steps_per_epoch} + batch_in_epoch = "
                    f"{state['epoch'] * steps_per_epoch + state['batch_in_epoch']} (epoch={state['epoch']}, "
                    f"batch_in_epoch={state['batch_in_epoch']})")
    saved_epochs = state["training_config"].get("epochs") if isinstance(state["training_config"], dict) else None
    if _is_int(saved_epochs) and state["epoch"] > saved_epochs:
        bad("epoch", f"at most the run's {saved_epochs} epochs")
    stats = state["epoch_stats"]
    if not isinstance(stats, dict):
        bad("epoch_stats", "an object {loss_sum, correct, count, batches}")
    for field in ("correct", "count", "batches"):
        if not _is_int(stats.get(field)) or stats[field] < 0:
            bad(f"epoch_stats.{field}", "an integer >= 0")
    if stats["batches"] != state["batch_in_epoch"]:
        bad("epoch_stats.batches", f"batch_in_epoch={state['batch_in_epoch']} (the batches of this epoch so far)")
    if stats["correct"] > stats["count"]:
        bad("epoch_stats.correct", f"at most epoch_stats.count={stats['count']}")
    if not _is_number(stats.get("loss_sum")) or stats["loss_sum"] < 0:
        bad("epoch_stats.loss_sum", "a finite number >= 0")
    best = state["best"]
    if not isinstance(best, dict):
        bad("best", "an object {score, epoch, bad_epochs}")
    score = best.get("score")           # a list compared entry by entry (accuracy, −loss); a number before
    if score is not None and not (_is_number(score) or (isinstance(score, list) and 1 <= len(score) <= 2
                                                        and all(_is_number(x) for x in score))):
        bad("best.score", "a list of 1 or 2 finite numbers (accuracy, −loss), a finite number, or null")
    if best.get("epoch") is not None and not (_is_int(best["epoch"]) and 1 <= best["epoch"] <= state["epoch"]):
        bad("best.epoch", f"an epoch in [1, {state['epoch']}] or null")
    if (best.get("score") is None) != (best.get("epoch") is None):
        bad("best.epoch", "null exactly when best.score is null")
    if not _is_int(best.get("bad_epochs")) or not 0 <= best["bad_epochs"] <= state["epoch"]:
        bad("best.bad_epochs", f"an integer in [0, {state['epoch']}]")
    optimizer, schedule = state["optimizer"], state["schedule"]
    if not isinstance(optimizer, dict) or optimizer.get("step") != state["step"] or not _is_int(optimizer["step"]):
        bad("optimizer.step", f"step={state['step']} (one optimizer step a batch)")
    for field, lrs in (("optimizer.lr", optimizer.get("lr")),
                       ("schedule.base_lrs", schedule.get("base_lrs") if isinstance(schedule, dict) else None)):
        if not (isinstance(lrs, list) and len(lrs) == n_groups and all(_is_number(x) and x >= 0 for x in lrs)):
            bad(field, f"a list of {n_groups} finite learning rates >= 0")
    if not _is_int(schedule.get("last_step")) or schedule["last_step"] != state["step"]:
        bad("schedule.last_step", f"step={state['step']} (one schedule step a batch)")


# ------------------------------------------------------------------------------------------------
# does the checkpoint hold this run?
# ------------------------------------------------------------------------------------------------

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


def _model_fields(config_dict: dict) -> dict:
    """The BertConfig fields of a config dict (not the keys a checkpoint adds, such as architectures)."""
    keep = set(BertConfig.__dataclass_fields__) - {"extra", "num_labels"}
    return json_roundtrip({k: v for k, v in config_dict.items() if k in keep})


def resume_differences(state: dict, now: dict, out: str, folder: str) -> dict:
    """Compare a checkpoint's ``state`` with the run asked for now (``now``: the same keys
    "dtype", "training_config", "run_arguments", "model_config", "data"); -> the allowed changes
    ``{setting: [before, now]}`` of ``MAY_CHANGE_ON_RESUME``. Any other difference is a
    ResumeMismatch naming each one."""
    if state["dtype"] != now["dtype"]:
        raise ResumeMismatch(f"the checkpoint at {folder} was trained in {state['dtype']} but this model "
                             f"is {now['dtype']}; resume with the same --dtype")
    saved_cfg, now_cfg = state["training_config"], json_roundtrip(now["training_config"])
    diffs = _describe_changes(saved_cfg, now_cfg, skip=MAY_CHANGE_ON_RESUME, label=flag)
    diffs += _describe_changes(state["run_arguments"], now["run_arguments"], label=flag)
    diffs += _describe_changes(_model_fields(state["model_config"]), _model_fields(now["model_config"]),
                               label=lambda k: f"model config {k}")
    for split in ("train", "validation"):
        a, b = state["data"].get(split), now["data"][split]
        if a != b:
            n_a, n_b = state["data"].get(f"n_{split}"), now["data"][f"n_{split}"]
            diffs.append(f"the {split} data: the run read {n_a} texts (fingerprint {a}), this call gives "
                         f"{n_b} (fingerprint {b}); a changed --train/--val, --corpus-size, vocabulary or "
                         "--max-length changes it")
    if diffs:
        raise ResumeMismatch(f"cannot resume the run in {out} as asked; it differs from the "
                             f"checkpoint {folder} in: " + "; ".join(diffs) + ". Resume with the run's "
                             "settings, or start a new run (another --out, or --overwrite)")
    return {k: [saved_cfg.get(k), now_cfg[k]] for k in MAY_CHANGE_ON_RESUME if saved_cfg.get(k) != now_cfg[k]}


def read_optimizer_buffers(folder: str, optimizer, step: int) -> dict:
    """AdamW's moments from ``optimizer.safetensors``, checked (from the header, before the data is
    read) to hold every trainable parameter's (after the first step), each of its own shape, and
    nothing else."""
    file = os.path.join(folder, OPTIMIZER_NAME)
    expected = {f"{gi}.{pi}": tuple(p.data.shape) for gi, group in enumerate(optimizer.param_groups)
                for pi, p in enumerate(group["params"]) if p.requires_grad}
    seen = set()
    for key, info in read_header(file).items():
        owner = key.rsplit(".", 1)[0]
        if owner not in expected or info.shape != expected[owner]:
            raise IncompleteCheckpoint(f"{file} holds {key!r} of shape {info.shape}, which matches no trainable "
                                       "parameter of this model: was it written by another model or --head-only "
                                       "setting?")
        seen.add(owner)
    if step > 0 and seen != set(expected):
        lost = sorted(set(expected) - seen)
        raise IncompleteCheckpoint(f"{file} lacks the optimizer state of {len(lost)} parameter(s) "
                                   f"({', '.join(lost[:4])}...); resuming would restart their moment estimates "
                                   "from zero")
    buffers = read_safetensors(file)
    for key, values in buffers.items():        # a NaN moment would turn the next step's weights NaN
        if not np.isfinite(values).all():
            raise IncompleteCheckpoint(f"{file}: {key!r} holds NaN or infinite values; AdamW's moments must be "
                                       "finite (the checkpoint is damaged): start a new run (another --out, or "
                                       "--overwrite)")
    return buffers


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl. A last line cut short by a crash is dropped (and said so); a
    damaged line elsewhere is an error naming the file and line."""
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
