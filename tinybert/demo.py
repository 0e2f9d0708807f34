"""The main job (``make demo``): pretrain a small BERT on the embedded corpus, fine-tune it on the
minimal-pair sentiment task, and print the numbers beside their baselines.

    1. Pretraining: WordPiece vocab trained on the generated corpus; BertForMaskedLM (L=2, H=64,
       4 heads) trained with dynamic 80/10/10 masking, AdamW, warm-up + linear decay, clipping,
       dropout. Held-out masked-token accuracy vs the unigram baseline (target: ≥ 3×).
    2. Fine-tuning: BertForSequenceClassification from that checkpoint, all weights trained, early
       stopping on validation; held-out test accuracy (target: ≥ 95%), precision, recall, macro F1,
       confusion matrix. The same with the encoder frozen (head only), for comparison.
    3. The bag-of-words logistic regression on the same splits: it cannot tell a sentence from its
       minimal pair, so it stays at 50%.
    (Each fine-tuning run also writes train-vs-validation curves, ``finetune/train_vs_val.png``.)

``quick=True`` runs the same pipeline at toy size in seconds (for the tests); its numbers are not
expected to meet the targets.

The demo owns its folder (``runs/demo``): it holds the lock on it while it runs and replaces a previous
demo run there, saying so. A folder is the demo's when it holds ``demo.json`` (written by the demo
before anything else) beside nothing but its three run folders: a folder of the user's that happens
to hold ``pretrain/`` or ``finetune/`` is refused, so ``--out`` can never wipe files the demo did not
write. Each part is replaced as ``--overwrite`` replaces a run: only once its new run has been
checked, and only the run's own files.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from tinybert.errors import RunFolderError
from tinybert.io.files import write_text_atomic
from tinybert.training import TrainingConfig, finetune, pretrain
from tinybert.training.corpus import LABELS, generate_sentiment_task
from tinybert.training.baselines import BagOfWordsLogisticRegression
from tinybert.training.metrics import accuracy, format_classification_report
from tinybert.training.runfolder import RUN_OUTPUTS, lock_folder, refuse_links, visible_entries

MASKED_ACCURACY_RATIO_TARGET = 3.0
FINETUNE_ACCURACY_TARGET = 0.95
DEMO_PARTS = ("pretrain", "finetune", "finetune_head_only")     # the demo's three runs
DEMO_MARKER = "demo.json"          # written first: what makes a folder the demo's


def check_demo_folder(out: str) -> bool:
    """-> True when ``out`` holds a previous demo run (to be replaced), False when it is new or empty.
    Raises RunFolderError when it holds anything the demo did not write (checked before anything is
    written or deleted)."""
    entries = visible_entries(out)
    refuse_links(out, out, DEMO_PARTS + (DEMO_MARKER,))
    foreign = [e for e in entries if e not in DEMO_PARTS + (DEMO_MARKER,)]
    if foreign:
        raise RunFolderError(f"{out} holds files the demo did not write ({', '.join(foreign[:5])}); the demo "
                             "replaces only its own folder: choose another --out")
    parts = [e for e in entries if e in DEMO_PARTS]
    if parts and DEMO_MARKER not in entries:
        raise RunFolderError(f"{out} holds {', '.join(p + '/' for p in parts)} but no {DEMO_MARKER}, so the demo did "
                             f"not write it (a demo folder starts with {DEMO_MARKER}); the demo replaces only "
                             "its own folder: choose another --out")
    for part in parts:
        inside = os.path.join(out, part)
        if not os.path.isdir(inside):
            raise RunFolderError(f"{inside} is a file, not a run folder the demo wrote: choose another --out")
        refuse_links(inside, inside, RUN_OUTPUTS)
        foreign = [e for e in visible_entries(inside) if e not in RUN_OUTPUTS]
        if foreign:
            raise RunFolderError(f"{inside} holds files the demo did not write ({', '.join(foreign[:5])}); the "
                                 "demo replaces only its own folder: choose another --out")
    return bool(entries)


def main(seed: int = 0, out: str = "runs/demo", quick: bool = False) -> int:
    if os.path.isdir(out):
        check_demo_folder(out)              # refused before anything is made (no lock file left in it)
    with lock_folder(out) as folder:
        previous = check_demo_folder(folder)
        if previous:
            print(f"replacing the previous demo run in {out}")
        write_text_atomic(os.path.join(folder, DEMO_MARKER),
                          json.dumps({"seed": seed, "quick": quick, "parts": list(DEMO_PARTS)}) + "\n")
        return _run(seed, folder, quick)


def _run(seed: int, out: str, quick: bool) -> int:
    t0 = time.time()
    print("tinybert demo: pretraining, then fine-tuning, a BERT in plain NumPy" + (" (quick mode)" if quick else ""))
    n_pairs = (30, 10, 10) if quick else (1500, 200, 250)
    task = generate_sentiment_task(*n_pairs, seed=seed)
    print(f"task: {len(task['train'][0])} train / {len(task['validation'][0])} validation / "
          f"{len(task['test'][0])} test minimal pairs, e.g. {task['train'][0][0]!r} -> {task['train'][1][0]}, "
          f"{task['train'][0][1]!r} -> {task['train'][1][1]}\n")
    pre = _pretraining(seed, out, quick)
    ft = _finetuning(seed, out, quick, task, pre["checkpoint"])
    bow_test = _bag_of_words(seed, task)
    ok = _summary(pre, ft, bow_test, quick)
    print(f"done in {time.time() - t0:.0f} s")
    return 0 if (ok or quick) else 1


def _pretraining(seed: int, out: str, quick: bool) -> dict:
    """1. BertForMaskedLM on the generated corpus; prints its held-out scores beside the unigram's."""
    print("== 1. pretraining (masked-language model) on the generated corpus ==")
    pre_cfg = TrainingConfig(epochs=1 if quick else 2, batch_size=64, lr=2e-3, weight_decay=0.01,
                             warmup_ratio=0.05, max_length=32, seed=seed, log_every=5 if quick else 20)
    pre = pretrain(os.path.join(out, "pretrain"), pre_cfg, corpus_size=600 if quick else 20000,
                   num_layers=2, hidden_size=32 if quick else 64, num_heads=4, dropout=0.1,
                   max_position_embeddings=32, model_seed=seed, overwrite=True)
    m = pre["metrics"]
    print(f"held-out masked-token accuracy {m['accuracy']:.3f} vs unigram baseline {m['unigram_accuracy']:.3f} "
          f"(always {m['unigram_token']!r}); perplexity {m['perplexity']:.2f} vs {m['unigram_perplexity']:.1f}\n")
    return pre


def _finetuning(seed: int, out: str, quick: bool, task: dict, ckpt: str) -> dict:
    """2. The classifier from the pretrained checkpoint, all weights trained; 2b. the head alone."""
    print("== 2. fine-tuning on the minimal pairs (all weights) ==")
    ft_cfg = TrainingConfig(epochs=1 if quick else 4, batch_size=32, lr=1e-3, weight_decay=0.01,
                            warmup_ratio=0.1, max_length=32, seed=seed, patience=2, log_every=5 if quick else 10)
    ft = finetune(os.path.join(out, "finetune"), ckpt, ft_cfg, train=task["train"], val=task["validation"],
                  test=task["test"], model_seed=seed, sample_text="the soup was good , not bad .", overwrite=True)
    print(format_classification_report(ft["metrics"], ft["label_names"]) + "\n")

    print("== 2b. fine-tuning the classifier head only (encoder frozen) ==")
    head_cfg = TrainingConfig(epochs=1 if quick else 3, batch_size=32, lr=3e-3, weight_decay=0.01,
                              max_length=32, seed=seed, freeze_encoder=True, log_every=10)
    head = finetune(os.path.join(out, "finetune_head_only"), ckpt, head_cfg, train=task["train"],
                    val=task["validation"], test=task["test"], model_seed=seed, plots=False, overwrite=True)
    print(f"head-only test accuracy {head['metrics']['accuracy']:.3f}\n")
    return ft


def _bag_of_words(seed: int, task: dict) -> float:
    """3. The bag-of-words logistic regression on the same splits; -> its test accuracy."""
    label_id = {n: i for i, n in enumerate(LABELS)}
    y_train = np.array([label_id[label] for label in task["train"][1]])
    y_test = np.array([label_id[label] for label in task["test"][1]])
    bow = BagOfWordsLogisticRegression(seed=seed).fit(task["train"][0], y_train)
    bow_train, bow_test = accuracy(y_train, bow.predict(task["train"][0])), accuracy(y_test, bow.predict(task["test"][0]))
    print(f"== 3. bag-of-words logistic regression: train accuracy {bow_train:.3f}, test accuracy {bow_test:.3f} ==\n")
    return bow_test


def _summary(pre: dict, ft: dict, bow_test: float, quick: bool) -> bool:
    """The results beside their targets; -> whether the targets are met."""
    m, fm = pre["metrics"], ft["metrics"]
    ratio = m["accuracy"] / max(m["unigram_accuracy"], 1e-12)
    ok = ratio >= MASKED_ACCURACY_RATIO_TARGET and fm["accuracy"] >= FINETUNE_ACCURACY_TARGET
    print("\n== results ==")
    print(f"masked-token accuracy (held out)      {m['accuracy']:.3f}")
    print(f"unigram baseline                      {m['unigram_accuracy']:.3f}   "
          f"ratio {ratio:.1f}x (target >= {MASKED_ACCURACY_RATIO_TARGET:g}x)")
    print(f"fine-tuned accuracy (held-out test)   {fm['accuracy']:.3f}   (target >= {FINETUNE_ACCURACY_TARGET:.2f}; "
          f"macro F1 {fm['macro_f1']:.3f})")
    print(f"bag-of-words logistic regression      {bow_test:.3f}   (cannot separate minimal pairs: ~0.5)")
    print("plots:")
    for p in pre["plots"] + ft["plots"]:
        print(f"  {p}")
    print(f"checkpoints: {pre['checkpoint']} (pretrained), {ft['best']} (fine-tuned)")
    if not quick:
        print(f"targets met: {'yes' if ok else 'NO'}")
    return ok
