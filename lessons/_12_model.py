"""Lesson 12's model: the demo's fine-tuned classifier, or one trained with the demo's recipe.

Shared with the exercise solutions (lessons/solutions/12_explain.py), so that they explain the same
model as the lesson. A model trained here is kept in ``runs/lessons/12_<small|full>_seed<N>_<recipe>/``
(``runs/`` is git-ignored): the lesson trains it once, and its exercises, run afterwards, reuse it
(or train it themselves when the lesson has not run). The folder name carries a hash of the recipe, so
a changed recipe trains a new model.
"""
import hashlib
import os
import shutil
import tempfile

from _stepper import REPO_ROOT

from tinybert.training import TrainingConfig, finetune, pretrain
from tinybert.training.corpus import generate_sentiment_task

DEMO_MODEL = os.path.join(REPO_ROOT, "runs", "demo", "finetune", "best")


def recipe(small: bool, seed: int) -> dict:
    """The demo's recipe (pretraining on the generated corpus, then fine-tuning every weight), smaller
    with ``small``. Progress lines every 8 s when the output is a log (a bar in a terminal)."""
    shared = dict(batch_size=64, max_length=32, seed=seed, progress=None, progress_seconds=8.0, log_every=50)
    return {
        "task": (1000, 100, 50) if small else (1500, 200, 250),
        "pretrain": dict(shared, epochs=1 if small else 2, lr=2e-3, warmup_ratio=0.05),
        "model": dict(corpus_size=12000 if small else 20000, num_layers=2, hidden_size=64, num_heads=4,
                      dropout=0.1, max_position_embeddings=32, model_seed=seed),
        "finetune": dict(shared, epochs=3 if small else 4, batch_size=32, lr=1e-3, warmup_ratio=0.1, patience=2),
    }


def model_folder(small: bool, seed: int) -> str:
    """Where the lesson keeps the model it trained with ``recipe(small, seed)``."""
    key = hashlib.sha1(repr(sorted(recipe(small, seed).items())).encode()).hexdigest()[:8]
    return os.path.join(REPO_ROOT, "runs", "lessons", f"12_{'small' if small else 'full'}_seed{seed}_{key}")


def trained_model(small: bool, seed: int, say=print) -> str:
    """The path of the classifier to explain: the demo's (full settings, after `make demo`), else the one
    trained here with the demo's recipe (trained now if it is not there yet)."""
    if not small and os.path.isdir(DEMO_MODEL):
        say(f"Using the demo's fine-tuned model, {os.path.relpath(DEMO_MODEL, REPO_ROOT)}.")
        return DEMO_MODEL
    folder = model_folder(small, seed)
    best = os.path.join(folder, "finetune", "best")
    if os.path.isdir(best):
        say(f"Using the model trained earlier with the demo's recipe{', smaller' if small else ''}: "
            f"{os.path.relpath(best, REPO_ROOT)} (delete the folder to train it again).")
        return best
    say("Training one with the demo's recipe (pretraining on the generated corpus, then fine-tuning every "
        f"weight on minimal pairs){', smaller' if small else ''}; `make demo` first to explain the demo's own "
        f"model. It is kept in {os.path.relpath(folder, REPO_ROOT)}.")
    r = recipe(small, seed)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix="tmp_12_", dir=os.path.dirname(folder))   # then renamed: no half-written model
    task = generate_sentiment_task(*r["task"], seed=seed)
    pre = pretrain(os.path.join(work, "pretrain"), TrainingConfig(**r["pretrain"]), plots=False, **r["model"])
    finetune(os.path.join(work, "finetune"), pre["checkpoint"], TrainingConfig(**r["finetune"]),
             train=task["train"], val=task["validation"], model_seed=seed, plots=False)
    try:
        os.rename(work, folder)
    except OSError:                                   # another run got there first: use its model
        shutil.rmtree(work, ignore_errors=True)
    return best
