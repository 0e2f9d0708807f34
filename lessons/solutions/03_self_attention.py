"""Solutions to lesson 03's exercises (run one with: lessons/03_self_attention.py --exercise N).

As in the lesson, the article's d_k is the head size D (one head here, so D = d_k = C = 16).
"""
import math

import numpy as np

from tinybert.nn.embedding import Embedding
from tinybert.nn.linear import Linear
from tinybert.nn.positional import PositionalEncoding
from tinybert.nn.softmax import Softmax, softmax

WORDS = "the cat sat on the mat".split()


def _scores(seed):
    """The lesson's six-word sentence and one head (steps 1–3): A = QKᵀ/√d_k [T, T], and V [T, d_k]."""
    rng = np.random.default_rng(seed)
    C = d_k = 16
    vocab = {w: i for i, w in enumerate(sorted(set(WORDS)))}
    ids = np.array([[vocab[w] for w in WORDS]])
    E = PositionalEncoding(32, C).forward(Embedding(len(vocab), C, rng=rng, std=1.0, dtype=np.float64).forward(ids))
    Q, K, V = (Linear(C, d_k, rng=rng, std=1.0 / math.sqrt(C), dtype=np.float64, bias=False).forward(E)[0]
               for _ in range(3))
    return Q @ K.T / math.sqrt(d_k), V


def exercise_1(lesson):
    """Make the scores 4× larger in step 3, A = Q @ K.T / math.sqrt(d_k) * 4 (exactly what leaving out
    the 1/√d_k does here, where √d_k = √16 = 4).

    You should see a much sharper S in 03_attention_weights.png: the mean largest weight of a row rises
    from about 0.5 to about 0.8 and half the rows put more than 0.9 on one key — the saturation that
    step 8 measures, in a six-word sentence. Step 6's claim then fails, and should:
    the kernel and the layer still divide by √d_k only, so they no longer equal the hand computation.
    """
    A, V = _scores(lesson.seed)
    S, S4 = softmax(A), softmax(4 * A)
    lesson.show("largest weight per row, A", S.max(1))
    lesson.show("largest weight per row, 4A", S4.max(1))
    lesson.claim("with 4× the scores, {k} of the 6 rows put more than 0.9 on one key (before: {k0}); the mean "
                 "largest weight goes from {a:.2f} to {b:.2f}", S4.max(1).mean() > S.max(1).mean() + 0.2
                 and (S4.max(1) > 0.9).sum() >= 3 > (S.max(1) > 0.9).sum(),
                 k=int((S4.max(1) > 0.9).sum()), k0=int((S.max(1) > 0.9).sum()), a=S.max(1).mean(), b=S4.max(1).mean())
    diff = float(np.abs(S4 @ V - S @ V).max())
    lesson.claim("step 6's claim would fail: the outputs differ from the kernel's (which divides by √d_k only) "
                 "by up to {d:.2f}, far above its 1e-12", diff > 1e-3, d=diff)


def exercise_2(lesson):
    """Mask the first key instead of the last two: keep = np.array([False] + [True] * 5) in step 7.

    You should see column 0 of S become exactly 0 and the other five columns renormalise; the step's
    claim, which names the last two columns, then fails.
    """
    A, _ = _scores(lesson.seed)
    keep = np.array([False] + [True] * 5)
    S = softmax(A, keep)
    lesson.matrix("S (first key masked)", S, row_labels=WORDS, col_labels=WORDS)
    lesson.claim("column 0 is exactly 0 (largest {z}) and every row still sums to 1 (worst error {e:.1e}); the "
                 "last two columns now hold up to {m:.2f}, so step 7's claim (they are 0) would fail",
                 S[:, 0].max() == 0 and np.abs(S.sum(1) - 1).max() < 1e-12 and S[:, 4:].max() > 0,
                 z=float(S[:, 0].max()), e=float(np.abs(S.sum(1) - 1).max()), m=float(S[:, 4:].max()))


def exercise_3(lesson):
    """In step 8, divide the scores by d_k instead of √d_k (at d_k = 256): too much scaling.

    You should see the opposite failure: the scores shrink to a spread of about 1/√d_k, so every row of S
    is almost uniform (largest weight close to 1/12 for 12 keys: each query averages everything), and the
    typical query's gradient more than 10× smaller than with 1/√d_k (19× at seed 0) — though no row is
    blocked (‖dA_i‖ < 0.001 ‖dS_i‖, step 8's test): the softmax passes the gradient, the 1/d_k shrinks it.
    """
    rng = np.random.default_rng(lesson.seed)
    d, n_rows, n_keys = 256, 200, 12
    q, k = rng.standard_normal((n_rows, d)), rng.standard_normal((n_keys, d))
    dS = rng.standard_normal((n_rows, n_keys))
    res = {}
    for name, scale in (("1/√d_k", 1 / math.sqrt(d)), ("1/d_k", 1 / d)):
        sm = Softmax()
        S = sm.forward(q @ k.T * scale)
        dA = sm.backward(dS)
        res[name] = dict(std=float((q @ k.T * scale).std()), peak=float(S.max(1).mean()),
                         dq=float(np.median(np.linalg.norm(dA @ k * scale, axis=1))),
                         blocked=float(np.mean(np.linalg.norm(dA, axis=1) < 1e-3 * np.linalg.norm(dS, axis=1))))
        lesson.value(f"scaled by {name:<7}", f"std(A) {res[name]['std']:.3f}   mean largest weight "
                     f"{res[name]['peak']:.3f}   median ‖dQ_i‖ {res[name]['dq']:.2e}   "
                     f"blocked {res[name]['blocked']:.0%}")
    over, right = res["1/d_k"], res["1/√d_k"]
    lesson.claim("scaled by 1/d_k the scores' spread is {s:.3f} (≈ 1/√d_k = {r:.3f}), the mean largest weight "
                 "{p:.3f} against uniform 1/12 = {u:.3f}, and the typical query's gradient {f:.0f}× smaller than "
                 "with 1/√d_k, though {b:.0%} of the rows are blocked: attention that cannot choose, and "
                 "learns slowly",
                 over["std"] < 0.1 and over["peak"] < 1.5 / n_keys and right["dq"] > 10 * over["dq"]
                 and over["blocked"] == 0,
                 s=over["std"], r=1 / math.sqrt(d), p=over["peak"], u=1 / n_keys, f=right["dq"] / over["dq"],
                 b=over["blocked"])
