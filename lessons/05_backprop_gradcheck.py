"""Backpropagation, and how to know it is right

The article's training step 4: "back-propagate, and adjust the parameters with gradient descent or a
variant such as Adam to minimise the loss". tinybert writes every layer's backward by hand, so every
one must be proved. The proof is a numerical gradient check:

    L(x) = Σ G ∘ f(x)     with a random upstream gradient G
    analytic:  dL/dx = f.backward(G)
    numerical: dL/dx_i ≈ (L(x + h e_i) − L(x − h e_i)) / 2h      (tinybert uses the 5-point stencil)
    rel_error = max |a − n| / max(|a| + |n|, 1e-8)

We check every layer, see what a wrong backward looks like, and end with one Adam step.
"""
import numpy as np

from _stepper import Code, Lesson, spread

import tinybert
from tinybert.config import BertConfig
from tinybert.gradcheck import FixedRandomness, check_gradients, check_layer, numerical_gradient, rel_error
from tinybert.losses import cross_entropy
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.dropout import Dropout
from tinybert.nn.embedding import Embedding
from tinybert.nn.encoder import EncoderLayer
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.gelu import GELU
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.linear import Linear
from tinybert.nn.pooler import Pooler
from tinybert.nn.positional import PositionalEncoding
from tinybert.nn.softmax import Softmax

# the function that holds Adam's formula: Adam.step, or adam_update where the optimiser calls a fused kernel
ADAM_UPDATE = getattr(tinybert.optim, "adam_update", tinybert.Adam.step)
lesson = Lesson("05", "Backpropagation and gradient checking", __doc__)
plt = lesson.plt
F64 = np.float64
MAX_CHECKS = 8 if lesson.small else 20


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# ------------------------------------------------------------------------------------------------
lesson.step("One gradient entry by hand: Linear",
            """y = x Wᵀ + b;   backward: dx = dy W,   dW = dyᵀ x,   db = Σ dy
L = Σ G ∘ y;   dL/dW_00 ≈ (L(W_00 + h) − L(W_00 − h)) / 2h""",
            code=[Code(Linear.backward, "x2 = self.x.reshape", "return matmul(d2"),
                  Code(numerical_gradient, "near = loss_at", "gflat[i] = (8")],
            article="pretrain.4")
lin = Linear(5, 3, rng=np.random.default_rng(1), std=1.0, dtype=F64)
x = rand(4, 5)
G = rand(4, 3, seed=2)
lin.zero_grad()
lin.forward(x)
lin.backward(G)
analytic = lin.weight.grad[0, 0]
h = 1e-5
w = lin.weight.data
w[0, 0] += h
L_plus = float(np.sum(G * lin.forward(x)))
w[0, 0] -= 2 * h
L_minus = float(np.sum(G * lin.forward(x)))
w[0, 0] += h
numeric = (L_plus - L_minus) / (2 * h)
lesson.value("L(W_00 + h)", f"{L_plus:.12f}", f"h = {h}")
lesson.value("L(W_00 − h)", f"{L_minus:.12f}")
lesson.value("numerical dL/dW_00", numeric)
lesson.value("analytic  (dyᵀx)_00", float(analytic))
e1 = rel_error(analytic, numeric)
lesson.claim("the hand-written backward and the difference quotient agree: relative error {e:.1e}", e1 < 1e-7, e=e1)


def check_dW(dW, G_):
    """relative error of a proposed dL/dW against the numerical one, for L = Σ G_ ∘ (x Wᵀ + b)"""
    num = numerical_gradient(lambda: float(np.sum(G_ * lin.forward(x))), lin.weight.data)
    return rel_error(dW, num)


swapped = lambda G_: (G_.T @ x)[[1, 0, 2]]                   # a wrong dW: rows 0 and 1 swapped
e_ones, e_rand = check_dW(swapped(np.ones_like(G)), np.ones_like(G)), check_dW(swapped(G), G)
lesson.claim("the random G matters: a wrong backward that swaps two rows of dW passes a check with "
             "G = 1 (error {a:.0e}) and fails one with a random G (error {b:.0e})", e_ones < 1e-7 and e_rand > 1e-2,
             a=e_ones, b=e_rand)

# ------------------------------------------------------------------------------------------------
lesson.step("Every layer, every input and parameter",
            """for each tensor θ: rel_error(backward's dL/dθ, 5-point numerical dL/dθ)   (float64)""",
            code=[Code(check_layer, "def forward", "return check_gradients"), Code(rel_error, "return float(np.max")],
            article="pretrain.4")
STD = 0.4   # weights large enough that attention is not uniform and every gradient is visible
cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=12, initializer_range=STD,
                 hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1)
keep = np.array([[True] * 5, [True, True, True, False, False]])
ids = np.array([[3, 7, 7, 1, 9], [4, 2, 8, 0, 0]])
layers = {}
layers["Linear"] = (Linear(5, 3, dtype=F64), (rand(2, 4, 5),), {})
layers["Embedding"] = (Embedding(10, 4, dtype=F64), (ids,), {})
layers["PositionalEncoding"] = (PositionalEncoding(12, 6), (rand(2, 5, 6),), {})
ln = LayerNorm(6, dtype=F64)
ln.weight.data[:], ln.bias.data[:] = rand(6, seed=2), rand(6, seed=3)
layers["LayerNorm"] = (ln, (rand(3, 4, 6, seed=1),), {})
layers["GELU"] = (GELU(), (rand(3, 7, scale=2.0),), {})
layers["Softmax (masked)"] = (Softmax(), (rand(2, 3, 5),), {"mask": keep[1]})
r = np.random.default_rng(5)
layers["Dropout (fixed mask)"] = (FixedRandomness(Dropout(0.3, r), r), (rand(4, 6),), {})
r = np.random.default_rng(6)
layers["MultiHeadSelfAttention"] = (
    FixedRandomness(MultiHeadSelfAttention(8, 2, 0.1, rng=r, dtype=F64, backend="numpy", std=STD), r),
    (rand(2, 5, 8),), {"keep": keep})
layers["FeedForward"] = (FeedForward(6, 12, "gelu", dtype=F64, std=STD), (rand(2, 3, 6),), {})
r = np.random.default_rng(7)
layers["EncoderLayer"] = (FixedRandomness(EncoderLayer(cfg, r, np.random.default_rng(8), dtype=F64,
                                                 backend="numpy"), r), (rand(2, 5, 8),), {"keep": keep})
layers["Pooler"] = (Pooler(8, np.random.default_rng(9), std=STD, dtype=F64), (rand(2, 5, 8),), {})
r = np.random.default_rng(10)
layers["BertEmbeddings"] = (FixedRandomness(BertEmbeddings(cfg, r, np.random.default_rng(11), dtype=F64), r),
                            (ids, np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])), {})
worst, exact_zero, n_tensors = {}, {}, {}
print(f"  {'layer':<24} {'tensors':>7}  {'worst rel. error':>16}")
for name, (layer, inputs, kwargs) in layers.items():
    res = check_layer(layer, *inputs, max_checks=MAX_CHECKS, **kwargs)
    # a gradient that is exactly zero (the key bias: softmax ignores a constant shift of a row) has
    # no relative error to speak of; report it apart instead of comparing rounding noise
    grads = dict(layer.named_parameters())
    zeros = [n for n in res if n in grads and np.abs(grads[n].grad).max() < 1e-13]
    for n in zeros:
        exact_zero[f"{name}.{n}"] = res.pop(n)
    worst[name], n_tensors[name] = max(res.values()), len(res)
    print(f"  {name:<24} {len(res):>7}  {worst[name]:>16.2e}")
for n in exact_zero:
    print(f"  (exactly zero gradient, not a relative-error case: {n})")


# the loss and whole models
def model_check(model, labels_shape):
    rng = np.random.default_rng(0)
    x_ids = rng.integers(1, cfg.vocab_size, (2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = rng.integers(0, labels_shape[-1], labels_shape[:-1])
    if labels.shape == mask.shape:
        labels[mask == 0] = -100            # as in every MLM batch: no prediction is asked at padding
    model.eval()

    def forward():
        return np.array(cross_entropy(model.forward(x_ids, attention_mask=mask), labels)[0])

    def backward(g):
        model.zero_grad()
        _, dlogits = cross_entropy(model.forward(x_ids, attention_mask=mask), labels)
        model.backward(dlogits * float(g))
        return {n: p.grad.copy() for n, p in model.named_parameters()}

    tensors = {n: p.data for n, p in model.named_parameters()}
    res = check_gradients(forward, backward, tensors, {n: (lambda r, n=n: r[n]) for n in tensors},
                          max_checks=max(2, MAX_CHECKS // 3))
    return {n: e for n, e in res.items() if not n.endswith("key.bias")}


logits = rand(6, 11)
lab = np.array([1, 4, -100, 0, 10, 3])
res = check_gradients(lambda: np.array(cross_entropy(logits, lab)[0]),
                      lambda g: cross_entropy(logits, lab)[1] * float(g),
                      {"logits": logits}, {"logits": lambda r: r})
worst["cross_entropy"], n_tensors["cross_entropy"] = res["logits"], 1
print(f"  {'cross_entropy':<24} {1:>7}  {worst['cross_entropy']:>16.2e}")
for name, cls, shape in (("BertForMaskedLM + CE", tinybert.BertForMaskedLM, (2, 5, cfg.vocab_size)),
                         ("BertForSeqCls + CE", tinybert.BertForSequenceClassification, (2, 2))):
    res = model_check(cls(cfg, seed=0, dtype=F64, attention_backend="numpy"), shape)
    worst[name], n_tensors[name] = max(res.values()), len(res)
    print(f"  {name:<24} {len(res):>7}  {worst[name]:>16.2e}")
lesson.claim("every layer, the loss and both whole models pass: the worst relative error over all "
             "{n} tensors checked (inputs and parameters, summed over the {r} rows of the table) is {w:.0e}, "
             "far below the 1e-7 bar for right ({z} key-bias gradients, exactly 0 because softmax ignores a "
             "constant shift of a row, are listed apart)", max(worst.values()) < 1e-7,
             n=sum(n_tensors.values()), r=len(worst), w=max(worst.values()), z=len(exact_zero))

fig, ax = plt.subplots(figsize=(9, 4.8))
names = list(worst)
ax.barh(names, [max(worst[n], 1e-16) for n in names], color="tab:green")
ax.set_xscale("log")
ax.axvline(1e-7, color="tab:orange", ls="--", label="1e-7: right")
ax.axvline(1e-2, color="tab:red", ls="--", label="1e-2: wrong")
ax.set_xlim(1e-16, 1)
ax.invert_yaxis()
ax.set_xlabel("worst relative error, analytic vs numerical (log scale)")
ax.set_ylabel("layer")
ax.set_title("gradient check of every layer, the loss and whole models (float64)")
ax.legend(loc="lower right")
lesson.savefig(fig, "gradcheck_table")

# ------------------------------------------------------------------------------------------------
lesson.step("What a wrong backward looks like",
            """LayerNorm, right:  dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂))
LayerNorm, wrong:  dx = rstd · dx̂                    (forgot that μ and σ depend on x)
Softmax, right:    dA = S ∘ (dS − rowsum(dS ∘ S))     (S = softmax(A), notation of lesson 03)
Softmax, wrong:    dA = S ∘ dS                          (forgot the normalisation)""",
            code=[LayerNorm.backward, Softmax.backward], article="pretrain.4", letters=True)


class LayerNormForgotMean(LayerNorm):
    def backward(self, dout):
        self.weight.accumulate((dout * self.xhat).reshape(-1, dout.shape[-1]).sum(axis=0))
        self.bias.accumulate(dout.reshape(-1, dout.shape[-1]).sum(axis=0))
        return self.rstd * (dout * self.weight.data)


class SoftmaxForgotNormalisation(Softmax):
    def backward(self, dp):
        return self.p * dp


class GELUSlightlyWrong(GELU):
    def backward(self, dout):                       # Φ(x) + x φ(x), with φ off by 1 %
        return dout * (self.cdf + 1.01 * self.x * np.exp(-0.5 * self.x ** 2) / np.sqrt(2 * np.pi))


cases = {
    "LayerNorm": (LayerNorm(6, dtype=F64), LayerNormForgotMean(6, dtype=F64), rand(3, 6, seed=1), {}),
    "Softmax": (Softmax(), SoftmaxForgotNormalisation(), rand(3, 5), {}),
    "GELU (1 % off)": (GELU(), GELUSlightlyWrong(), rand(4, 5, scale=2.0), {}),
}
wrong = {}
for name, (good, bad, xin, kw) in cases.items():
    e_good = check_layer(good, xin, **kw)["input"]
    e_bad = check_layer(bad, xin, **kw)["input"]
    wrong[name] = (e_good, e_bad)
    lesson.value(f"{name:<15} right backward", f"{e_good:.1e}    wrong backward: {e_bad:.1e}")
# float32: the right code, but arithmetic too coarse for finite differences
ln32 = LayerNorm(6, dtype=np.float32)
x32 = rand(3, 6, seed=1).astype(np.float32)
G32 = rand(3, 6, seed=4).astype(np.float32)
ln32.forward(x32)
a32 = ln32.backward(G32)
n32 = np.zeros_like(x32, dtype=F64)
for i in range(x32.size):
    xp_, xm_ = x32.copy(), x32.copy()
    xp_.flat[i] += np.float32(1e-3)
    xm_.flat[i] -= np.float32(1e-3)
    n32.flat[i] = (np.sum(G32 * ln32.forward(xp_)) - np.sum(G32 * ln32.forward(xm_))) / 2e-3
e32 = rel_error(a32, n32)
lesson.value("LayerNorm in float32  right backward", f"{e32:.1e}", "looks wrong, is only imprecise")
right_max = max(v[0] for v in wrong.values())
lesson.claim("a missing term gives errors of {m:.0e} or more; even a 1 % slip in GELU' shows up at {g:.0e} — "
             "far above the {r:.0e} of a correct backward",
             min(wrong['LayerNorm'][1], wrong['Softmax'][1]) > 1e-2 and wrong['GELU (1 % off)'][1] > 1e-4
             and right_max < 1e-7, m=min(wrong['LayerNorm'][1], wrong['Softmax'][1]),
             g=wrong['GELU (1 % off)'][1], r=right_max)
lesson.claim("checked in float32, the *correct* LayerNorm backward shows an error of {e:.0e}, above the 1e-7 "
             "bar: float32 differences cannot resolve the gradient, which is why checks run in float64",
             e32 > 1e-7, e=e32)
fig, ax = plt.subplots(figsize=(8, 4))
labels_ = list(wrong) + ["LayerNorm in float32"]
right_vals = [wrong[n][0] for n in wrong] + [e32]
wrong_vals = [wrong[n][1] for n in wrong] + [np.nan]
pos = np.arange(len(labels_))
ax.bar(pos - 0.2, right_vals, 0.4, label="right backward", color="tab:green")
ax.bar(pos + 0.2, wrong_vals, 0.4, label="wrong backward", color="tab:red")
ax.set_xticks(pos, labels_)
ax.set_yscale("log")
ax.axhline(1e-7, color="gray", ls="--", lw=1, label="1e-7: the bar for right")
ax.set_ylabel("relative error (log scale)")
ax.set_xlabel("layer")
ax.set_title("a wrong backward stands out by many orders of magnitude")
ax.legend()
lesson.savefig(fig, "wrong_backward")

# ------------------------------------------------------------------------------------------------
lesson.step("From gradients to an update: one Adam step",
            """g = dL/dθ (backprop);  g ← g + λθ (L2, if any)
m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²
θ ← θ − η · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
at t = 1:  m/(1−β₁) = g,  √(v/(1−β₂)) = |g|   ⇒   |Δθ| = η · |g| / (|g| + ε)""",
            code=[Code(tinybert.BertForMaskedLM.backward), Code(ADAM_UPDATE, "m *= b1", "(lr / bc1) * (m / denom)")], article="pretrain.4")
small = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=12,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = tinybert.BertForMaskedLM(small, seed=0, attention_backend="numpy")
rng = np.random.default_rng(0)
batch = rng.integers(5, 30, (8, 10))
labels = np.where(rng.random(batch.shape) < 0.3, batch, -100)
inputs = np.where(labels != -100, 4, batch)                  # 4 plays [MASK]
b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-2
opt = tinybert.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps)
loss0, dlogits = cross_entropy(model.forward(inputs), labels)
model.zero_grad()
model.backward(dlogits)
before = {n: p.data.astype(F64) for n, p in model.named_parameters()}
grads = {n: p.grad.astype(F64) for n, p in model.named_parameters()}
p = model.bert.encoder.layers[0].attention.query.weight
theta0, g0 = float(p.data[0, 0]), float(p.grad[0, 0])
opt.step()
m, v = (1 - b1) * g0, (1 - b2) * g0 ** 2
by_hand = theta0 - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
lesson.value("θ (a W_Q entry) before", theta0)
lesson.value("g = dL/dθ", g0, f"|g| = {abs(g0) / eps:.0f} ε")
lesson.value("θ after, by hand", float(by_hand))
lesson.value("θ after, Adam.step", float(p.data[0, 0]))
lesson.claim("Adam.step does what the formula says: by hand {h:.7f}, Adam.step {a:.7f}",
             abs(by_hand - float(p.data[0, 0])) < 1e-6 * lr, h=float(by_hand), a=float(p.data[0, 0]))
delta = np.concatenate([np.abs(q.data.astype(F64) - before[n]).ravel() for n, q in model.named_parameters()])
g_all = np.concatenate([np.abs(grads[n]).ravel() for n, _ in model.named_parameters()])
predicted = lr * g_all / (g_all + eps)
big, zero = g_all > 100 * eps, g_all == 0
zero_rows = {n: np.flatnonzero(np.all(g == 0, axis=1)).tolist() for n, g in grads.items()
             if g.ndim == 2 and np.all(g == 0, axis=1).any()}
lesson.value("embedding rows with a gradient of exactly 0", zero_rows)
lesson.claim("at the first step every entry moves by η·|g|/(|g| + ε) (worst deviation {e:.1e} over {n:,} "
             "entries, float32 rounding): by η = {lr} within 1 % for the {fb:.0%} of entries whose |g| > 100 ε, "
             "not at all for the {fz:.1%} whose gradient is exactly 0 (embedding rows this batch never uses), "
             "and by {d:.5f} for this W_Q entry, whose |g| is only {r:.0f} ε",
             np.abs(delta - predicted).max() < 1e-6 and np.all(np.abs(delta[big] - lr) < 0.01 * lr)
             and np.all(delta[zero] == 0) and abs(abs(by_hand - theta0) - lr * abs(g0) / (abs(g0) + eps)) < 1e-9,
             e=float(np.abs(delta - predicted).max()), n=delta.size, lr=lr, fb=big.mean(), fz=zero.mean(),
             d=abs(by_hand - theta0), r=abs(g0) / eps)
loss1 = cross_entropy(model.forward(inputs), labels)[0]
lesson.claim("one step lowers the loss on this batch: {a:.4f} → {b:.4f}", loss1 < loss0, a=loss0, b=loss1)
lesson.say("""Adam divides each parameter's step by its own gradient scale: a weight whose gradient is
a million times smaller than its neighbour's still moves by about η — as long as that gradient is
well above ε.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Adam vs SGD, with and without momentum",
            """SGD:             θ ← θ − η g
SGD + momentum:  b ← μb + g,   θ ← θ − η b          (long-run step η/(1−μ) for a steady g)
Adam:            as above — a per-parameter step size from the running g²""",
            code=[Code(tinybert.SGD.step), Code(ADAM_UPDATE, "m *= b1", "(lr / bc1) * (m / denom)")], article="pretrain.4")
lesson.say("""The article's training step 4 names gradient descent "or a variant such as Adam"; its FAQ
names momentum SGD against over-fitting (lesson 07 measures that). Here: how fast each one fits the
same batch, from the same starting weights, for several starting weights — each at three step sizes,
so that no optimiser is judged at a step size that happens not to suit it.""")
n_steps = 120
seeds = lesson.seeds(3)
makers = {"Adam": lambda ps, lr: tinybert.Adam(ps, lr=lr),
          "SGD + momentum 0.9": lambda ps, lr: tinybert.SGD(ps, lr=lr, momentum=0.9),
          "SGD": lambda ps, lr: tinybert.SGD(ps, lr=lr)}
sweep = {"Adam": (1e-2, 3e-2, 1e-1), "SGD + momentum 0.9": (0.025, 0.05, 0.1), "SGD": (0.25, 0.5, 1.0)}
optimizers = {"Adam, η = 1e-2": ("Adam", 1e-2), "SGD + momentum 0.9, η = 0.05": ("SGD + momentum 0.9", 0.05),
              "SGD, η = 0.5": ("SGD", 0.5)}                    # the three the figure draws
histories = {}                                                # (optimizer, η) -> one loss curve per seed
for seed in seeds:
    for name, lr_ in ((n, l) for n, lrs in sweep.items() for l in lrs):
        m_ = tinybert.BertForMaskedLM(small, seed=seed, attention_backend="numpy")
        o_ = makers[name](m_.parameters(), lr_)
        hist = []
        for _ in range(n_steps):
            loss, dl = cross_entropy(m_.forward(inputs), labels)
            hist.append(loss)
            m_.zero_grad()
            m_.backward(dl)
            o_.step()
        histories.setdefault((name, lr_), []).append(hist)
EARLY = 40
adam, mom, sgd = (np.array(histories[k]) for k in optimizers.values())       # [seeds, steps] each
print(f"  loss on the batch (mean ± sd over initialisations {seeds}); it starts at {adam[0, 0]:.3f}")
for name, h in zip(optimizers, (adam, mom, sgd)):
    lesson.value(f"{name:<28}", f"step {EARLY} {spread(h[:, EARLY - 1]):.3f},  step {n_steps} "
                 f"{spread(h[:, -1]):.3f},  mean over all steps {spread(h.mean(1)):.3f}")
best = {n: min(lrs, key=lambda l, n=n: np.mean(histories[n, l])) for n, lrs in sweep.items()}
print("  each step size tried: its loss averaged over all steps and initialisations")
for name, lrs in sweep.items():
    lesson.value(f"{name:<18}", ",  ".join(f"η {l:g} → {np.mean(histories[name, l]):.3f}" for l in lrs),
                 f"best η = {best[name]:g}")
fig, ax = plt.subplots(figsize=(7, 4))
for name, key in optimizers.items():
    ax.plot(np.mean(histories[key], axis=0), label=name)
ax.plot(np.mean(histories["Adam", best["Adam"]], axis=0), "--", color="tab:blue",
        label=f"Adam at its best η = {best['Adam']:g}")
ax.set_xlabel("step")
ax.set_ylabel("MLM cross-entropy on one fixed batch")
ax.set_yscale("log")
ax.set_title(f"optimizers on the same tiny BERT and batch (mean of {len(seeds)} initialisations)")
ax.legend()
lesson.savefig(fig, "optimizers")
lesson.claim("both SGD runs have the same long-run step η/(1−μ) = 0.5, and momentum, which averages "
             "successive gradients, fits faster: its loss averaged over all {n} steps (the area under its curve) "
             "is below plain SGD's in every initialisation ({m:.3f} against {s:.3f}), and it is lower at {f:.0%} "
             "of the steps", np.all(mom.mean(1) < sgd.mean(1)), n=n_steps, m=spread(mom.mean(1)),
             s=spread(sgd.mean(1)), f=float((mom < sgd).mean()))
i_, k_ = np.unravel_index(np.argmax(mom[:, 10:] - sgd[:, 10:]), mom[:, 10:].shape)   # after the first 10 steps
lesson.claim("but not at every step: at step {k} initialisation {i}'s momentum run spikes to {m:.3f}, above its "
             "starting loss {m0:.3f}, while plain SGD is at {s:.3f} (momentum behind at {nb} of the {n}×{ns} "
             "step-initialisation pairs) — a comparison at one chosen step, such as step {e} where momentum leads "
             "in every initialisation, can say more than the run does",
             mom[i_, k_ + 10] > mom[i_, 0] > sgd[i_, k_ + 10] and np.all(mom[:, EARLY - 1] < sgd[:, EARLY - 1]),
             k=k_ + 11, i=seeds[i_], m=mom[i_, k_ + 10], m0=mom[i_, 0], s=sgd[i_, k_ + 10],
             nb=int((mom >= sgd).sum()), n=n_steps, ns=len(seeds), e=EARLY)
g_scale = [float(np.median(np.abs(g[g != 0]))) for n, g in grads.items()
           if np.any(g != 0) and not n.endswith("key.bias")]        # the key bias's true gradient is 0
a_, m_b, s_b = (np.array(histories[n, best[n]]) for n in sweep)       # each optimiser at its best η
lesson.claim("the typical gradient differs by a factor of {r:,.0f} between the tensors of a freshly "
             "initialised BERT (median |g| per tensor, largest over smallest, key biases left out); Adam rescales "
             "every parameter to a step of about η, and with each optimiser at the best of its three step sizes "
             "(Adam {ea:g}, momentum {em:g}, SGD {es:g}) Adam's loss is the lowest of the three both averaged "
             "over the {n} steps ({am:.3f} against {mm:.3f} and {sm:.3f}) and at the last step ({a:.4f}), in "
             "every initialisation — on this tiny batch; one reason Transformers are trained with Adam(W)",
             max(g_scale) / min(g_scale) > 100 and np.all(a_.mean(1) < np.minimum(m_b.mean(1), s_b.mean(1)))
             and np.all(a_[:, -1] < np.minimum(m_b[:, -1], s_b[:, -1])),
             r=max(g_scale) / min(g_scale), ea=best["Adam"], em=best["SGD + momentum 0.9"], es=best["SGD"],
             n=n_steps, am=spread(a_.mean(1)), mm=spread(m_b.mean(1)), sm=spread(s_b.mean(1)),
             a=spread(a_[:, -1]))

lesson.end([
    "A numerical gradient check compares a hand-written backward with central differences of "
    "L = Σ G∘f(x) for a random G, judged by relative error; with G = 1 a wrong backward can pass.",
    f"Every tinybert layer, the cross-entropy and both whole models pass at "
    f"≤ {max(worst.values()):.0e} (05_gradcheck_table.png).",
    f"A wrong backward stands out: LayerNorm without its mean terms {wrong['LayerNorm'][1]:.0e}, "
    f"softmax without normalisation {wrong['Softmax'][1]:.0e}, a 1 % slip in GELU' "
    f"{wrong['GELU (1 % off)'][1]:.0e}; float32 arithmetic alone gives {e32:.0e}, so checks run in "
    "float64 (05_wrong_backward.png).",
    f"Adam's first step moves each weight by η·|g|/(|g| + ε): η when |g| ≫ ε, {abs(by_hand - theta0):.5f} for "
    f"a W_Q entry whose |g| is {abs(g0) / eps:.0f} ε, nothing when g = 0; the loss falls ({loss0:.3f} → "
    f"{loss1:.3f}). Over {n_steps} steps, each optimiser at the best of three step sizes, Adam fits the batch "
    "furthest; momentum SGD beats plain SGD on average over the run but not at every step (05_optimizers.png).",
], try_next=[
    ("Break a backward: in tinybert/nn/gelu.py, GELU.backward, drop the x·φ(x) term, and rerun.",
     "the GELU row of step 2, and every row of a layer that contains a GELU (FeedForward, EncoderLayer, "
     "both models), jumps far above 1e-7 (above 1e-2) and the step's claim fails; `make test` fails the "
     "same way. (Undo it afterwards.)"),
    ("Give Adam a tiny gradient: in step 4 use eps = 1e-6 (pass it to Adam too).",
     "the W_Q entry, whose |g| is about 14·1e-8, now moves far less than η (under 0.2 η, against 0.9 η "
     "with ε = 1e-8; |g| ≈ 0.14 ε): ε sets the gradient size below which Adam stops normalising."),
    ("In step 5, raise plain SGD's step size from η = 0.5 to 1, 2 and 4 (120 steps each).",
     "where a fixed step size stops working: every initialisation still ends below its starting loss at "
     "η = 0.5 and 1, but from η = 2 the loss blows up (to huge values or NaN) in some initialisations, "
     "and at η = 4 in all of them — while Adam's step, about η per parameter whatever the gradient, "
     "cannot blow up this way."),
])
