"""Evaluation: the article's accuracy, recall and F1.

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
classes, and beyond that summarised as the commonest confusions. The baselines these scores are
set beside are in ``training/baselines.py``.
"""
from __future__ import annotations

import numpy as np

from tinybert.errors import InvalidValue

MAX_CLASSES_SHOWN = 30      # beyond this many classes, reports and plots summarise instead of listing


def as_labels(name, a):
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InvalidValue(f"{name} must be a 1-D array of integer class ids, got shape {a.shape} dtype {a.dtype}")
    return a


def accuracy(y_true, y_pred) -> float:
    """Fraction of equal entries. y_true, y_pred: [N] int -> float in [0, 1]."""
    y_true, y_pred = as_labels("y_true", y_true), as_labels("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise InvalidValue(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if y_true.size == 0:
        raise InvalidValue("accuracy of zero examples is undefined")
    return float((y_true == y_pred).mean())


def _checked_pair(y_true, y_pred, num_classes):
    """Validate two label arrays; -> (y_true, y_pred, K)."""
    y_true, y_pred = as_labels("y_true", y_true), as_labels("y_pred", y_pred)
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
