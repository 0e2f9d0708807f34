"""The two training tasks: their data, their batches, their loss and their scores.

A task is what the training loop (``Trainer``) is generic over::

    name                         "mlm" / "classification" (progress bars, run_config.json)
    n_train                      how many training examples
    make_batch(rows, rng)        {"input_ids", "attention_mask", "labels"} for those training rows
    forward_loss(model, batch)   -> (loss, dlogits, n_correct, n_counted); the loop then calls
                                    model.backward(dlogits), the model's own gradient path
    evaluate(model, seed)        validation metrics
    validation_score(metrics)    what early stopping maximises: a tuple, compared entry by entry
    keeps_best                   save the model with the best validation score to best/
    describe(row)                the task's part of an epoch's one-line summary
    data_fingerprint()           what the task reads, for resume checks

Scoring without training: ``evaluate_masked_lm`` and ``evaluate_classifier`` take encoded texts and
a model (the ``tinybert evaluate`` verb calls them; the tasks' ``evaluate`` do too).
"""
from __future__ import annotations

import math

import numpy as np

from tinybert.errors import InvalidValue
from tinybert.losses import cross_entropy, next_token_loss
from tinybert.models.nonfinite import check_finite_outputs
from tinybert.training.config import TrainingConfig
from tinybert.training.data import batch_rows, encode_texts, fingerprint
from tinybert.training.distributed import SingleProcess
from tinybert.training.masking import IGNORE_INDEX, DynamicMasking
from tinybert.training.baselines import unigram_baseline
from tinybert.training.metrics import classification_metrics
from tinybert.xp import to_numpy


def predict_logits(model, ids, lengths, batch_size=64, world=None) -> np.ndarray:
    """Eval-mode logits for encoded rows: ids [N, T], lengths [N] -> [N, K] (or [N, T, V]).

    world: the ranks of a data-parallel run (``distributed``) share the batches, batch i on rank
    i mod N; each fills its rows of a zero [N, K] array (classifier logits) and one all-reduce — a
    sum with zeros, so exact — gives every rank all of them."""
    world = world or SingleProcess()
    mine = [start for i, start in enumerate(range(0, len(ids), batch_size)) if i % world.size == world.rank]
    out = []
    with model.evaluating():
        for start in mine:
            x, mask = batch_rows(ids, lengths, np.arange(start, min(start + batch_size, len(ids))))
            out.append(to_numpy(model.forward(x, attention_mask=mask)))
    if world.size == 1:
        return np.concatenate(out)
    full = np.zeros((len(ids), model.config.num_labels), dtype=model.parameters()[0].data.dtype)
    for start, logits in zip(mine, out):
        full[start:start + len(logits)] = logits
    return world.allreduce_sum_(full)


def evaluate_classifier(model, ids, lengths, y, num_labels: int, batch_size=64, world=None) -> dict:
    """loss, accuracy, macro precision/recall/F1, per-class lists and the confusion matrix of a
    classifier on encoded rows (ids [N, T], lengths [N]) with true label ids y [N] (the forward
    shared by the ranks of ``world``)."""
    logits = predict_logits(model, ids, lengths, batch_size, world)
    check_finite_outputs(logits, "the classifier's logits on the evaluated texts")   # argmax(NaN) = class 0
    loss, _ = cross_entropy(logits, y)
    metrics = classification_metrics(y, logits.argmax(axis=-1), num_labels)
    metrics["loss"] = loss
    return metrics


def masked_validation_batches(ids, lengths, masking: DynamicMasking, batch_size=64, seed=0):
    """Yield (i, inputs, attention_mask, labels) for each batch of the encoded validation rows, masked
    by a generator fixed by ``seed``: the same masks every epoch (and in ``MLMTask``'s check)."""
    rng = np.random.default_rng([seed, 987654321])
    for i, start in enumerate(range(0, len(ids), batch_size)):
        x, mask = batch_rows(ids, lengths, np.arange(start, min(start + batch_size, len(ids))))
        inputs, labels = masking(x, mask, rng)
        yield i, inputs, mask, labels


def evaluate_masked_lm(model, tokenizer, ids, lengths, masking: DynamicMasking, baseline_tokens,
                       batch_size=64, seed=0, world=None) -> dict:
    """Masked-token scores of an MLM on encoded rows, masked by a generator fixed by ``seed`` (so that
    epochs compare): loss, perplexity = exp(loss), accuracy, and the unigram baseline (trained on
    ``baseline_tokens``) on the same targets (``score_language_model``; every rank draws every
    batch's masks, which keeps the generator in step)."""
    batches = ((i, {"input_ids": inputs, "attention_mask": mask, "labels": labels}, labels[labels != IGNORE_INDEX])
               for i, inputs, mask, labels in masked_validation_batches(ids, lengths, masking, batch_size, seed))
    return score_language_model(model, tokenizer, batches, masked_lm_loss, baseline_tokens, world,
                                what="masked token", count_key="masked_tokens")


def masked_lm_loss(model, batch):
    """-> (loss, dlogits, n_correct, n_counted) of an MLM on a batch {"input_ids", "attention_mask",
    "labels" (-100 where not masked)}."""
    logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"])
    loss, dlogits = cross_entropy(logits, batch["labels"])
    sel = batch["labels"] != IGNORE_INDEX
    correct = int((to_numpy(logits)[sel].argmax(axis=-1) == batch["labels"][sel]).sum())
    return loss, dlogits, correct, int(sel.sum())


def score_language_model(model, tokenizer, batches, forward_loss, baseline_tokens, world=None,
                         what="masked token", count_key="masked_tokens") -> dict:
    """Held-out scores of a language model (MLM or CLM): loss, perplexity = exp(loss), accuracy, and
    the unigram baseline (trained on ``baseline_tokens``) on the same targets.

    batches: (i, batch, targets [n] ids) for every batch, on every rank; ``forward_loss(model, batch)``
    -> (mean loss, dlogits, n_correct, n_counted). world: the ranks of a data-parallel run share the
    forwards (batch i on rank i mod N) and sum their loss and correct counts. A batch without targets
    is skipped (its loss would be 0 over 0 targets). ``what`` names a target in the error when there is
    none; ``count_key`` is the result's key for their count.
    """
    world = world or SingleProcess()
    total, correct, targets = 0.0, 0, []
    with model.evaluating():
        for i, batch, batch_targets in batches:
            if not len(batch_targets):
                continue
            targets.append(batch_targets)
            if i % world.size != world.rank:
                continue
            loss, _, c, n = forward_loss(model, batch)
            total, correct = total + loss * n, correct + c
    total, correct = sum_over_ranks(world, total, correct)
    count = sum(len(t) for t in targets)
    if not count:
        raise InvalidValue(f"the validation text gave no {what} to score; give more validation text")
    loss = total / count
    base = unigram_baseline(baseline_tokens, np.concatenate(targets), tokenizer.vocab_size)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count,
            count_key: count, "unigram_accuracy": base["accuracy"], "unigram_perplexity": base["perplexity"],
            "unigram_token": tokenizer.convert_ids_to_tokens(base["token"])}


def label_ids(labels, label_names, split: str = "test") -> np.ndarray:
    """Label names -> ids [N] int64 (the position in ``label_names``); a name outside them is an
    error naming the split."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise InvalidValue(f"the {split} labels {unknown} are not among the model's labels {list(label_names)}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def real_tokens(tokenizer, ids, lengths) -> np.ndarray:
    """The ids of encoded rows without padding and special tokens (what a unigram model learns from)."""
    tokens = ids[np.arange(ids.shape[1])[None, :] < lengths[:, None]]
    return tokens[~np.isin(tokens, tokenizer.all_special_ids)]


class TextTask:
    """Unlabelled training and validation text, encoded once (the language-modelling tasks' data)."""
    keeps_best = False

    def __init__(self, tokenizer, train_texts, val_texts, config: TrainingConfig):
        self.tokenizer, self.config = tokenizer, config
        self.train_ids, self.train_len = encode_texts(tokenizer, train_texts, config.max_length, "training texts")
        self.val_ids, self.val_len = encode_texts(tokenizer, val_texts, config.max_length, "validation texts")
        self.n_train = len(self.train_ids)

    def data_fingerprint(self) -> dict:
        """{"train": ..., "validation": ..., "n_train", "n_validation"}: what this task reads, encoded."""
        return {"train": fingerprint(self.train_ids, self.train_len), "n_train": len(self.train_ids),
                "validation": fingerprint(self.val_ids, self.val_len), "n_validation": len(self.val_ids)}

    @staticmethod
    def validation_score(metrics) -> tuple:
        return (-metrics["loss"],)

    @staticmethod
    def describe(row) -> str:
        return f" perplexity {row['perplexity']:.2f} (unigram acc {row['unigram_accuracy']:.3f})"


def sum_over_ranks(world, total: float, correct: int) -> tuple[float, int]:
    """(Σ total, Σ correct) over the ranks of ``world`` (one 2-float all-reduce; one process: as given)."""
    if world.size == 1:
        return total, correct
    total, correct = world.allreduce_sum_(np.array([total, correct], dtype=np.float64))
    return float(total), int(correct)


class MLMTask(TextTask):
    """Masked-language modelling data and scoring for ``BertForMaskedLM``.

    train/val texts are encoded once; every batch is masked afresh (``DynamicMasking``) from the
    generator it is given. Validation masks come from a fixed generator, so epochs are comparable.
    """
    name = "mlm"

    def __init__(self, tokenizer, train_texts, val_texts, config: TrainingConfig):
        super().__init__(tokenizer, train_texts, val_texts, config)
        self.masking = DynamicMasking(tokenizer, config.mlm_probability, config.whole_word_mask)
        # refused now, before the run writes (or --overwrite deletes) anything: a validation text whose
        # fixed masks hide no token would fail only at the end of the first epoch
        if not any((labels != IGNORE_INDEX).any() for _, _, _, labels in
                   masked_validation_batches(self.val_ids, self.val_len, self.masking, seed=config.seed)):
            raise InvalidValue(f"the validation text gave no masked token to score ({len(self.val_ids)} rows, "
                               f"mlm_probability {config.mlm_probability}); give more validation text")

    def make_batch(self, rows, rng):
        """Training rows -> {"input_ids" (masked), "attention_mask", "labels" (-100 where not masked)}."""
        x, mask = batch_rows(self.train_ids, self.train_len, rows)
        inputs, labels = self.masking(x, mask, rng)
        return {"input_ids": inputs, "attention_mask": mask, "labels": labels}

    def forward_loss(self, model, batch):
        """-> (loss, dlogits, n_correct, n_counted) (``masked_lm_loss``)."""
        return masked_lm_loss(model, batch)

    def evaluate(self, model, batch_size=64, seed=0, world=None) -> dict:
        """Held-out MLM scores beside the unigram baseline of the training text (evaluate_masked_lm)."""
        return evaluate_masked_lm(model, self.tokenizer, self.val_ids, self.val_len, self.masking,
                                  real_tokens(self.tokenizer, self.train_ids, self.train_len), batch_size, seed,
                                  world)



class ClassificationTask:
    """Sequence-classification data and scoring for ``BertForSequenceClassification``.

    labels are given as names; ``label_names`` fixes their ids (the config's id2label).
    """
    name = "classification"
    keeps_best = True

    def __init__(self, tokenizer, train, val, config: TrainingConfig, label_names):
        self.tokenizer, self.config = tokenizer, config
        self.label_names = list(label_names)
        self.train_ids, self.train_len = encode_texts(tokenizer, train[0], config.max_length, "training texts")
        self.train_y = label_ids(train[1], self.label_names, "training")
        self.val_ids, self.val_len = encode_texts(tokenizer, val[0], config.max_length, "validation texts")
        self.val_y = label_ids(val[1], self.label_names, "validation")
        self.n_train = len(self.train_ids)

    def data_fingerprint(self) -> dict:
        """{"train": ..., "validation": ..., "n_train", "n_validation"}: texts (encoded) and labels."""
        return {"train": fingerprint(self.train_ids, self.train_len, self.train_y), "n_train": len(self.train_ids),
                "validation": fingerprint(self.val_ids, self.val_len, self.val_y),
                "n_validation": len(self.val_ids)}

    def make_batch(self, rows, rng=None):
        """Training rows -> {"input_ids", "attention_mask", "labels"}."""
        x, mask = batch_rows(self.train_ids, self.train_len, rows)
        return {"input_ids": x, "attention_mask": mask, "labels": self.train_y[rows]}

    def forward_loss(self, model, batch):
        """-> (loss, dlogits, n_correct, n_counted)."""
        logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, dlogits = cross_entropy(logits, batch["labels"])
        correct = int((to_numpy(logits).argmax(axis=-1) == batch["labels"]).sum())
        return loss, dlogits, correct, len(batch["labels"])

    def evaluate(self, model, batch_size=64, seed=0, world=None) -> dict:
        """Validation loss, accuracy, macro precision/recall/F1, per-class lists, confusion matrix."""
        return evaluate_classifier(model, self.val_ids, self.val_len, self.val_y, len(self.label_names), batch_size,
                                   world)

    @staticmethod
    def validation_score(metrics) -> tuple:
        """Accuracy, and on a tie the lower validation loss (accuracy saturates at 1.0 on easy data
        while the loss still falls)."""
        return metrics["accuracy"], -metrics["loss"]

    @staticmethod
    def describe(row) -> str:
        return f" macro-F1 {row['macro_f1']:.3f}"


class CLMTask(TextTask):
    """Causal-language-modelling data and scoring for ``BertLMHeadModel`` (``pretrain --objective clm``):
    every real token after the first is a target, predicted from the tokens before it
    (``next_token_loss``); padding is never a target."""
    name = "clm"

    def make_batch(self, rows, rng=None):
        """Training rows -> {"input_ids", "attention_mask", "labels" (the ids; -100 on padding)}."""
        return self._batch(self.train_ids, self.train_len, rows)

    @staticmethod
    def _batch(ids, lengths, rows):
        x, mask = batch_rows(ids, lengths, rows)
        labels = np.where(mask == 1, x, IGNORE_INDEX)
        labels[:, 0] = IGNORE_INDEX                 # the first token is never a target: labels count targets
        return {"input_ids": x, "attention_mask": mask, "labels": labels}

    def forward_loss(self, model, batch):
        """-> (loss, dlogits, n_correct, n_counted) of the next-token predictions."""
        logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, dlogits = next_token_loss(logits, batch["labels"])
        targets = batch["labels"][:, 1:]
        sel = targets != IGNORE_INDEX
        correct = int((to_numpy(logits)[:, :-1][sel].argmax(axis=-1) == targets[sel]).sum())
        return loss, dlogits, correct, int(sel.sum())

    def evaluate(self, model, batch_size=64, seed=0, world=None) -> dict:
        """Held-out next-token loss, perplexity and accuracy, beside the unigram model on the same
        targets (trained on the training text's real tokens). world: the ranks of a data-parallel run
        share the forwards (batch i on rank i mod N) and sum their loss and correct counts."""
        def batches():
            for i, start in enumerate(range(0, len(self.val_ids), batch_size)):
                batch = self._batch(self.val_ids, self.val_len, np.arange(start, min(start + batch_size, len(self.val_ids))))
                targets = batch["labels"][:, 1:]
                yield i, batch, targets[targets != IGNORE_INDEX]

        return score_language_model(model, self.tokenizer, batches(), self.forward_loss,
                                    real_tokens(self.tokenizer, self.train_ids, self.train_len), world,
                                    what="next token", count_key="predicted_tokens")
