"""Evaluation: the article's accuracy, recall and F1, plus the two baselines the demo beats.

Classification, with C the confusion matrix (C[i, j] = how many examples of true class i were
predicted as j, K classes, N examples):

    accuracy      = Σ_i C[i, i] / N
    precision_k   = C[k, k] / Σ_i C[i, k]     (of what was predicted k, how much was k)
    recall_k      = C[k, k] / Σ_j C[k, j]     (of what was k, how much was found)
    F1_k          = 2 · precision_k · recall_k / (precision_k + recall_k)
    macro-X       = (1/K) Σ_k X_k             (every class counts the same, whatever its size)

A ratio with a zero denominator is 0 (scikit-learn's ``zero_division=0``). The per-class counts come
from ``np.bincount`` (O(N + K)), never from a K×K matrix, so thousands of classes cost little; the
confusion matrix itself is kept (in metrics.jsonl, reports and plots) up to ``MAX_CLASSES_SHOWN``
classes, and beyond that summarised as the commonest confusions.

Baselines:

- ``unigram_baseline``: for masked-token prediction, always guess the commonest training token; its
  accuracy is that token's share among the evaluated targets. Its cross-entropy
  −(1/N) Σ log q(y) under the training unigram distribution q (add-one smoothed) gives its
  perplexity exp(CE).
- ``BagOfWordsLogisticRegression``: softmax regression on word counts, in NumPy. It sees which
  words occur but not their order, so on the minimal pairs (same words, opposite labels) it cannot
  beat 50%.
"""
from __future__ import annotations

import math

import numpy as np

from tinybert.errors import InvalidValue
from tinybert.nn.softmax import softmax

MAX_CLASSES_SHOWN = 30      # beyond this many classes, reports and plots summarise instead of listing


def _as_labels(name, a):
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InvalidValue(f"{name} must be a 1-D array of integer class ids, got shape {a.shape} dtype {a.dtype}")
    return a


def accuracy(y_true, y_pred) -> float:
    """Fraction of equal entries. y_true, y_pred: [N] int -> float in [0, 1]."""
    y_true, y_pred = _as_labels("y_true", y_true), _as_labels("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise InvalidValue(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if y_true.size == 0:
        raise InvalidValue("accuracy of zero examples is undefined")
    return float((y_true == y_pred).mean())


def _checked_pair(y_true, y_pred, num_classes):
    """Validate two label arrays; -> (y_true, y_pred, K)."""
    y_true, y_pred = _as_labels("y_true", y_true), _as_labels("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise InvalidValue(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    k = int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1) if num_classes is None else num_classes
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= k):
        raise InvalidValue(f"class ids must be in [0, num_classes={k})")
    return y_true, y_pred, k


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """[K, K] int64, rows = true class, columns = predicted class."""
    y_true, y_pred, k = _checked_pair(y_true, y_pred, num_classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def top_confusions(y_true, y_pred, n: int = MAX_CLASSES_SHOWN) -> list:
    """The ``n`` commonest mistakes as [[true id, predicted id, count], ...], most frequent first
    (the confusion matrix's largest off-diagonal cells, found without building it)."""
    y_true, y_pred, _ = _checked_pair(y_true, y_pred, None)
    wrong = y_true != y_pred
    pairs, counts = np.unique(np.stack([y_true[wrong], y_pred[wrong]], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))[:n]
    return [[int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])] for i in order]


def _ratio(num, den):
    return np.divide(num, den, out=np.zeros(len(num), dtype=np.float64), where=den > 0)


def precision_recall_f1(y_true, y_pred, num_classes: int | None = None) -> dict:
    """Per-class precision, recall and F1 ([K] float arrays), support (true examples per class) and
    the macro averages. tp_k = #(true k, predicted k); predicted_k, support_k by ``np.bincount``."""
    y_true, y_pred, k = _checked_pair(y_true, y_pred, num_classes)
    tp = np.bincount(y_true[y_true == y_pred], minlength=k).astype(np.float64)
    predicted = np.bincount(y_pred, minlength=k).astype(np.float64)      # column sums of C
    support = np.bincount(y_true, minlength=k).astype(np.float64)        # row sums of C
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
            "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean())}


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    """Everything the fine-tuning report prints: accuracy, macro precision/recall/F1, per-class
    lists (precision, recall, f1, support) and the confusion matrix (as nested lists, JSON-ready).

    With more than ``MAX_CLASSES_SHOWN`` classes the K×K matrix is not built: ``confusion_matrix``
    is None and ``top_confusions`` lists the commonest mistakes instead.
    """
    prf = precision_recall_f1(y_true, y_pred, num_classes)
    m = {"accuracy": accuracy(y_true, y_pred),
         "macro_precision": prf["macro_precision"], "macro_recall": prf["macro_recall"],
         "macro_f1": prf["macro_f1"],
         "precision": prf["precision"].tolist(), "recall": prf["recall"].tolist(),
         "f1": prf["f1"].tolist(), "support": prf["support"].tolist(), "confusion_matrix": None}
    if num_classes <= MAX_CLASSES_SHOWN:
        m["confusion_matrix"] = confusion_matrix(y_true, y_pred, num_classes).tolist()
    else:
        m["top_confusions"] = top_confusions(y_true, y_pred)
    return m


def format_classification_report(metrics: dict, label_names) -> str:
    """A small text table: per-class precision/recall/F1, macro averages, accuracy, confusion matrix.

    Beyond ``MAX_CLASSES_SHOWN`` classes: the rows of the classes with the most examples, a line for
    the rest, and the commonest confusions instead of the matrix.
    """
    k = len(label_names)
    shown = list(range(k))
    if k > MAX_CLASSES_SHOWN:
        support = metrics.get("support") or [0] * k
        shown = sorted(sorted(range(k), key=lambda i: -support[i])[:MAX_CLASSES_SHOWN])
    w = max(8, max(len(label_names[i]) for i in shown))
    lines = [f"{'':{w}}  precision  recall     f1"]
    for i in shown:
        lines.append(f"{label_names[i]:{w}}  {metrics['precision'][i]:9.3f}  {metrics['recall'][i]:6.3f}  "
                     f"{metrics['f1'][i]:5.3f}")
    if k > len(shown):
        lines.append(f"... {k - len(shown)} more classes (the {len(shown)} with the most examples are shown; "
                     "every class is in test_metrics.json)")
    lines.append(f"{'macro':{w}}  {metrics['macro_precision']:9.3f}  {metrics['macro_recall']:6.3f}  "
                 f"{metrics['macro_f1']:5.3f}")
    lines.append(f"accuracy {metrics['accuracy']:.4f}")
    if metrics.get("confusion_matrix") is not None:
        lines.append("confusion matrix (rows true, columns predicted): " + str(metrics["confusion_matrix"]))
    else:
        lines.append("commonest confusions (true -> predicted: count): " + ", ".join(
            f"{label_names[t]} -> {label_names[p]}: {c}" for t, p, c in metrics.get("top_confusions", [])[:10]))
    return "\n".join(lines)


def unigram_baseline(train_ids, target_ids, vocab_size: int) -> dict:
    """The unigram model's masked-token scores.

    Args:
        train_ids: any int array of training tokens (specials and padding removed by the caller).
        target_ids: [N] the ids to predict (the masked positions' labels).
        vocab_size: V.
    Returns:
        {"accuracy": share of the commonest training token among targets, "token": its id,
         "loss": −mean log q(y) with q = (count + 1) / (n + V), "perplexity": exp(loss)}.
    """
    train_ids = np.asarray(train_ids).ravel()
    target_ids = np.asarray(target_ids).ravel()
    if train_ids.size == 0 or target_ids.size == 0:
        raise InvalidValue("unigram_baseline needs at least one training token and one target")
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    top = int(counts.argmax())
    q = (counts + 1.0) / (counts.sum() + vocab_size)
    loss = float(-np.log(q[target_ids]).mean())
    return {"accuracy": float((target_ids == top).mean()), "token": top, "loss": loss,
            "perplexity": math.exp(loss)}


class BagOfWordsLogisticRegression:
    """Softmax regression on bag-of-words counts, trained by full-batch gradient descent (Adam).

        x = counts of each vocabulary word in the text        [N, V]  (word order is lost)
        p = softmax(x W + b)                                  W: [V, K], b: [K]
        L = −(1/N) Σ log p_y + (λ/2) ‖W‖²
        dW = xᵀ (p − onehot(y)) / N + λ W,   db = Σ (p − onehot(y)) / N

    ``fit(texts, labels)`` builds the vocabulary from the training texts (lower-cased words split on
    whitespace); unknown words at predict time are ignored.
    """

    def __init__(self, l2: float = 1e-3, lr: float = 0.1, steps: int = 300, seed: int = 0):
        self.l2, self.lr, self.steps, self.seed = l2, lr, steps, seed
        self.vocab, self.W, self.b = None, None, None

    def features(self, texts) -> np.ndarray:
        """texts: list of N str -> [N, V] float64 counts."""
        x = np.zeros((len(texts), len(self.vocab)))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                j = self.vocab.get(w)
                if j is not None:
                    x[i, j] += 1.0
        return x

    def fit(self, texts, labels) -> "BagOfWordsLogisticRegression":
        y = _as_labels("labels", labels)
        if len(texts) != len(y):
            raise InvalidValue(f"{len(texts)} texts but {len(y)} labels")
        words = sorted({w for t in texts for w in t.lower().split()})
        self.vocab = {w: i for i, w in enumerate(words)}
        x = self.features(texts)
        n, k = len(y), int(y.max()) + 1
        rng = np.random.default_rng(self.seed)
        self.W = rng.normal(0, 0.01, (x.shape[1], k))
        self.b = np.zeros(k)
        onehot = np.eye(k)[y]
        m = [np.zeros_like(self.W), np.zeros_like(self.b)]
        v = [np.zeros_like(self.W), np.zeros_like(self.b)]
        for t in range(1, self.steps + 1):
            d = (self.predict_proba_features(x) - onehot) / n                # [N, K]
            grads = [x.T @ d + self.l2 * self.W, d.sum(axis=0)]
            for i, (p, g) in enumerate(zip((self.W, self.b), grads)):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                p -= self.lr * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
        return self

    def predict_proba_features(self, x) -> np.ndarray:
        return softmax(x @ self.W + self.b)

    def predict(self, texts) -> np.ndarray:
        """texts: list of N str -> [N] int class ids."""
        if self.W is None:
            raise InvalidValue("call fit(texts, labels) before predict")
        return self.predict_proba_features(self.features(texts)).argmax(axis=1)
