"""Fine-tuning: from a pretrained encoder to a task

The article's fine-tuning stage, in its five steps:

    1. task definition        sentiment of a sentence (positive / negative)
    2. data preparation       labelled sentences, tokenized
    3. model initialization   the encoder's weights come from pretraining (lesson 06's procedure)
    4. task-specific layers   a pooler on [CLS] and a linear classifier
    5. fine-tuning            train only the task part — or everything — and compare

and its evaluation (accuracy, precision, recall, F1), over-fitting and what dropout and L2 change,
and a bag-of-words baseline that fails on purpose: the task is built from minimal pairs,
"the soup was tasty , not bland ." (positive) vs "the soup was bland , not tasty ." (negative).
"""
import numpy as np

from _stepper import Lesson
from _pretrain import encode, pretrain_small, small_config

import tinybert
from tinybert.training.corpus import LABELS, generate_sentiment_task
from tinybert.losses import cross_entropy
from tinybert.training.metrics import BagOfWordsLogisticRegression, classification_metrics, format_classification_report

lesson = Lesson("07", "Fine-tuning", __doc__)
plt = lesson.plt
small = lesson.small
PRETRAIN_STEPS = 150 if small else 400
N_PAIRS = (100, 50, 60) if small else (400, 100, 150)
EPOCHS = 3 if small else 8
BATCH = 32

# ------------------------------------------------------------------------------------------------
lesson.step("1–2. The task and its data",
            "(text, label) pairs;  label ∈ {negative = 0, positive = 1}",
            code=generate_sentiment_task)
task = generate_sentiment_task(*N_PAIRS, seed=lesson.seed)
splits = {}
for split, (texts, labels) in task.items():
    splits[split] = (texts, np.array([LABELS.index(l) for l in labels]))
    lesson.value(f"{split:<10}", f"{len(texts)} sentences")
for t, l in zip(task["train"][0][:4], task["train"][1][:4]):
    print(f"    {l:<8}  {t}")
lesson.say("""Sentences come in pairs with the same words and opposite labels: what decides is which
adjective is asserted and which is negated — word order.""")

# ------------------------------------------------------------------------------------------------
lesson.step("A bag-of-words baseline: it cannot see word order",
            "p = softmax(counts(x) W + b)       counts(x): how often each word occurs, order lost",
            code=[BagOfWordsLogisticRegression.fit, BagOfWordsLogisticRegression.predict])
bow = BagOfWordsLogisticRegression().fit(*splits["train"])
bow_train = float((bow.predict(splits["train"][0]) == splits["train"][1]).mean())
bow_pred = bow.predict(splits["test"][0])
bow_acc = float((bow_pred == splits["test"][1]).mean())
same = float((bow_pred[0::2] == bow_pred[1::2]).mean())
lesson.value("bag-of-words train accuracy", bow_train)
lesson.value("bag-of-words test accuracy", bow_acc)
lesson.value("pairs given the same label", same, "identical features ⇒ identical prediction")
lesson.say("""The two sentences of a pair have identical word counts, so the baseline must give them
the same label and is right on exactly one of the two: 50 %, however long it trains.""")

# ------------------------------------------------------------------------------------------------
lesson.step("3. Model initialization: pretrain an encoder (lesson 06's procedure)",
            "θ_encoder ← argmin MLM loss on the unlabelled corpus (the task's test sentences excluded)",
            code=pretrain_small)
mlm, tok, mlm_losses = pretrain_small(PRETRAIN_STEPS, seed=lesson.seed,
                                      exclude=set(task["test"][0]), log=print)
encoded = {s: encode(tok, texts) for s, (texts, _) in splits.items()}
lesson.value("pretrained", f"{PRETRAIN_STEPS} MLM steps, loss {mlm_losses[0]:.2f} → {np.mean(mlm_losses[-20:]):.2f}")


def classifier(init_from_pretrained: bool, dropout=0.1, seed=lesson.seed):
    """BertForSequenceClassification; its encoder copied from the pretrained MLM model or random."""
    model = tinybert.BertForSequenceClassification(small_config(tok, dropout=dropout, num_labels=2),
                                                   seed=seed, attention_backend="numpy")
    if init_from_pretrained:
        pretrained = dict(mlm.named_parameters())
        copied = 0
        for name, p in model.named_parameters():
            if name in pretrained:                     # bert.embeddings.*, bert.encoder.*
                p.data[...] = pretrained[name].data
                copied += 1
        return model, copied
    return model, 0


# ------------------------------------------------------------------------------------------------
lesson.step("4. Task-specific layers: pooler on [CLS], dropout, linear classifier",
            """pooled = tanh(h_[CLS] W_P + b_P);   logits = Dropout(pooled) W_C + b_C      [B, C] -> [B, 2]""",
            code=[tinybert.nn.pooler.Pooler.forward, tinybert.BertForSequenceClassification.forward])
model, copied = classifier(True)
n_task = sum(p.data.size for n, p in model.named_parameters() if n.startswith(("bert.pooler", "classifier")))
lesson.value("tensors copied from pretraining", copied)
lesson.value("new task parameters (pooler + classifier)", f"{n_task:,} of {model.num_parameters():,}")


def evaluate(model, split):
    ids, am = encoded[split]
    model.eval()
    logits = model.forward(ids, attention_mask=am)
    model.train()
    return logits.argmax(-1)


def finetune(model, head_only=False, epochs=EPOCHS, lr=1e-3, l2=0.0, data="train", seed=lesson.seed):
    """Train; return per-epoch train and validation accuracy."""
    if head_only:                                     # the article's "train only the task part"
        model.bert.embeddings.requires_grad_(False)
        model.bert.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = tinybert.Adam(params, lr=lr, weight_decay=l2)          # weight_decay here = L2 in the gradient
    ids, am = encoded[data]
    y = splits[data][1]
    rng = np.random.default_rng(seed)
    history = {"train": [], "validation": [], "loss": []}
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(ids))
        for i in range(0, len(ids), BATCH):
            rows = order[i:i + BATCH]
            t = int(am[rows].sum(1).max())
            logits = model.forward(ids[rows, :t], attention_mask=am[rows, :t])
            loss, dlogits = cross_entropy(logits, y[rows])
            model.zero_grad()
            model.backward(dlogits)
            opt.step()
            history["loss"].append(loss)
        history["train"].append(float((evaluate(model, data) == y).mean()))
        history["validation"].append(float((evaluate(model, "validation") == splits["validation"][1]).mean()))
    return history


# ------------------------------------------------------------------------------------------------
lesson.step("5. Fine-tuning: only the task layers, everything, or from scratch",
            """head only:  freeze θ_encoder (requires_grad = False), train pooler + classifier
full:       train every parameter from the pretrained start
scratch:    the same model from random weights (no pretraining)""",
            code=[tinybert.nn.module.Module.requires_grad_, tinybert.Adam.step])
runs = {}
for name, pre, head in (("head only (pretrained, frozen)", True, True),
                        ("full fine-tuning (pretrained)", True, False),
                        ("from scratch (no pretraining)", False, False)):
    m, _ = classifier(pre)
    hist = finetune(m, head_only=head, lr=3e-3 if head else 1e-3)
    pred = evaluate(m, "test")
    metrics = classification_metrics(splits["test"][1], pred, 2)
    runs[name] = (m, hist, metrics, pred)
    lesson.value(f"{name:<31}", f"val acc per epoch {' '.join(f'{a:.2f}' for a in hist['validation'])}")
first = {n: next((i + 1 for i, a in enumerate(r[1]["validation"]) if a >= 0.95), None) for n, r in runs.items()}
lesson.value("first epoch with validation ≥ 0.95", ", ".join(f"{n.split(' (')[0]}: {e}" for n, e in first.items()))
lesson.say("""Head-only training sees the encoder's [CLS] vector and nothing else. Our encoder was
pretrained with MLM alone, which never asks [CLS] to summarise the sentence (BERT added next-sentence
prediction for that), so a frozen [CLS] carries little about which adjective was negated; letting
the encoder adapt (full fine-tuning) fixes it, and starting from pretrained weights gets there in
fewer epochs than starting from scratch.""")
fig, ax = plt.subplots(figsize=(7, 4))
for name, (_, hist, _, _) in runs.items():
    ax.plot(np.arange(1, EPOCHS + 1), hist["validation"], "o-", label=name)
ax.axhline(bow_acc, color="gray", ls="--", label="bag-of-words baseline (test)")
ax.set_ylim(0.3, 1.02)
ax.set_xlabel("epoch")
ax.set_ylabel("validation accuracy")
ax.set_title("fine-tuning: head only vs full vs from scratch")
ax.legend(fontsize=8)
lesson.savefig(fig, "full_vs_head")

# ------------------------------------------------------------------------------------------------
lesson.step("Evaluation: accuracy, precision, recall, F1 on the test set",
            """accuracy = Σ_k C_kk / N;   precision_k = C_kk / Σ_i C_ik;   recall_k = C_kk / Σ_j C_kj
F1_k = 2 · precision_k · recall_k / (precision_k + recall_k)      (C: confusion matrix, rows = truth)""",
            code=[classification_metrics, tinybert.training.metrics.precision_recall_f1])
print(f"  {'run':<31} {'accuracy':>8} {'precision':>9} {'recall':>7} {'F1':>6}   (macro)")
for name, (_, _, mt, _) in runs.items():
    print(f"  {name:<31} {mt['accuracy']:8.3f} {mt['macro_precision']:9.3f} {mt['macro_recall']:7.3f} "
          f"{mt['macro_f1']:6.3f}")
bow_m = classification_metrics(splits["test"][1], bow_pred, 2)
print(f"  {'bag-of-words baseline':<31} {bow_m['accuracy']:8.3f} {bow_m['macro_precision']:9.3f} "
      f"{bow_m['macro_recall']:7.3f} {bow_m['macro_f1']:6.3f}")
best = max(runs, key=lambda n: runs[n][2]["accuracy"])
print(f"\n  best run: {best}")
print("  " + format_classification_report(runs[best][2], LABELS).replace("\n", "\n  "))
cm = np.array(runs[best][2]["confusion_matrix"])
fig, ax = plt.subplots(figsize=(4.6, 4))
ax.imshow(cm, cmap="Blues")
for i in range(2):
    for j in range(2):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=14)
ax.set_xticks([0, 1], LABELS)
ax.set_yticks([0, 1], LABELS)
ax.set_xlabel("predicted")
ax.set_ylabel("true")
ax.set_title(f"test confusion matrix\n{best}", fontsize=9)
lesson.savefig(fig, "confusion")

# ------------------------------------------------------------------------------------------------
lesson.step("Over-fitting, and what dropout and L2 change",
            """few examples with some wrong labels, many epochs: the model memorises the noise,
train accuracy → 1 while validation accuracy falls
dropout: zero a fraction p of activations while training;   L2: g ← g + λθ  (i.e. loss + (λ/2)‖θ‖²)""",
            code=[tinybert.nn.dropout.Dropout.forward, tinybert.Adam.step])
n_few = 24 if small else 40
noise = 0.25
few_rng = np.random.default_rng(lesson.seed + 1)
few_y = splits["train"][1][:2 * n_few].copy()
flip = few_rng.random(len(few_y)) < noise
few_y[flip] = 1 - few_y[flip]
encoded["few"] = (encoded["train"][0][:2 * n_few], encoded["train"][1][:2 * n_few])
splits["few"] = (splits["train"][0][:2 * n_few], few_y)
lesson.value("training set", f"{2 * n_few} sentences, {int(flip.sum())} of their labels flipped on purpose")
long_epochs = 15 if small else 30
settings = {"no regularization": dict(dropout=0.0, l2=0.0),
            "dropout 0.3": dict(dropout=0.3, l2=0.0),
            "L2 λ = 0.003": dict(dropout=0.0, l2=0.003)}
reg = {}
for name, s_ in settings.items():
    m, _ = classifier(True, dropout=s_["dropout"])
    reg[name] = finetune(m, epochs=long_epochs, lr=3e-3, l2=s_["l2"], data="few")
    h = reg[name]
    lesson.value(f"{name:<18}", f"train {h['train'][-1]:.2f} (noisy labels)   validation {h['validation'][-1]:.2f}   "
                                f"best validation {max(h['validation']):.2f}")
fig, ax = plt.subplots(figsize=(7.5, 4.2))
for (name, h), color in zip(reg.items(), ("tab:red", "tab:blue", "tab:green")):
    ep = np.arange(1, long_epochs + 1)
    ax.plot(ep, h["train"], "-", color=color, label=f"{name}: train")
    ax.plot(ep, h["validation"], "--", color=color, label=f"{name}: validation")
ax.axhline(1 - flip.mean(), color="gray", ls=":", lw=1)
ax.text(1, 1 - flip.mean() + 0.01, "train accuracy of the true rule", color="gray", fontsize=8)
ax.set_xlabel("epoch")
ax.set_ylabel("accuracy")
ax.set_ylim(0.3, 1.02)
ax.set_title(f"over-fitting: {2 * n_few} training sentences, {noise:.0%} of labels flipped")
ax.legend(fontsize=7, ncol=2, loc="lower right")
lesson.savefig(fig, "regularization")
lesson.say(f"""A model that learned the true rule would score {1 - flip.mean():.2f} on these noisy training
labels; going above that means memorising wrong labels — over-fitting — and it costs validation
accuracy. Dropout and L2 limit how much can be memorised; the numbers above say how much they
helped on this run. More (and cleaner) data is the strongest cure, as the article's FAQ says.""")

head = runs["head only (pretrained, frozen)"][2]["accuracy"]
full = runs["full fine-tuning (pretrained)"][2]["accuracy"]
scratch = runs["from scratch (no pretraining)"][2]["accuracy"]
lesson.end([
    f"The bag-of-words baseline scores {bow_acc:.2f} on test: identical words, identical answer, "
    "so one of each minimal pair is wrong.",
    f"Initialised from the pretrained encoder, training only the new pooler + classifier "
    f"({n_task:,} parameters) reaches {head:.2f} test accuracy; fine-tuning everything {full:.2f}; "
    f"the same model from scratch {scratch:.2f} (07_full_vs_head.png).",
    f"Accuracy, precision, recall and F1 come from the confusion matrix (07_confusion.png, best: {best}).",
    "On a small training set with flipped labels the model memorises the noise (over-fitting); "
    "final validation accuracy: "
    + ", ".join(f"{n} {h['validation'][-1]:.2f}" for n, h in reg.items()) + " (07_regularization.png).",
])
