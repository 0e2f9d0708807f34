"""Plots of a training run, as PNG files (matplotlib, Agg backend: no display needed).

    plot_loss_curves        training loss per logged step and validation loss per epoch
    plot_train_vs_val       train vs validation accuracy per epoch, for one or several runs
                            (over-fitting shows as the gap; compare dropout / weight decay settings)
    plot_confusion_matrix   counts with true classes as rows, predictions as columns
    plot_attention          every head's attention weights P = softmax(QKᵀ/√d) on one sentence

Each function takes what it draws plus a file path, writes the PNG and returns the path
(``tinybert.io.figures.save_figure``: atomically, CJK text in a CJK font when one is installed). Work is
bounded: the attention plot reads at most ``MAX_PLOT_TOKENS`` tokens (and says when it cut the text),
the confusion matrix at most ``metrics.MAX_CLASSES_SHOWN`` classes.
"""
from __future__ import annotations

import numpy as np

from tinybert.errors import InvalidValue
from tinybert.io.figures import pyplot, save_figure
from tinybert.models.attention_maps import attention_maps
from tinybert.training.metrics import MAX_CLASSES_SHOWN
from tinybert.text.truncation import full_length, logger

MAX_PLOT_TOKENS = 64        # a T×T heatmap per head stays readable (and small) up to about this


def _plt():
    return pyplot()


def _save(fig, path, tight=True):
    return save_figure(fig, path, tight=tight)


def plot_loss_curves(history, path, title="Loss", baseline_loss=None, baseline_label="unigram baseline"):
    """history: metrics.jsonl rows ("train" rows with step/loss, "eval" rows with step/loss).

    Draws the training loss (thin line, every logged step) and the validation loss (dots, after each
    epoch) against the optimizer step; ``baseline_loss`` adds a dashed horizontal line.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    train = [(r["step"], r["loss"]) for r in history if r["kind"] == "train"]
    val = [(r["step"], r["loss"]) for r in history if r["kind"] == "eval"]
    if train:
        ax.plot(*zip(*train), lw=1, label="training loss (batch)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    if baseline_loss is not None:
        ax.axhline(baseline_loss, ls="--", color="gray", label=baseline_label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    values = [v for _, v in train + val] + ([baseline_loss] if baseline_loss else [])
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")                     # losses falling over decades read best on a log axis
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_train_vs_val(runs: dict, path, title="Train vs validation accuracy", metric="accuracy"):
    """runs: {run name: history}. For each run, train accuracy (dashed) and validation accuracy
    (solid) per epoch, in the same colour: the gap between them is over-fitting."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for i, (name, history) in enumerate(runs.items()):
        rows = [r for r in history if r["kind"] == "eval"]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        color = f"C{i}"
        ax.plot(epochs, [r["train_" + metric] for r in rows], "--", color=color, label=f"{name}: train")
        ax.plot(epochs, [r[metric] for r in rows], "o-", color=color, label=f"{name}: validation")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))   # epochs are whole numbers
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion_matrix(cm, label_names, path, title="Confusion matrix"):
    """cm: [K, K] counts (rows true class, columns predicted class), K <= MAX_CLASSES_SHOWN."""
    if len(label_names) > MAX_CLASSES_SHOWN:
        raise InvalidValue(f"{len(label_names)} classes are too many for a readable confusion-matrix plot "
                         f"(at most {MAX_CLASSES_SHOWN}); metrics['top_confusions'] lists the commonest mistakes")
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(label_names), 1.2 + 1.1 * len(label_names)))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_attention(model, tokenizer, text, path, title=None, max_tokens: int = MAX_PLOT_TOKENS):
    """Heatmaps of every head of every layer on ``text`` (rows: layers, columns: heads).

    The text is truncated to ``max_tokens`` (and to the model's max_position_embeddings), which the
    title and the ``tinybert`` logger say when it happens.
    """
    plt = _plt()
    limit = min(int(max_tokens), model.config.max_position_embeddings)
    enc = tokenizer(text, truncation=True, max_length=limit)
    n = len(enc["input_ids"])
    full = full_length(tokenizer, text) if n >= limit else n
    if full > n:
        logger.warning("attention plot %s: the text has %d tokens; only the first %d are drawn", path, full, n)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    p = attention_maps(model, enc["input_ids"])
    n_layers, n_heads, t, _ = p.shape
    size = max(2.2, 0.22 * t + 0.8)
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads, size * n_layers + 0.6), squeeze=False,
                             layout="constrained")
    for l in range(n_layers):
        for h in range(n_heads):
            ax = axes[l, h]
            im = ax.imshow(p[l, h], cmap="viridis", vmin=0, vmax=float(p.max()))
            ax.set_xticks(range(t), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(t), tokens, fontsize=7)
            ax.set_title(f"layer {l + 1}, head {h + 1}", fontsize=9)
            if h == 0:
                ax.set_ylabel("query (attends from)", fontsize=8)
            if l == n_layers - 1:
                ax.set_xlabel("key (attends to)", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, label="attention weight")
    shown = text if len(text) <= 80 else text[:77] + "..."
    fig.suptitle(title or f"Attention weights on: {shown!r}" + (f" (first {n} of {full} tokens)" if full > n else ""))
    return _save(fig, path, tight=False)
