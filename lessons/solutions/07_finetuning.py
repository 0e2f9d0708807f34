"""Solutions to lesson 07's exercises (fine-tuning). Run one with
``python lessons/07_finetuning.py --small --exercise k``."""
import numpy as np

from _07_finetune import accuracy_and_loss, classifier, finetune
from _pretrain import encode, pretrain_small

from tinybert.training.corpus import LABELS, generate_sentiment_task
from tinybert.training.baselines import BagOfWordsLogisticRegression
from tinybert.training.metrics import classification_metrics


def _task(lesson):
    """Lesson 07's minimal pairs (the same sizes and seed): {split: (texts, labels as 0/1)}."""
    sizes = (100, 50, 60) if lesson.small else (400, 100, 150)
    task = generate_sentiment_task(*sizes, seed=lesson.seed)
    return {k: (texts, np.array([LABELS.index(l) for l in labels])) for k, (texts, labels) in task.items()}


def with_bigrams(texts):
    """Each text with its adjacent word pairs appended as extra words: "not bland" -> "not_bland"."""
    out = []
    for t in texts:
        w = t.split()
        out.append(" ".join(w + [f"{a}_{b}" for a, b in zip(w, w[1:])]))
    return out


def exercise_1(lesson):
    """Step 2's bag of words cannot see word order. Give it a little: add every pair of adjacent words
    ("not bland", "was tasty") as an extra feature, and train it on the same minimal pairs.

    You should see: the two sentences of a pair no longer have the same features, and test accuracy
    rises from exactly 0.50 to above 0.9 — on this task, the order that matters is local ("not" before
    an adjective), which adjacent pairs already capture."""
    splits = _task(lesson)
    plain = BagOfWordsLogisticRegression().fit(*splits["train"])
    acc_plain = float((plain.predict(splits["test"][0]) == splits["test"][1]).mean())
    bi = BagOfWordsLogisticRegression().fit(with_bigrams(splits["train"][0]), splits["train"][1])
    test_bi = with_bigrams(splits["test"][0])
    pred = bi.predict(test_bi)
    acc_bi = float((pred == splits["test"][1]).mean())
    feats = bi.features(test_bi)
    differ = float(np.mean([not np.array_equal(feats[i], feats[i + 1]) for i in range(0, len(feats), 2)]))
    lesson.value("words only", f"test accuracy {acc_plain:.3f}")
    lesson.value("words + adjacent pairs", f"test accuracy {acc_bi:.3f}")
    lesson.claim("with adjacent word pairs the two sentences of a pair differ in their features ({d:.0%} of "
                 "test pairs) and test accuracy rises from {a:.2f} to {b:.2f}", differ == 1.0 and acc_plain == 0.5
                 and acc_bi > 0.9, d=differ, a=acc_plain, b=acc_bi)


def exercise_2(lesson):
    """In step 7 keep every second negative instead of every fifth: (y_test == 0)[::2] in place of [::5].

    You should see: bag of words flags the same positives as negative (its false positives do not
    change, the positives are all kept), so with more real negatives among what it flags its precision
    for the negative class rises; its recall is measured on the negatives alone and moves only with
    which negatives happen to be kept — within sampling error of its recall on all the negatives:
    precision depends on how rare the class is, recall does not."""
    splits = _task(lesson)
    bow = BagOfWordsLogisticRegression().fit(*splits["train"])
    y = splits["test"][1]
    pred = bow.predict(splits["test"][0])
    res = {}
    for every in (5, 2, 1):
        keep = np.sort(np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)[::every]]))
        mt = classification_metrics(y[keep], pred[keep], 2)
        cm = np.array(mt["confusion_matrix"])
        res[every] = (mt["precision"][0], mt["recall"][0], int(cm[1, 0]), int((y[keep] == 0).sum()))
        lesson.value(f"one negative in {every} kept", f"{res[every][3]} negatives: precision {res[every][0]:.3f}, "
                                                       f"recall {res[every][1]:.3f}, positives called negative "
                                                       f"{res[every][2]}")
    (p5, r5, fp5, n5), (p2, r2, fp2, n2), (p1, r1, fp1, _) = res[5], res[2], res[1]
    se = {k: np.sqrt(r1 * (1 - r1) / n) for k, n in ((5, n5), (2, n2))}     # a sample of n of the negatives
    gap = max(abs(r5 - r1) / se[5], abs(r2 - r1) / se[2])
    lesson.claim("the positives called negative stay {f} in all three, and precision for the negative class rises "
                 "from {a:.2f} to {b:.2f} (every negative kept: {c:.2f}), while recall goes from {ra:.2f} to "
                 "{rb:.2f}, each within 2 standard errors ({g:.1f} at most) of its {rc:.2f} on all the negatives: "
                 "recall is measured on the negatives alone", fp5 == fp2 == fp1 and p5 + 0.05 < p2 < p1
                 and gap < 2, f=fp5, a=p5, b=p2, c=p1, ra=r5, rb=r2, g=gap, rc=r1)


def exercise_3(lesson):
    """Does pretraining help when labels are few? Repeat step 8's 8-pair runs (16 sentences, 100 steps,
    no dropout, no L2, the same 4 seeds) from a random encoder instead of the pretrained one.

    You should see: no gain — the random start does as well or better (0.80 against 0.69 with --small).
    Our encoder's 400 MLM steps on the generated corpus did not learn what this task needs (step 6's
    probe found the negation unreadable in its sentence vectors), so it transfers nothing to it; the
    transfer the article promises shows with a real pretrained model (step 6: all-MiniLM-L6-v2, a head
    alone). "No effect at this size" is the honest result."""
    splits = _task(lesson)
    held = set(splits["test"][0]) | set(splits["validation"][0])
    mlm, tok, _ = pretrain_small(400, seed=lesson.seed, exclude=held, log=print)
    n = 8
    ids, am = encode(tok, splits["train"][0][:2 * n])
    few = (ids, am, splits["train"][1][:2 * n])
    val = (*encode(tok, splits["validation"][0]), splits["validation"][1])
    seeds = lesson.seeds(4)
    res = {}
    for name, encoder in (("pretrained", mlm), ("random", None)):
        accs = []
        for seed in seeds:
            model, _ = classifier(tok, encoder, seed, dropout=0.0)
            finetune(model, few, 100, seed)
            accs.append(accuracy_and_loss(model, *val)[0])
        res[name] = np.array(accs)
        lesson.value(f"{name:<10} encoder", "validation accuracy " + " ".join(f"{a:.2f}" for a in accs))
    d = res["pretrained"] - res["random"]                  # paired by seed
    se = d.std(ddof=1) / np.sqrt(len(d))
    lesson.claim("with {n} labelled pairs the pretrained start gives validation accuracy {p:.2f}, the random "
                 "one {r:.2f}: seed by seed {d:+.2f} (standard error {se:.2f}) — pretraining on our small corpus "
                 "does not help here", d.mean() < se, n=n, p=res["pretrained"].mean(), r=res["random"].mean(),
                 d=d.mean(), se=se)
