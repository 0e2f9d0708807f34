"""Self-attention by hand, one formula at a time

    Q = W_Q · E(x),   K = W_K · E(x),   V = W_V · E(x)
    S = softmax(Q Kᵀ / √d_k)
    Z = S · V

We compute each line with NumPy on a six-word sentence, check the result against tinybert's
attention kernel and its MultiHeadSelfAttention layer, and then see what the √d_k is for.
(The article writes W·E(x) with column vectors; the code stores one token per row, so it computes
E(x) Wᵀ — the same numbers.)
"""
import math

import numpy as np

from _stepper import Lesson

import tinybert_kernels
from tinybert_kernels import attention_numpy
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.embedding import Embedding
from tinybert.nn.linear import Linear
from tinybert.nn.positional import PositionalEncoding
from tinybert.nn.softmax import Softmax, softmax

lesson = Lesson("03", "Self-attention by hand", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)
C = d_k = 16                                  # one head: d_k = C

# ------------------------------------------------------------------------------------------------
lesson.step("The input E(x) (lesson 02)", "E(x_i) = Embedding(x_i) + PositionalEncoding(i)",
            code=[Embedding.forward, PositionalEncoding.forward])
words = "the cat sat on the mat".split()
vocab = {w: i for i, w in enumerate(sorted(set(words)))}
ids = np.array([[vocab[w] for w in words]])
E = PositionalEncoding(32, C).forward(Embedding(len(vocab), C, rng=rng, std=1.0,
                                                 dtype=np.float64).forward(ids))   # [1, T, C]
T = E.shape[1]
lesson.show("E(x)", E)

# ------------------------------------------------------------------------------------------------
lesson.step("Queries, keys and values: three linear maps of the same input",
            "Q = W_Q · E(x),   K = W_K · E(x),   V = W_V · E(x)        [T, C] -> [T, d_k]",
            code=Linear.forward)
std = 1.0 / math.sqrt(C)                      # keeps Q, K, V entries of order 1
W_Q = Linear(C, d_k, rng=rng, std=std, dtype=np.float64, bias=False)
W_K = Linear(C, d_k, rng=rng, std=std, dtype=np.float64, bias=False)
W_V = Linear(C, d_k, rng=rng, std=std, dtype=np.float64, bias=False)
Q, K, V = W_Q.forward(E)[0], W_K.forward(E)[0], W_V.forward(E)[0]        # [T, d_k] each
lesson.show("W_Q", W_Q.weight.data)
lesson.show("Q", Q)
lesson.show("K", K)
lesson.show("V", V)
lesson.say("""Each token asks a question (its query), advertises what it holds (its key) and offers
content (its value). All three are computed from the same E(x) — hence *self*-attention.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Scores: every query against every key", "Q Kᵀ / √d_k        [T, d_k]·[d_k, T] -> [T, T]")
scores = Q @ K.T / math.sqrt(d_k)
lesson.matrix("QKᵀ/√d_k", scores, row_labels=words, col_labels=words)
lesson.say("Row i holds how well token i's query matches each key; nothing yet says the row sums to 1.")

# ------------------------------------------------------------------------------------------------
lesson.step("Softmax turns each row into weights",
            """S = softmax(QKᵀ / √d_k),   S_ij = exp(s_ij − max_j s_ij) / Σ_j exp(s_ij − max_j s_ij)""",
            code=softmax)
S = softmax(scores)
lesson.matrix("S", S, row_labels=words, col_labels=words)
lesson.show("row sums", S.sum(axis=1))
lesson.say("""Each row is a probability distribution over the six positions: where token i looks.
Subtracting the row maximum changes nothing mathematically and keeps exp() from overflowing.""")
fig, ax = plt.subplots(figsize=(5.6, 4.8))
im = ax.imshow(S, cmap="viridis", vmin=0)
ax.set_xticks(range(T), [f"{w}\n({j})" for j, w in enumerate(words)])
ax.set_yticks(range(T), [f"{w} ({i})" for i, w in enumerate(words)])
ax.set_xlabel("key position j (attended to)")
ax.set_ylabel("query position i")
ax.set_title("attention weights S = softmax(QKᵀ/√d_k)\n(random W_Q, W_K: untrained)")
for i in range(T):
    for j in range(T):
        ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=8,
                color="white" if S[i, j] < S.max() / 2 else "black")
fig.colorbar(im, ax=ax, label="weight S_ij")
lesson.savefig(fig, "attention_weights")

# ------------------------------------------------------------------------------------------------
lesson.step("The output: a weighted average of the values", "Z = S · V        [T, T]·[T, d_k] -> [T, d_k]")
Z = S @ V
lesson.show("Z", Z)
lesson.value("Z[1] = Σ_j S[1, j] V[j]", np.allclose(Z[1], (S[1][:, None] * V).sum(0)))
lesson.say("""Token i's new vector mixes the values of the tokens it attends to; a token far away is
as easy to reach as a neighbour — the "long-distance dependencies" of the article.""")

# ------------------------------------------------------------------------------------------------
lesson.step("The same numbers from tinybert's code",
            "Z = softmax(QKᵀ/√d_k + mask) V   (kernel), and the layer with one head",
            code=[attention_numpy.attention_forward, MultiHeadSelfAttention.forward])
z_kernel, lse = tinybert_kernels.attention_forward(Q[None, None], K[None, None], V[None, None],
                                                   backend="numpy")
lesson.value("max |Z − kernel Z|", float(np.abs(Z - z_kernel[0, 0]).max()))
layer = MultiHeadSelfAttention(C, num_heads=1, dtype=np.float64, backend="numpy").eval()
for lin, W in ((layer.query, W_Q), (layer.key, W_K), (layer.value, W_V)):
    lin.weight.data[:] = W.weight.data
    lin.bias.data[:] = 0
layer.out.weight.data[:] = np.eye(C)          # W_O = I so that the layer's output is Z itself
layer.out.bias.data[:] = 0
z_layer = layer.forward(E)[0]
lesson.value("max |Z − MultiHeadSelfAttention(E)|", float(np.abs(Z - z_layer).max()))
lesson.show("lse (kept for backward)", lse[0, 0])
lesson.say("""The kernel also returns each row's log-sum-exp, lse_i = log Σ_j exp(s_ij): the backward
pass rebuilds S from it instead of storing the T×T matrix (lesson 08).""")

# ------------------------------------------------------------------------------------------------
lesson.step("Padding: a key that must not be attended to",
            "s_ij = −∞ where key j is padding  ⇒  S_ij = 0", code=Softmax.forward)
keep = np.array([True] * 4 + [False] * 2)
S_masked = softmax(scores, keep)
lesson.matrix("S (last two keys masked)", S_masked, row_labels=words, col_labels=words)
lesson.say("""BERT pads short sentences to a common length and masks the padding keys; their
columns get exactly zero weight and the other weights renormalise.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Why divide by √d_k: without it, the softmax saturates",
            """q, k ~ N(0, 1)^d_k  ⇒  Var(q·k) = d_k,   Var(q·k/√d_k) = 1
∂S/∂s = diag(S) − S Sᵀ  → 0  when S is one-hot""",
            code=Softmax.backward)
dims = [4, 16, 64, 256] if lesson.small else [4, 16, 64, 256, 1024]
n_rows = 200 if lesson.small else 500
stats = {"raw": [], "scaled": []}
softmax_layer = Softmax()
for d in dims:
    q = rng.standard_normal((n_rows, d))
    k = rng.standard_normal((T * 2, d))
    for name, s in (("raw", q @ k.T), ("scaled", q @ k.T / math.sqrt(d))):
        p = softmax_layer.forward(s)
        g = softmax_layer.backward(rng.standard_normal(p.shape))          # dS for a random dP
        stats[name].append((s.std(), p.max(axis=1).mean(), np.abs(g).mean()))
print(f"  {'d_k':>6} │ {'std(QKᵀ)':>9} {'max S':>7} {'|dS|':>9} │ {'std(QKᵀ/√d)':>11} {'max S':>7} {'|dS|':>9}")
for d, r, s in zip(dims, stats["raw"], stats["scaled"]):
    print(f"  {d:>6} │ {r[0]:9.2f} {r[1]:7.3f} {r[2]:9.2e} │ {s[0]:11.2f} {s[1]:7.3f} {s[2]:9.2e}")
lesson.say(f"""Unscaled, the scores' spread grows as √d_k; at d_k = {dims[-1]} the softmax puts almost all
weight on one key (mean max weight {stats['raw'][-1][1]:.3f}) and the gradient through it is
{stats['scaled'][-1][2] / stats['raw'][-1][2]:.0f} times smaller than with scaling: learning stalls. Dividing
by √d_k keeps the scores at unit spread for every d_k.""")
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for name, style in (("raw", "o-"), ("scaled", "s-")):
    arr = np.array(stats[name])
    label = "QKᵀ" if name == "raw" else "QKᵀ/√d_k"
    axes[0].plot(dims, arr[:, 0], style, label=label)
    axes[1].plot(dims, arr[:, 1], style, label=label)
    axes[2].plot(dims, arr[:, 2], style, label=label)
for ax, yl, title in ((axes[0], "std of scores", "score spread"),
                      (axes[1], "mean of max_j S_ij", "how peaked the softmax is"),
                      (axes[2], "mean |dS| (random dP)", "gradient through the softmax")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("key dimension d_k")
    ax.set_ylabel(yl)
    ax.set_title(title)
    ax.legend()
axes[0].set_yscale("log")
axes[2].set_yscale("log")
axes[1].axhline(1 / (2 * T), color="gray", ls=":", lw=1)
axes[1].text(dims[0], 1 / (2 * T) + 0.02, "uniform", color="gray", fontsize=8)
fig.suptitle(f"why √d_k: {n_rows} random queries against {2 * T} random keys")
lesson.savefig(fig, "why_sqrt_dk")

lesson.end([
    "Q, K and V are three linear maps of the same E(x); S = softmax(QKᵀ/√d_k) is a T×T table of "
    "weights whose rows sum to 1 (03_attention_weights.png); Z = S·V mixes the values.",
    f"The hand computation equals tinybert's kernel and its MultiHeadSelfAttention layer "
    f"(max difference {max(float(np.abs(Z - z_kernel[0, 0]).max()), float(np.abs(Z - z_layer).max())):.1e}).",
    "Masked (padding) keys get exactly zero weight.",
    f"Without 1/√d_k the scores grow with d_k, the softmax becomes one-hot and its gradient "
    f"vanishes (at d_k={dims[-1]}: {stats['raw'][-1][2]:.1e} vs {stats['scaled'][-1][2]:.1e}; "
    "03_why_sqrt_dk.png).",
])
