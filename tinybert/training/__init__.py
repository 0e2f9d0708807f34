"""Pretraining and fine-tuning: the loop, its tasks and data, checkpoints, metrics, plots, run folders.

    config.py       TrainingConfig (the settings of a run) and what may change on resume
    data.py         texts encoded once, batches, held-out validation, data fingerprints
    masking.py      BERT's dynamic 80/10/10 masking (whole-word too)
    tasks.py        MLMTask, ClassificationTask; evaluate_masked_lm, evaluate_classifier
    trainer.py      Trainer: the loop (Ctrl-C, NaN stops, logging, early stopping, resume)
    checkpoints.py  out/checkpoint/: writing it whole, reading it back, the resume checks
    stages.py       pretrain() and finetune(), end to end
    corpus.py       the embedded corpus and minimal-pair task; readers of the user's files
    corpora.py      real text on the machine (People's Daily, Python's docs, reviews), split by document
    metrics.py      accuracy, precision/recall/F1
    baselines.py    the unigram and bag-of-words baselines
    plots.py        loss curves, train vs validation, confusion matrix, attention maps
    runfolder.py    one run per folder, one process per run
    distributed.py  data parallelism over MPI: shards, gradient all-reduce, broadcasts, rank checks
"""
from tinybert.errors import IncompleteCheckpoint, ResumeMismatch, TrainingDiverged
from tinybert.training.config import TrainingConfig
from tinybert.training.stages import finetune, pretrain
from tinybert.training.tasks import ClassificationTask, CLMTask, MLMTask
from tinybert.training.trainer import Trainer

__all__ = ["TrainingConfig", "Trainer", "MLMTask", "CLMTask", "ClassificationTask", "pretrain", "finetune",
           "TrainingDiverged", "ResumeMismatch", "IncompleteCheckpoint"]
