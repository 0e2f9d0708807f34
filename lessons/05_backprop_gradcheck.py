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

from _stepper import Lesson

import tinybert
from tinybert.config import BertConfig
from tinybert.gradcheck import check_gradients, check_layer, numerical_gradient, rel_error
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
from tinybert.nn.module import Module
from tinybert.nn.pooler import Pooler
from tinybert.nn.positional import PositionalEncoding
from tinybert.nn.softmax import Softmax

lesson = Lesson("05", "Backpropagation and gradient checking", __doc__)
plt = lesson.plt
F64 = np.float64
MAX_CHECKS = 8 if lesson.small else 20


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


class FixedMask(Module):
    """Replay the same dropout masks at every forward, so that the function being checked is fixed."""

    def __init__(self, layer, rng):
        self.inner, self.rng, self.state = layer, rng, rng.bit_generator.state

    def forward(self, *args, **kwargs):
        self.rng.bit_generator.state = self.state
        return self.inner.forward(*args, **kwargs)

    def backward(self, dout):
        return self.inner.backward(dout)


# ------------------------------------------------------------------------------------------------
lesson.step("One gradient entry by hand: Linear",
            """y = x Wᵀ + b;   backward: dx = dy W,   dW = dyᵀ x,   db = Σ dy
L = Σ G ∘ y;   dL/dW_00 ≈ (L(W_00 + h) − L(W_00 − h)) / 2h""",
            code=[Linear.backward, numerical_gradient])
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
lesson.value("relative error", rel_error(analytic, numeric))
lesson.say("""The random G matters: with G = 1 (sum of outputs) a backward that, say, swapped two
output columns would still pass.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Every layer, every input and parameter",
            """for each tensor θ: rel_error(backward's dL/dθ, 5-point numerical dL/dθ)   (float64)""",
            code=[check_layer, check_gradients])
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
layers["Dropout (fixed mask)"] = (FixedMask(Dropout(0.3, r), r), (rand(4, 6),), {})
r = np.random.default_rng(6)
layers["MultiHeadSelfAttention"] = (
    FixedMask(MultiHeadSelfAttention(8, 2, 0.1, rng=r, dtype=F64, backend="numpy", std=STD), r),
    (rand(2, 5, 8),), {"keep": keep})
layers["FeedForward"] = (FeedForward(6, 12, "gelu", dtype=F64, std=STD), (rand(2, 3, 6),), {})
r = np.random.default_rng(7)
layers["EncoderLayer"] = (FixedMask(EncoderLayer(cfg, r, np.random.default_rng(8), dtype=F64,
                                                 backend="numpy"), r), (rand(2, 5, 8),), {"keep": keep})
layers["Pooler"] = (Pooler(8, np.random.default_rng(9), std=STD, dtype=F64), (rand(2, 5, 8),), {})
r = np.random.default_rng(10)
layers["BertEmbeddings"] = (FixedMask(BertEmbeddings(cfg, r, np.random.default_rng(11), dtype=F64), r),
                            (ids, np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])), {})
worst, exact_zero = {}, {}
print(f"  {'layer':<24} {'tensors':>7}  {'worst rel. error':>16}")
for name, (layer, inputs, kwargs) in layers.items():
    res = check_layer(layer, *inputs, max_checks=MAX_CHECKS, **kwargs)
    # a gradient that is exactly zero (the key bias: softmax ignores a constant shift of a row) has
    # no relative error to speak of; report it apart instead of comparing rounding noise
    grads = dict(layer.named_parameters())
    zeros = [n for n in res if n in grads and np.abs(grads[n].grad).max() < 1e-13]
    for n in zeros:
        exact_zero[f"{name}.{n}"] = res.pop(n)
    worst[name] = max(res.values())
    print(f"  {name:<24} {len(res):>7}  {worst[name]:>16.2e}")
for n in exact_zero:
    print(f"  (exactly zero gradient, not a relative-error case: {n})")


# the loss and whole models
def model_check(model, labels_shape):
    rng = np.random.default_rng(0)
    x_ids = rng.integers(1, cfg.vocab_size, (2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = rng.integers(0, labels_shape[-1], labels_shape[:-1])
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
worst["cross_entropy"] = res["logits"]
print(f"  {'cross_entropy':<24} {1:>7}  {worst['cross_entropy']:>16.2e}")
for name, cls, shape in (("BertForMaskedLM + CE", tinybert.BertForMaskedLM, (2, 5, cfg.vocab_size)),
                         ("BertForSeqCls + CE", tinybert.BertForSequenceClassification, (2, 2))):
    res = model_check(cls(cfg, seed=0, dtype=F64, attention_backend="numpy"), shape)
    worst[name] = max(res.values())
    print(f"  {name:<24} {len(res):>7}  {worst[name]:>16.2e}")
lesson.say("""Everything sits around 1e-9 or below: float64 central differences agree with the
hand-written backward to about as many digits as they can resolve.""")

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
Softmax, right:    dS = P ∘ (dP − rowsum(dP ∘ P))
Softmax, wrong:    dS = P ∘ dP                          (forgot the normalisation)""",
            code=[LayerNorm.backward, Softmax.backward])


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
lesson.say(f"""A missing term gives errors of order {min(wrong['LayerNorm'][1], wrong['Softmax'][1]):.0e};
even a 1 % slip in GELU' shows up at {wrong['GELU (1 % off)'][1]:.0e} — far above the
{max(v[0] for v in wrong.values()):.0e} of a correct backward. Checking in float32 gives a
{e32:.0e} error for a *correct* backward, which is why checks run in float64.""")
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
θ ← θ − η · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)""",
            code=[tinybert.BertForMaskedLM.backward, tinybert.Adam.step])
small = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=12,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = tinybert.BertForMaskedLM(small, seed=0, attention_backend="numpy")
rng = np.random.default_rng(0)
batch = rng.integers(5, 30, (8, 10))
labels = np.where(rng.random(batch.shape) < 0.3, batch, -100)
inputs = np.where(labels != -100, 4, batch)                  # 4 plays [MASK]
opt = tinybert.Adam(model.parameters(), lr=1e-2)
loss0, dlogits = cross_entropy(model.forward(inputs), labels)
model.zero_grad()
model.backward(dlogits)
p = model.bert.encoder.layers[0].attention.query.weight
theta0, g0 = float(p.data[0, 0]), float(p.grad[0, 0])
opt.step()
b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-2
m, v = (1 - b1) * g0, (1 - b2) * g0 ** 2
by_hand = theta0 - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
lesson.value("θ (a W_Q entry) before", theta0)
lesson.value("g = dL/dθ", g0)
lesson.value("θ after, by hand", float(by_hand))
lesson.value("θ after, Adam.step", float(p.data[0, 0]))
loss1 = cross_entropy(model.forward(inputs), labels)[0]
lesson.value("loss before → after one step", f"{loss0:.4f} → {loss1:.4f}")
lesson.say("""At the first step m̂/√v̂ = g/|g| = ±1, so every parameter moves by exactly η: Adam
normalises each parameter's step by its own gradient scale.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Adam vs SGD with momentum (the article's FAQ names both)",
            """SGD + momentum:  b ← μb + g,   θ ← θ − η b
Adam: as above — a per-parameter step size from the running g²""",
            code=[tinybert.SGD.step, tinybert.Adam.step])
n_steps = 40 if lesson.small else 120
histories = {}
for name, make in (("Adam, η = 1e-2", lambda ps: tinybert.Adam(ps, lr=1e-2)),
                   ("SGD + momentum 0.9, η = 0.05", lambda ps: tinybert.SGD(ps, lr=0.05, momentum=0.9)),
                   ("SGD, η = 0.5", lambda ps: tinybert.SGD(ps, lr=0.5))):
    m_ = tinybert.BertForMaskedLM(small, seed=0, attention_backend="numpy")
    o_ = make(m_.parameters())
    hist = []
    for _ in range(n_steps):
        loss, dl = cross_entropy(m_.forward(inputs), labels)
        hist.append(loss)
        m_.zero_grad()
        m_.backward(dl)
        o_.step()
    histories[name] = hist
    lesson.value(f"{name:<28} loss", f"{hist[0]:.3f} → {hist[-1]:.3f} after {n_steps} steps")
fig, ax = plt.subplots(figsize=(7, 4))
for name, hist in histories.items():
    ax.plot(hist, label=name)
ax.set_xlabel("step")
ax.set_ylabel("MLM cross-entropy on one fixed batch")
ax.set_title("optimizers on the same tiny BERT and batch")
ax.legend()
lesson.savefig(fig, "optimizers")
final = {k: v[-1] for k, v in histories.items()}
lesson.say(f"""Both SGD runs have the same long-run step η/(1−μ) = 0.5; momentum, which averages
successive gradients, ends at {final['SGD + momentum 0.9, η = 0.05']:.3f} against plain SGD's
{final['SGD, η = 0.5']:.3f}. The gradients of a freshly initialised BERT differ in size by orders
of magnitude between parameters (the W_Q entry above had {g0:.0e}); Adam rescales every parameter
to a step of about η and reaches {final['Adam, η = 1e-2']:.3f} — one reason Transformers are
trained with Adam(W).""")

lesson.end([
    "A numerical gradient check compares a hand-written backward with central differences of "
    "L = Σ G∘f(x) for a random G, judged by relative error.",
    f"Every tinybert layer, the cross-entropy and both whole models pass at "
    f"≤ {max(worst.values()):.0e} (05_gradcheck_table.png).",
    f"A wrong backward stands out: LayerNorm without its mean terms {wrong['LayerNorm'][1]:.0e}, "
    f"softmax without normalisation {wrong['Softmax'][1]:.0e}, a 1 % slip in GELU' "
    f"{wrong['GELU (1 % off)'][1]:.0e}; float32 arithmetic alone gives {e32:.0e}, so checks run in "
    "float64 (05_wrong_backward.png).",
    f"One Adam step, by hand and by tinybert.Adam, moves a weight by η and lowers the loss "
    f"({loss0:.3f} → {loss1:.3f}); over {n_steps} steps Adam beats SGD with and without momentum "
    "(05_optimizers.png).",
])
