"""The article's two stages end to end: what the ``pretrain`` / ``finetune`` verbs and the demo call.

    pretrain(out, config, ...)               a WordPiece vocabulary and a fresh BertForMaskedLM (or a
                                             checkpoint to continue) -> masked-language modelling
    finetune(out, model_path, config, ...)   BertForSequenceClassification from a checkpoint -> the
                                             labelled task; the best validation model is scored on test

Each records what it was asked to build and read (compared when the run is resumed), owns its run
folder for the whole run (``runfolder.claim_run_folder``), builds its model — from the run's own
checkpoint when resuming, so nothing is initialised only to be overwritten — trains it with the
``Trainer``, scores it and draws the plots. Neither changes the caller's ``config``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile

import numpy as np

from tinybert.config import PRETRAIN_MODEL, BertConfig, MemoryLimitExceeded, check_memory
from tinybert.errors import InvalidValue
from tinybert.io.checkpoint import read_config
from tinybert.io.paths import VOCAB_NAME, checkpoint_folder
from tinybert.models import BertForMaskedLM, BertForSequenceClassification, BertLMHeadModel
from tinybert.text.coverage import warn_poor_coverage
from tinybert.text.tokenizer import BertTokenizer, write_vocab
from tinybert.text.wordpiece_trainer import train_wordpiece
from tinybert.training import distributed
from tinybert.training.checkpoints import checkpoint_to_resume, write_json
from tinybert.training.config import TrainingConfig, check_training_memory, fit_max_length, flag, with_flag
from tinybert.training.corpus import check_label_sets, generate_corpus, generate_sentiment_task
from tinybert.training.data import encode_texts, hold_out_validation, split_off
from tinybert.training.metrics import MAX_CLASSES_SHOWN
from tinybert.training.plots import plot_attention, plot_confusion_matrix, plot_loss_curves, plot_train_vs_val
from tinybert.training.runfolder import check_not_inside, claim_run_folder, replace_previous_run
from tinybert.training.tasks import ClassificationTask, CLMTask, MLMTask, evaluate_classifier, label_ids
from tinybert.training.trainer import Trainer

logger = logging.getLogger("tinybert")


# ------------------------------------------------------------------------------------------------
# stage 1: pretraining
# ------------------------------------------------------------------------------------------------

def pretrain(out, config: TrainingConfig, texts=None, val_texts=None, init_from=None,
             vocab_size=PRETRAIN_MODEL["vocab_size"], num_layers=PRETRAIN_MODEL["num_layers"],
             hidden_size=PRETRAIN_MODEL["hidden_size"], num_heads=PRETRAIN_MODEL["num_heads"],
             intermediate_size=None, dropout=None, attention_dropout=None,
             max_position_embeddings=PRETRAIN_MODEL["max_position_embeddings"], corpus_size=20000,
             dtype=np.float32, attention_backend="auto", model_seed=0, resume=False, overwrite=False, plots=True,
             objective="mlm") -> dict:
    """Stage 1: masked-language modelling (``objective="clm"``: causal LM, a BertLMHeadModel trained
    to predict each next token). -> {"metrics", "checkpoint", "plots", "interrupted", ...}.

    texts: training texts (None: the embedded generated corpus of ``corpus_size`` documents, which
        leaves out the classification task's validation and test sentences). val_texts: held-out
        texts (None: 5% of ``texts``, or a separately generated set for the embedded corpus).
    init_from: a checkpoint folder to continue pretraining (its vocab, shape and weights; ``dropout``
        and ``attention_dropout`` override its probabilities when given); otherwise a WordPiece
        vocabulary of up to ``vocab_size`` tokens is trained on ``texts`` and a fresh BertForMaskedLM
        (num_layers, hidden_size, num_heads, intermediate_size (None: 4 x hidden_size), dropout,
        attention_dropout (None: their ``tinybert.config.PRETRAIN_MODEL`` defaults), ...) is built.
    resume / overwrite: continue the run in ``out`` / replace it (see ``tinybert.training.runfolder``);
        the run's arguments are compared on resume and a difference is refused.
    """
    # long because: one stage end to end: arguments, checks before any write, the run, its plots
    out = os.fspath(out)
    if init_from is not None:
        init_from = checkpoint_folder(init_from)
        check_not_inside(init_from, out, "--init-from")
        arguments = {"init_from": os.path.realpath(init_from), "dropout": dropout,
                     "attention_dropout": attention_dropout}
    else:
        arguments = {"vocab_size": vocab_size, "num_layers": num_layers, "hidden_size": hidden_size,
                     "num_heads": num_heads, "dropout": PRETRAIN_MODEL["dropout"] if dropout is None else dropout,
                     "intermediate_size": 4 * hidden_size if intermediate_size is None else intermediate_size,
                     "attention_dropout": (PRETRAIN_MODEL["attention_dropout"] if attention_dropout is None
                                           else attention_dropout),
                     "max_position_embeddings": max_position_embeddings}
    if objective not in ("mlm", "clm"):
        raise InvalidValue(f"objective={objective!r}: expected 'mlm' (masked LM) or 'clm' (causal LM)")
    masking = [flag(k) for k in ("whole_word_mask", "mlm_probability")
               if getattr(config, k) != TrainingConfig.__dataclass_fields__[k].default]
    if objective == "clm" and masking:
        raise InvalidValue(f"{' and '.join(masking)} cannot be used with objective='clm' (--objective clm): a causal "
                           "LM predicts every next token and masks nothing")
    arguments.update(corpus_size=corpus_size if texts is None else None, dtype=np.dtype(dtype).name,
                     model_seed=model_seed)
    if objective == "clm":
        arguments["objective"] = "clm"          # (absent for mlm: runs from before keep resuming)
    if init_from is None:                       # the sizes asked for, bounded before any text is read
        _check_new_model_memory(arguments, config, objective)
    if texts is None:
        _check_corpus_memory(corpus_size, config.max_length or max_position_embeddings)
    world = distributed.world()
    with world.stop_all_on_error(), _claim(world, out, resume, overwrite), tempfile.TemporaryDirectory() as scratch:
        texts, val_texts = _pretraining_texts(texts, val_texts, corpus_size, config.seed)
        model_class = BertLMHeadModel if objective == "clm" else BertForMaskedLM
        tokenizer, model = _masked_lm(out, texts, init_from, arguments, dtype, attention_backend, resume,
                                      model_class, vocab_folder=scratch)
        config = fit_max_length(config, model)
        task = (CLMTask if objective == "clm" else MLMTask)(tokenizer, texts, val_texts, config)
        trainer = Trainer(model, task, config, out, tokenizer, run_arguments=arguments, world=world)
        if world.is_main:                     # everything was checked: now the first write
            replace_previous_run(out)
            if not resume and init_from is None:
                write_vocab(tokenizer.ids_to_tokens, os.path.join(out, VOCAB_NAME))
        result = trainer.train(resume=resume)
        metrics = task.evaluate(model, seed=config.seed)
        result.update(metrics=metrics, model=model, tokenizer=tokenizer, plots=[])
        if plots and world.is_main:
            result["plots"] = [
                plot_loss_curves(trainer.history, os.path.join(out, "loss.png"),
                                       title=("Pretraining (causal language model)" if objective == "clm"
                                              else "Pretraining (masked-language model)"),
                                       baseline_loss=math.log(metrics["unigram_perplexity"])),
                plot_attention(model, tokenizer, texts[0], os.path.join(out, "attention.png"))]
        return result


def _check_new_model_memory(args, config, objective):
    """Refuse (naming the flag) a new model whose training would not fit in memory, before the corpus
    is read or generated and the vocabulary trained (minutes, for a size that could never run)."""
    try:
        shape = BertConfig(vocab_size=args["vocab_size"], hidden_size=args["hidden_size"],
                           num_hidden_layers=args["num_layers"], num_attention_heads=args["num_heads"],
                           intermediate_size=args["intermediate_size"],
                           max_position_embeddings=args["max_position_embeddings"], is_decoder=objective == "clm")
        check_training_memory(shape, config, np.dtype(args["dtype"]).itemsize)
    except MemoryLimitExceeded as e:
        raise with_flag(e) from None


def _check_corpus_memory(corpus_size, length):
    """Refuse a generated corpus that would not fit in memory (each document a str of ~100 characters
    and its padded token ids), before generating any of it (10²⁰ documents used to run for ever)."""
    if isinstance(corpus_size, bool) or not isinstance(corpus_size, int) or corpus_size < 1:
        raise InvalidValue(f"corpus_size={corpus_size!r} (--corpus-size): expected a positive number of documents")
    try:
        check_memory(corpus_size * (300 + 16 * length), f"generating {corpus_size:,} documents and their token ids",
                     "corpus_size", corpus_size)
    except MemoryLimitExceeded as e:
        raise with_flag(e) from None


def _pretraining_texts(texts, val_texts, corpus_size, seed):
    """-> (training texts, validation texts): the generated corpus (without the classification
    task's held-out sentences) when ``texts`` is None, else ``texts`` with 5% held out when
    ``val_texts`` is None."""
    if texts is None:
        task = generate_sentiment_task(seed=seed)
        held = set(task["validation"][0]) | set(task["test"][0])
        texts = generate_corpus(corpus_size, seed=seed, exclude=held)
        if val_texts is None:
            val_texts = generate_corpus(max(200, corpus_size // 20), seed=seed + 1, exclude=held)
    elif val_texts is None:
        texts, val_texts = split_off(list(texts), 0.05, seed)
    if not texts:
        raise InvalidValue("the pretraining corpus is empty")
    return texts, val_texts


def _claim(world, out, resume, overwrite):
    """The run folder is rank 0's (``claim_run_folder``); the other ranks of a data-parallel run read it."""
    return claim_run_folder(out, resume=resume, overwrite=overwrite) if world.is_main else contextlib.nullcontext()


def _masked_lm(out, texts, init_from, args, dtype, attention_backend, resume, model_class=BertForMaskedLM,
               vocab_folder=None):
    """-> (tokenizer, BertForMaskedLM): the run's own checkpoint when resuming; ``init_from``'s to
    continue pretraining; else a WordPiece vocabulary trained on ``texts`` (saved in ``vocab_folder``,
    a scratch folder: ``pretrain`` copies it to out/vocab.txt once everything was checked) and a
    fresh model of the shape in ``args``."""
    seed = args["model_seed"]
    if resume or init_from is not None:
        folder = checkpoint_to_resume(out) if resume else init_from
        overrides = {} if resume else {k: v for k, v in (("hidden_dropout_prob", args["dropout"]),
                                                         ("attention_probs_dropout_prob", args["attention_dropout"]))
                                       if v is not None}
        if model_class is BertLMHeadModel and not resume:
            overrides["is_decoder"] = True          # an MLM checkpoint continues as a causal LM (as HF allows)
        elif not resume and read_config(folder).is_decoder:
            overrides["is_decoder"] = False         # and a causal LM as a masked LM: it must see both sides
            logger.warning("--init-from %s is a causal LM (is_decoder: true); it continues as a masked LM, which "
                           "attends both ways: is_decoder is reset to false", folder)
        return BertTokenizer.from_pretrained(folder), model_class.from_pretrained(
            folder, dtype=dtype, seed=seed, attention_backend=attention_backend, **overrides)
    vocab_file = write_vocab(train_wordpiece(texts, args["vocab_size"]), os.path.join(vocab_folder or out, VOCAB_NAME))
    tokenizer = BertTokenizer(vocab_file, model_max_length=args["max_position_embeddings"])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=args["hidden_size"],
                        num_hidden_layers=args["num_layers"], num_attention_heads=args["num_heads"],
                        intermediate_size=args["intermediate_size"], hidden_dropout_prob=args["dropout"],
                        attention_probs_dropout_prob=args["attention_dropout"],
                        max_position_embeddings=args["max_position_embeddings"], pad_token_id=tokenizer.pad_token_id,
                        is_decoder=model_class is BertLMHeadModel)
    return tokenizer, model_class(config, seed=seed, dtype=dtype, attention_backend=attention_backend)


# ------------------------------------------------------------------------------------------------
# stage 2: fine-tuning
# ------------------------------------------------------------------------------------------------

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
    out = os.fspath(out)
    source = checkpoint_folder(model_path)
    check_not_inside(source, out, "--model")
    train, val, test, names = _finetuning_data(train, val, test, config.seed)
    arguments = {"model": os.path.realpath(source), "dropout": dropout, "dtype": np.dtype(dtype).name,
                 "model_seed": model_seed, "from_scratch": from_scratch, "labels": names}
    world = distributed.world()
    with world.stop_all_on_error(), _claim(world, out, resume, overwrite):
        source = checkpoint_to_resume(out) if resume else source
        tokenizer = BertTokenizer.from_pretrained(source)
        if world.is_main and not resume:
            warn_poor_coverage(tokenizer, train[0], "the training texts")
        model = _classifier(source, names, arguments, dtype, attention_backend, fresh=from_scratch and not resume)
        config = fit_max_length(config, model)
        task = ClassificationTask(tokenizer, train, val, config, names)
        trainer = Trainer(model, task, config, out, tokenizer, run_arguments=arguments, world=world)
        result = trainer.train(resume=resume)
        split, (texts, labels) = ("test", test) if test is not None else ("validation", val)
        best_dir = os.path.join(out, "best")
        best = BertForSequenceClassification.from_pretrained(best_dir, dtype=dtype, attention_backend=attention_backend)
        ids, lengths = encode_texts(tokenizer, texts, config.max_length, "test texts")
        metrics = evaluate_classifier(best, ids, lengths, label_ids(labels, names, "test"), len(names))
        metrics["split"] = split
        if world.is_main:
            write_json(os.path.join(out, "test_metrics.json"), dict(metrics, label_names=names))
        result.update(metrics=metrics, label_names=names, best=best_dir, model=best, tokenizer=tokenizer, plots=[])
        if plots and world.is_main:
            result["plots"] = _finetuning_plots(out, trainer.history, best, tokenizer, metrics, names,
                                                sample_text or texts[0])
        return result


def _finetuning_data(train, val, test, seed):
    """-> (train, val, test, label names): the embedded minimal-pair task's splits where ``train`` is
    None, 10% of ``train`` as ``val`` where that is None; label sets checked to agree."""
    if train is None:
        task = generate_sentiment_task(seed=seed)
        train, val, test = task["train"], val or task["validation"], test or task["test"]
    check_label_sets(train[1])
    if val is None:
        train, val = hold_out_validation(train, seed)
    names = check_label_sets(train[1], val[1], "validation")
    if test is not None:
        check_label_sets(train[1], test[1], "test")
    return train, val, test, names


def _classifier(source, names, args, dtype, attention_backend, fresh):
    """BertForSequenceClassification for the labels ``names``: from the checkpoint ``source`` (its
    encoder; a new classifier and pooler are expected, so not reported), or with the checkpoint's
    vocabulary and shape but fresh weights (``fresh``: the no-pretraining comparison)."""
    overrides = {"id2label": dict(enumerate(names)), "num_labels": len(names)}
    if args["dropout"] is not None:
        overrides.update(hidden_dropout_prob=args["dropout"], classifier_dropout=args["dropout"])
    if fresh:
        return BertForSequenceClassification(read_config(source, overrides), seed=args["model_seed"], dtype=dtype,
                                             attention_backend=attention_backend)
    return BertForSequenceClassification.from_pretrained(
        source, dtype=dtype, seed=args["model_seed"], attention_backend=attention_backend,
        ignore_mismatched_sizes=True, log_loading_info=False, **overrides)


def _finetuning_plots(out, history, model, tokenizer, metrics, names, sample_text) -> list:
    """Loss curves, train vs validation accuracy, the confusion matrix (up to MAX_CLASSES_SHOWN
    classes) and the attention on ``sample_text``; -> the PNG paths."""
    drawn = [plot_loss_curves(history, os.path.join(out, "loss.png"), title="Fine-tuning (classification)"),
             plot_train_vs_val({"fine-tuning": history}, os.path.join(out, "train_vs_val.png"))]
    if len(names) <= MAX_CLASSES_SHOWN:
        drawn.append(plot_confusion_matrix(
            metrics["confusion_matrix"], names, os.path.join(out, "confusion_matrix.png"),
            title=f"Confusion matrix ({metrics['split']}, accuracy {metrics['accuracy']:.3f})"))
    else:
        print(f"no confusion-matrix plot: {len(names)} classes (more than {MAX_CLASSES_SHOWN}); "
              f"the commonest confusions are in {os.path.join(out, 'test_metrics.json')}")
    drawn.append(plot_attention(model, tokenizer, sample_text, os.path.join(out, "attention.png")))
    return drawn
