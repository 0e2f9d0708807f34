"""The two baselines the demo's models beat, each the simplest model that could score at all.

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
from tinybert.training.metrics import as_labels


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
        y = as_labels("labels", labels)
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
