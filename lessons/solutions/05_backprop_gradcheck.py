"""Solutions to lesson 05's exercises (run one with: lessons/05_backprop_gradcheck.py --exercise N)."""
import numpy as np

import tinybert
from tinybert.config import BertConfig
from tinybert.gradcheck import check_layer
from tinybert.losses import cross_entropy
from tinybert.nn.encoder import EncoderLayer
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.gelu import GELU, normal_cdf

SMALL = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=12,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)   # steps 4 and 5's tiny BERT


def _batch():
    """Steps 4 and 5's batch: 8 sequences of 10 ids, 30 % of positions masked (id 4 plays [MASK])."""
    rng = np.random.default_rng(0)
    batch = rng.integers(5, 30, (8, 10))
    labels = np.where(rng.random(batch.shape) < 0.3, batch, -100)
    return np.where(labels != -100, 4, batch), labels


def exercise_1(lesson):
    """Break a backward: in tinybert/nn/gelu.py, GELU.backward, drop the x·φ(x) term, and rerun.

    You should see the GELU row of step 2, and every row of a layer that contains a GELU
    (FeedForward, EncoderLayer, both whole models), jump far above 1e-7, so the step's claim fails;
    `make test` fails the same way. (Undo it afterwards: this solution puts the right backward back
    itself.) The models are checked on their logits with a random G, as check_layer does.
    """
    right = GELU.backward
    rng = np.random.default_rng(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=12, initializer_range=0.4,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = rng.integers(5, 30, (2, 5))                          # the models' input: ids, not checked themselves
    cases = {"GELU": (lambda: GELU(), rng.standard_normal((3, 7)) * 2),
             "FeedForward": (lambda: FeedForward(6, 12, "gelu", dtype=np.float64, std=0.4),
                             rng.standard_normal((2, 3, 6))),
             "EncoderLayer": (lambda: EncoderLayer(cfg, np.random.default_rng(7), np.random.default_rng(8),
                                                   dtype=np.float64, backend="numpy").eval(),
                              rng.standard_normal((2, 5, 8))),
             "BertForMaskedLM": (lambda: tinybert.BertForMaskedLM(cfg, seed=0, dtype=np.float64,
                                                                  attention_backend="numpy").eval(), ids),
             "BertForSeqCls": (lambda: tinybert.BertForSequenceClassification(
                 cfg, seed=0, dtype=np.float64, attention_backend="numpy").eval(), ids)}
    errors = {}
    for broken in (False, True):
        if broken:     # dGELU/dx = Φ(x) + x·φ(x); keep only Φ(x)
            GELU.backward = lambda self, dout: dout * normal_cdf(self.x, self.approximate)
        try:
            for name, (make, x) in cases.items():
                res = check_layer(make(), x, max_checks=4)     # key biases: gradient exactly 0, left out
                errors[name, broken] = max(e for n, e in res.items() if not n.endswith("key.bias"))
        finally:
            GELU.backward = right
    for name in cases:
        lesson.value(f"{name:<15}", f"right backward {errors[name, False]:.1e}   "
                                    f"without x·φ(x) {errors[name, True]:.1e}")
    lesson.claim("without the x·φ(x) term every layer and model that holds a GELU fails its check: worst relative errors "
                 "{bad} (all > 1e-2), against {good} with the right backward",
                 all(errors[n, True] > 1e-2 and errors[n, False] < 1e-7 for n in cases),
                 bad=", ".join(f"{n} {errors[n, True]:.0e}" for n in cases),
                 good=", ".join(f"{errors[n, False]:.0e}" for n in cases))


def _first_step(eps):
    """Step 4's first Adam step (η = 1e-2) with this ε: -> (|g| of the W_Q entry, how far it moved)."""
    model = tinybert.BertForMaskedLM(SMALL, seed=0, attention_backend="numpy")
    inputs, labels = _batch()
    _, dlogits = cross_entropy(model.forward(inputs), labels)
    model.zero_grad()
    model.backward(dlogits)
    p = model.bert.encoder.layers[0].attention.query.weight
    theta0, g0 = float(p.data[0, 0]), float(p.grad[0, 0])
    tinybert.Adam(model.parameters(), lr=1e-2, eps=eps).step()
    return abs(g0), abs(float(p.data[0, 0]) - theta0)


def exercise_2(lesson):
    """Give Adam a tiny gradient: in step 4 use eps = 1e-6 (pass it to Adam too).

    You should see the W_Q entry, whose |g| is about 14·1e-8, now move far less than η (|g| ≈ 0.14 ε):
    ε sets the gradient size below which Adam stops normalising.
    """
    lr, moved = 1e-2, {}
    for eps in (1e-8, 1e-6):
        g, moved[eps] = _first_step(eps)
        lesson.value(f"ε = {eps:.0e}", f"|g| = {g / eps:.2f} ε, the entry moves {moved[eps]:.2e} = "
                     f"{moved[eps] / lr:.2f} η   (formula η·|g|/(|g| + ε) = {lr * g / (g + eps):.2e})")
    lesson.claim("with ε = 1e-6 the W_Q entry (|g| = {g:.1e}) moves {a:.2f} η, against {b:.2f} η with ε = 1e-8: "
                 "a gradient well below ε gets a step proportional to it, not η",
                 moved[1e-6] < 0.2 * lr and moved[1e-8] > 0.8 * lr, g=g, a=moved[1e-6] / lr, b=moved[1e-8] / lr)


def exercise_3(lesson):
    """In step 5, raise plain SGD's step size from η = 0.5 to 1, 2 and 4 (120 steps each).

    You should see where a fixed step size stops working: every initialisation still ends below its
    starting loss at η = 0.5 and 1, but from η = 2 the loss blows up (to huge values or NaN) in some
    initialisations, and at η = 4 in all of them — while Adam's step, about η per parameter whatever the
    gradient, cannot blow up this way.
    """
    inputs, labels = _batch()
    seeds = lesson.seeds(3)
    ok = {}
    for lr in (0.5, 1.0, 2.0, 4.0):
        ends = []
        for seed in seeds:
            model = tinybert.BertForMaskedLM(SMALL, seed=seed, attention_backend="numpy")
            opt = tinybert.SGD(model.parameters(), lr=lr)
            with np.errstate(all="ignore"):            # a diverging run overflows: that is the result
                start = cross_entropy(model.forward(inputs), labels)[0]
                for _ in range(120):
                    loss, dl = cross_entropy(model.forward(inputs), labels)
                    model.zero_grad()
                    model.backward(dl)
                    opt.step()
            ends.append((start, loss))
        ok[lr] = sum(bool(np.isfinite(e) and e < s) for s, e in ends)
        lesson.value(f"SGD η = {lr}", f"loss after 120 steps {', '.join(f'{e:.3g}' for _, e in ends)}; "
                     f"{ok[lr]} of {len(seeds)} initialisations end below their start")
    lesson.claim("η = 0.5 and 1 fit in every initialisation ({a} and {b} of 3 end below the start); η = 2 in only "
                 "{c}; η = 4 in {d}: past some step size plain SGD diverges",
                 ok[0.5] == ok[1.0] == len(seeds) and ok[2.0] < len(seeds) and ok[4.0] == 0,
                 a=ok[0.5], b=ok[1.0], c=ok[2.0], d=ok[4.0])
