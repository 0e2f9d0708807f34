"""One Transformer encoder layer, and what its parameters cost

The article's encoder layer is "multi-head self-attention, a position-wise feed-forward network
(FFN) and residual connections". BERT puts a LayerNorm after each residual sum (post-norm):

    a = LayerNorm(x + MultiHead(x))          MultiHead(x) = Concat(Z_1, …, Z_H) W_Oᵀ + b_O
    y = LayerNorm(a + FFN(a))                FFN(a) = GELU(a W_1ᵀ + b_1) W_2ᵀ + b_2

We run each piece by hand on a small layer, check the result against tinybert's EncoderLayer, count
its parameters, scale the count up to BERT-base, and end with the article's "parameters vs
capacity": bigger models can memorise more.
"""
import math
import time

import numpy as np

from _stepper import Code, Lesson, spread
from _04_generalisation import (N_TRAIN, TARGET, SmallCorpus, masked_loss, multiply_adds_per_token,
                                train_to_loss)

import tinybert
from tinybert.config import BertConfig
from tinybert.losses import cross_entropy
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.encoder import EncoderLayer
from tinybert.nn.feedforward import FeedForward
from tinybert.nn.gelu import GELU, ReLU
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.pooler import Pooler
from tinybert.nn.softmax import softmax

# the function that holds Adam's formula: Adam.step, or adam_update where the optimiser calls a fused kernel
ADAM_UPDATE = getattr(tinybert.optim, "adam_update", tinybert.Adam.step)
lesson = Lesson("04", "One encoder layer", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)
B, T, C, H = 1, 6, 16, 4
d = C // H
cfg = BertConfig(vocab_size=50, hidden_size=C, num_hidden_layers=1, num_attention_heads=H,
                 intermediate_size=4 * C, max_position_embeddings=32, initializer_range=0.3,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
layer = EncoderLayer(cfg, rng, np.random.default_rng(lesson.seed), dtype=np.float64,
                     backend="numpy").eval()
x = rng.standard_normal((B, T, C))

# ------------------------------------------------------------------------------------------------
lesson.step("Multi-head: split C into H heads of D = C/H (the article's d_k)",
            """Q = x W_Qᵀ + b_Q   [B, T, C]  ->  split  ->  [B, H, T, D]     (same for K, V; D = d_k = C/H)""",
            code=[MultiHeadSelfAttention._split], article="math.encoder")
attn = layer.attention
q = attn._split(attn.query.forward(x))
k = attn._split(attn.key.forward(x))
v = attn._split(attn.value.forward(x))
lesson.value("C, H, D = d_k", f"{C}, {H}, {d}")
lesson.show("Q heads", q)
lesson.claim("the {C} columns of Q become {H} heads of D = {d}: shape {shape}, and head 1 is columns "
             "{a}–{b} of Q", q.shape == (B, H, T, d) and np.array_equal(q[0, 1], attn.query.forward(x)[0, :, d:2 * d]),
             C=C, H=H, d=d, shape=list(q.shape), a=d, b=2 * d - 1)
lesson.say(f"""The {C} columns of Q are cut into {H} groups of {d}: head h sees only its own {d}
dimensions of every query and key, so each head can attend by a different criterion at the cost
of one.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Each head attends on its own, then the heads are merged",
            """Z_h = softmax(Q_h K_hᵀ / √d_k) V_h      [B, H, T, D]
MultiHead(x) = Concat(Z_1, …, Z_H) W_Oᵀ + b_O     [B, T, C]""",
            code=[MultiHeadSelfAttention.forward, MultiHeadSelfAttention._merge], article="math.encoder")
S = softmax(q @ np.swapaxes(k, -1, -2) / math.sqrt(d))       # [B, H, T, T]  (S = softmax(A), one per head)
Z = S @ v                                                    # [B, H, T, d]
merged = Z.transpose(0, 2, 1, 3).reshape(B, T, C)            # Concat over heads
mh = attn.out.forward(merged)
lesson.show("S (per head)", S)
lesson.show("Concat(Z_h)", merged)
err_mh = float(np.abs(mh - attn.forward(x)).max())
lesson.claim("by hand equals MultiHeadSelfAttention.forward: max difference {e:.1e}", err_mh < 1e-12, e=err_mh)
fig, axes = plt.subplots(1, H, figsize=(3.2 * H, 3.5), layout="constrained")
for h in range(H):
    im = axes[h].imshow(S[0, h], cmap="viridis", vmin=0, vmax=1)
    axes[h].set_title(f"head {h}")
    axes[h].set_xlabel("key position j")
    axes[h].set_ylabel("query position i")
fig.colorbar(im, ax=axes, label="S_ij", shrink=0.8)
fig.suptitle("four heads of one layer (random weights): look for a different pattern in each")
path = lesson.savefig(fig, "heads")

# ------------------------------------------------------------------------------------------------
lesson.step("Residual connection and LayerNorm (post-norm, as BERT)",
            """a = LayerNorm(x + MultiHead(x))
LayerNorm(u) = γ ∘ (u − μ) / √(σ² + ε) + β,   μ, σ² over the C features of each token (biased σ², ε = 1e-12)""",
            code=LayerNorm.forward, article="math.encoder")
u = x + mh
a = layer.attention_norm.forward(u)
lesson.show("x + MultiHead(x)", u)
lesson.show("a", a)
lesson.show("mean over C", a.mean(-1))
lesson.show("std over C", a.std(-1))
lesson.claim("LayerNorm rescales each token to mean 0 (worst |mean| {m:.1e}) and standard deviation 1 "
             "(worst |std − 1| {sd:.1e}) before γ and β (here 1 and 0)",
             np.abs(a.mean(-1)).max() < 1e-12 and np.abs(a.std(-1) - 1).max() < 1e-6,
             m=float(np.abs(a.mean(-1)).max()), sd=float(np.abs(a.std(-1) - 1).max()))
lesson.say("""The residual adds the input back, so the sublayer only has to learn a correction, and the
gradient has a path to x that skips the attention sublayer. In BERT's post-norm layout that path
still goes through the LayerNorm (dL/dx = J_LNᵀ·(dL/da) + the sublayer's share): no path back is free
of a LayerNorm. Pre-norm Transformers (GPT-2 and most later models), x + Sublayer(LN(x)), keep one
path with no LayerNorm at all, which is why they train deep stacks more easily.""")
xs = rng.standard_normal((8, T, C)) * 3 + 1
ln_stats = LayerNorm(C, dtype=np.float64).forward(xs)
bn_stats = (xs - xs.mean(axis=(0, 1))) / xs.std(axis=(0, 1))
ln_m, bn_m = float(np.abs(ln_stats.mean(-1)).max()), float(np.abs(bn_stats.mean(-1)).max())
bn_one = (xs[:1] - xs[:1].mean(axis=(0, 1))) / xs[:1].std(axis=(0, 1))
bn_shift = float(np.abs(bn_one[0] - bn_stats[0]).max())
ln_shift = float(np.abs(LayerNorm(C, dtype=np.float64).forward(xs[:1])[0] - ln_stats[0]).max())
lesson.claim("LayerNorm gives every token mean 0 over its features (worst |mean| {ln:.1e}); BatchNorm, "
             "which normalises each feature over the batch, does not ({bn:.2f})", ln_m < 1e-12 and bn_m > 0.1,
             ln=ln_m, bn=bn_m)
lesson.claim("a token's LayerNorm output does not depend on the rest of the batch (change {l:.1e} when the "
             "batch is cut to one sequence); its BatchNorm output does ({b:.2f})", ln_shift < 1e-12 and bn_shift > 0.1,
             l=ln_shift, b=bn_shift)
lesson.say("""The article's FAQ names batch normalisation against over-fitting. BERT does not use it:
its statistics change with the batch and with padding, which is why Transformers normalise each
token over its own features instead.""")

# ------------------------------------------------------------------------------------------------
lesson.step("The position-wise feed-forward network with GELU",
            """FFN(a) = GELU(a W_1ᵀ + b_1) W_2ᵀ + b_2     [B, T, C] -> [B, T, 4C] -> [B, T, C]
GELU(u) = u · Φ(u) = ½ u (1 + erf(u/√2))""",
            code=[FeedForward.forward, GELU.forward], article="math.encoder")
h1 = layer.ffn.fc1.forward(a)
g = layer.ffn.act.forward(h1)
f = layer.ffn.fc2.forward(g)
lesson.show("a W_1ᵀ + b_1", h1)
lesson.show("GELU(…)", g)
lesson.show("FFN(a)", f)
gelu_err = float(np.abs(g - h1 * 0.5 * (1 + np.vectorize(math.erf)(h1 / math.sqrt(2)))).max())
lesson.claim("GELU(u) = ½u(1 + erf(u/√2)) to {e:.1e}; unlike ReLU it lets small negatives through: "
             "GELU(−0.5) = {gm:.3f}", gelu_err < 1e-12 and GELU().forward(np.array([-0.5]))[0] < 0,
             e=gelu_err, gm=float(GELU().forward(np.array([-0.5]))[0]))
lesson.say("""The same two-layer network is applied to every token separately ("position-wise"):
attention mixes information across tokens, the FFN transforms each token on its own.""")
grid = np.linspace(-4, 4, 401)
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(grid, GELU("none").forward(grid), label="GELU (erf, BERT)")
ax.plot(grid, GELU("tanh").forward(grid), "--", label="GELU (tanh approximation)")
ax.plot(grid, ReLU().forward(grid), ":", label="ReLU")
ax.set_xlabel("u")
ax.set_ylabel("activation(u)")
ax.set_title("GELU(u) = u·Φ(u): a smooth ReLU that lets small negatives through")
ax.legend()
ax.grid(alpha=0.3)
lesson.savefig(fig, "gelu")

# ------------------------------------------------------------------------------------------------
lesson.step("Second residual + LayerNorm: the layer's output",
            "y = LayerNorm(a + FFN(a))", code=EncoderLayer.forward, article="math.encoder")
y = layer.ffn_norm.forward(a + f)
y_layer = layer.forward(x)
lesson.show("y", y)
lesson.claim("by hand equals EncoderLayer.forward: max difference {e:.1e}", np.abs(y - y_layer).max() < 1e-12,
             e=float(np.abs(y - y_layer).max()))

# ------------------------------------------------------------------------------------------------
lesson.step("Parameters of one layer",
            """attention: 4·(C² + C)    (W_Q, W_K, W_V, W_O and their biases)
FFN:       C·I + I + I·C + C,  I = 4C
LayerNorm: 2 · 2C          (γ and β, twice)""",
            code=tinybert.nn.module.Module.num_parameters, article=["math.encoder", "concepts.capacity"])


def layer_count(C, I):
    return {"attention": 4 * (C * C + C), "FFN": 2 * C * I + I + C, "LayerNorm": 4 * C}


def model_count(cfg):
    C, I, V, P = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings
    per = layer_count(C, I)
    return {"embeddings": (V + P + cfg.type_vocab_size) * C + 2 * C,
            "attention": per["attention"] * cfg.num_hidden_layers,
            "FFN": per["FFN"] * cfg.num_hidden_layers,
            "LayerNorm": per["LayerNorm"] * cfg.num_hidden_layers,
            "pooler": C * C + C}


formula = layer_count(C, 4 * C)
for part, n in formula.items():
    lesson.value(f"{part:>10}", n)
lesson.claim("the formula gives {f:,} parameters and layer.num_parameters(), counted from the real "
             "Parameters, gives {n:,}", sum(formula.values()) == layer.num_parameters(),
             f=sum(formula.values()), n=layer.num_parameters())

# ------------------------------------------------------------------------------------------------
lesson.step("BERT-base: 12 layers, C = 768, 12 heads", "total = embeddings + L · layer + pooler",
            code=[BertEmbeddings.__init__, EncoderLayer.__init__, Pooler.__init__], article="concepts.capacity")
base = BertConfig()                                           # the defaults are BERT-base
init = np.random.default_rng(0)
n_emb = BertEmbeddings(base, init, init).num_parameters()
n_layer = EncoderLayer(base, init, init).num_parameters()
n_pool = Pooler(base.hidden_size, init).num_parameters()
built = n_emb + base.num_hidden_layers * n_layer + n_pool
counted = model_count(base)
lesson.value("embeddings (built)", n_emb)
lesson.value("one layer (built)", n_layer)
lesson.value("pooler (built)", n_pool)
lesson.value("BERT-base total", f"{built:,}", f"formula: {sum(counted.values()):,}")
lesson.claim("built from tinybert's own layers (one of each, so we never hold all 110 M at once), BERT-base "
             "has {n:,} parameters, as the formula says, the published ~110 M; {e:.0%} of it is the embedding "
             "tables", built == sum(counted.values()) and 105e6 < built < 115e6, n=built, e=n_emb / built)
configs = {
    "this lesson": cfg,
    "all-MiniLM-L6-v2": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                   intermediate_size=1536),
    "BERT-base": base,
    "BERT-large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096),
}
counts = {name: model_count(c) for name, c in configs.items()}
for name, c in counts.items():
    lesson.value(f"{name:>16}", f"{sum(c.values()):>13,}")
fig, ax = plt.subplots(figsize=(8, 4.2))
bottom = np.zeros(len(counts))
for part in ("embeddings", "attention", "FFN", "LayerNorm", "pooler"):
    vals = np.array([counts[n][part] for n in counts], dtype=float)
    ax.bar(list(counts), vals / 1e6, bottom=bottom, label=part)
    bottom += vals / 1e6
for i, tot in enumerate(bottom):
    ax.text(i, tot * 1.03 + 1, f"{tot:.3g} M" if tot > 0.1 else f"{tot * 1e6:,.0f}", ha="center",
            fontsize=9)
ax.set_ylabel("parameters (millions)")
ax.set_xlabel("model")
ax.set_title("where the parameters are (BertModel with pooler, vocab 30522 except this lesson's)")
ax.legend()
lesson.savefig(fig, "parameter_count")

# ------------------------------------------------------------------------------------------------
lesson.step("Parameters vs capacity: how much can a model memorise?",
            """train on N random sequences with random labels (nothing to generalise, only to memorise);
training accuracy after a fixed budget, for growing hidden size C""",
            code=[Code(tinybert.BertForSequenceClassification.forward), Code(ADAM_UPDATE, "m *= b1", "(lr / bc1) * (m / denom)")],
            article="concepts.capacity")
N, Tc, V = (48, 6, 40) if lesson.small else (96, 8, 40)
steps = 60 if lesson.small else 150
widths = [2, 16] if lesson.small else [2, 4, 8, 16, 32]
seeds = lesson.seeds(2 if lesson.small else 3)
K = 8                                                        # classes: 3 random bits per sequence
curves, sizes, final, longer, majority = {}, {}, {}, [], []
for width in widths:
    final[width], curves[width] = [], []
    for seed in seeds:
        data_rng = np.random.default_rng([seed, 4])
        ids = data_rng.integers(5, V, (N, Tc))
        labels = data_rng.integers(0, K, N)
        if width == widths[0]:                               # the baseline: always answer the commonest label
            majority.append(float(np.bincount(labels, minlength=K).max() / N))
        c = BertConfig(vocab_size=V, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=4 * width, max_position_embeddings=Tc, initializer_range=0.1,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=K)
        model = tinybert.BertForSequenceClassification(c, seed=seed, attention_backend="numpy")
        opt = tinybert.Adam(model.parameters(), lr=1e-2)
        accs = []
        n_run = 5 * steps if width == widths[0] else steps          # the narrowest: 5× longer too
        for s in range(n_run):
            logits = model.forward(ids)
            accs.append(float((logits.argmax(-1) == labels).mean()))
            loss, dlogits = cross_entropy(logits, labels)
            model.zero_grad()
            model.backward(dlogits)
            opt.step()
            lesson.progress(s + 1, n_run, f"C = {width}, seed {seed}: step")
        curves[width].append(accs[:steps])
        final[width].append(accs[steps - 1])
        if width == widths[0]:
            longer.append(float((model.forward(ids).argmax(-1) == labels).mean()))
    sizes[width] = model.num_parameters()
    final[width] = spread(final[width])
    lesson.value(f"C = {width:>3}  params {sizes[width]:>6,}",
                 f"train accuracy {final[width]:.2f}  (mean ± sd over seeds {seeds})")
fig, ax = plt.subplots(figsize=(7, 4))
for width in widths:
    ax.plot(np.mean(curves[width], axis=0), label=f"C = {width} ({sizes[width]:,} parameters)")
ax.axhline(np.mean(majority), color="gray", ls=":", lw=1,
           label=f"always the commonest label ({np.mean(majority):.2f}, mean over seeds)")
ax.set_xlabel("Adam step")
ax.set_ylabel("training accuracy on random labels")
ax.set_title(f"capacity: memorising {N} random labels out of {K} classes (mean of {len(seeds)} seeds)")
ax.legend(loc="center right", fontsize=8)
lesson.savefig(fig, "capacity")
w0, w1 = widths[0], widths[-1]
lesson.value("always answering the commonest label", ", ".join(f"{m:.2f} (seed {s_})" for m, s_ in zip(majority, seeds)))
above_w1 = [f - m for f, m in zip(final[w1].values, majority)]      # accuracy over the baseline, seed by seed
above_w0 = [f - m for f, m in zip(longer, majority)]
longer = spread(longer)
lesson.claim("random labels can only be memorised, so this measures raw capacity: in {k} steps C = {w1} "
             "({n1:,} parameters) memorises {a1:.2f} of them, at least {g1:.2f} above always answering the "
             "commonest label in every seed ({mj}); C = {w0} ({n0:,}) reaches {a0:.2f}, and even after 5× as many "
             "steps {al:.2f}, at most {g0:.2f} above that baseline: it barely beats answering the commonest label",
             min(above_w1) > 0.3 and max(above_w0) < 0.1 and final[w1].lo > final[w0].hi, k=steps, w1=w1, w0=w0,
             n1=sizes[w1], n0=sizes[w0], a1=final[w1], g1=min(above_w1), mj=", ".join(f"{m:.2f}" for m in majority),
             a0=final[w0], al=longer, g0=max(above_w0))

# ------------------------------------------------------------------------------------------------
lesson.step("Parameters vs generalisation: bigger models on a small corpus, trained to the same train loss",
            """MLM on N_train sentences; every width trained until its train loss (fixed masks) ≤ L*;
then held-out loss on sentences it never saw:  same train loss, so size is the main difference
(the steps taken to reach L* and the final train loss still differ a little: both are reported)""",
            code=[Code(train_to_loss, "for step in", "return step, train_loss")],
            article="concepts.capacity")
lesson.say("""The article says that bigger models capture more, but that a model too large is harder to
train and generalises worse. Comparing widths after a fixed number of steps confounds the two: a small
model that has barely trained has a small train/held-out gap only because it has learned little. So
here every width trains until it fits its few sentences equally well (train loss ≤ L*), and only then
do we ask how well it does on sentences it never saw.""")
gen_widths = [32, 128] if lesson.small else [16, 32, 64, 128, 256]
gen_seeds = lesson.seeds(2 if lesson.small else 3)
data = SmallCorpus(lesson.seed)
gen = {}
for width in gen_widths:
    runs = []
    for seed in gen_seeds:
        m_ = data.model(width, seed)
        n_steps_, train_loss = train_to_loss(m_, data, np.random.default_rng(seed), progress=lesson.progress)
        runs.append((train_loss, masked_loss(m_, data.fixed_held), n_steps_))
    r = np.array(runs)
    gen[width] = dict(params=m_.num_parameters(), macs=multiply_adds_per_token(m_.config), model=m_,
                      train=spread(r[:, 0]), held=spread(r[:, 1]), steps=spread(r[:, 2]))
    g = gen[width]
    lesson.value(f"C = {width:>3} ({g['params']:>7,} parameters)",
                 f"steps {g['steps']:.0f}   train {g['train']:.3f}   held-out {g['held']:.3f}")
small_w, big_w = gen_widths[0], gen_widths[-1]
best_w = min(gen_widths, key=lambda w: gen[w]["held"].mean)
lesson.claim("every width was trained to nearly the same fit of its {n} sentences: final train loss between "
             "{lo:.3f} and {hi:.3f} (target ≤ {t}) in every seed; means over seeds, with the steps it took: {st}",
             all(gen[w]["train"].hi <= TARGET for w in gen_widths),
             n=N_TRAIN, lo=min(gen[w]["train"].lo for w in gen_widths), hi=max(gen[w]["train"].hi for w in gen_widths),
             t=TARGET, st="; ".join(f"C = {w}: {gen[w]['train'].mean:.3f} in {gen[w]['steps'].mean:.0f} steps" for w in gen_widths))
lesson.claim("at the same train loss the largest model generalises worse: held-out loss {b:.2f} at C = {w1} "
             "({n1:,} parameters) against {a:.2f} at C = {w0} ({n0:,}), every seed of the large model above "
             "every seed of C = {w0} — with {n} sentences, its extra parameters memorise instead of generalise",
             best_w != big_w and gen[big_w]["held"].lo > gen[best_w]["held"].hi, b=gen[big_w]["held"], w1=big_w,
             n1=gen[big_w]["params"], a=gen[best_w]["held"], w0=best_w, n0=gen[best_w]["params"], n=N_TRAIN)
if best_w != small_w:                                        # the full run's five widths: too small is worse too
    lesson.claim("too small generalises worse as well: at the same train loss C = {w0} ({n0:,} parameters) has "
                 "a held-out loss of {a:.2f} against {b:.2f} at C = {wb} (means over seeds): held-out loss against "
                 "size is U-shaped, with its best at C = {wb} for {n} sentences",
                 gen[small_w]["held"].mean > gen[best_w]["held"].mean, w0=small_w, n0=gen[small_w]["params"],
                 a=gen[small_w]["held"], b=gen[best_w]["held"], wb=best_w, n=N_TRAIN)
# "dearer per step": counted (multiply-adds), and timed as the median of interleaved repetitions
batch_ = data.batch(np.arange(16), np.random.default_rng(0))
times = {small_w: [], big_w: []}
for _ in range(7 if lesson.small else 15):
    for w in (small_w, big_w):
        t0 = time.perf_counter()
        loss_, dl_ = cross_entropy(gen[w]["model"].forward(batch_[0], attention_mask=batch_[1]), batch_[2])
        gen[w]["model"].backward(dl_)
        times[w].append(time.perf_counter() - t0)
ms = {w: 1e3 * float(np.median(t_)) for w, t_ in times.items()}
lesson.claim("the largest model is also dearer per step: {k:.1f}× the multiply-adds per token ({mb:,} against "
             "{ma:,}), and {r:.1f}× the time of a forward + backward on the same batch (median of {reps} interleaved "
             "repetitions: {tb:.1f} ms against {ta:.1f} ms)",
             gen[big_w]["macs"] > 4 * gen[small_w]["macs"] and ms[big_w] > 1.3 * ms[small_w],
             k=gen[big_w]["macs"] / gen[small_w]["macs"], mb=gen[big_w]["macs"], ma=gen[small_w]["macs"],
             r=ms[big_w] / ms[small_w], reps=len(times[big_w]), tb=ms[big_w], ta=ms[small_w])
fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
xs_ = [gen[w]["params"] for w in gen_widths]
ax.errorbar(xs_, [gen[w]["train"].mean for w in gen_widths], [gen[w]["train"].sd for w in gen_widths],
            fmt="o-", label=f"train loss ({N_TRAIN} sentences): trained to ≤ {TARGET}")
ax.errorbar(xs_, [gen[w]["held"].mean for w in gen_widths], [gen[w]["held"].sd for w in gen_widths],
            fmt="s-", label="held-out loss (300 other sentences)")
for w, x_ in zip(gen_widths, xs_):
    ax.annotate(f"C = {w}", (x_, gen[w]["held"].mean), textcoords="offset points", xytext=(4, 6), fontsize=8)
ax.set_xscale("log")
ax.margins(x=0.15)                                           # room for the "C = …" labels at both ends
ax.set_xlabel("parameters (log scale)")
ax.set_ylabel("MLM cross-entropy (masked tokens)")
ax.set_title(f"same train loss, {N_TRAIN} sentences: held-out loss against model size\n"
             f"(mean ± sd over {len(gen_seeds)} seeds)")
ax.legend(fontsize=8)
lesson.savefig(fig, "generalisation")

lesson.end([
    f"Multi-head attention splits C={C} into H={H} heads of D = d_k = {d}, attends per head "
    "(04_heads.png) and merges them with W_O.",
    "Post-norm residuals: a = LN(x + MultiHead(x)), y = LN(a + FFN(a)); the hand computation "
    f"equals EncoderLayer.forward (max difference {float(np.abs(y - y_layer).max()):.1e}). "
    "LayerNorm normalises each token, unlike BatchNorm.",
    "The FFN is GELU between two linear maps, applied to each token (04_gelu.png).",
    f"One layer of this size has {layer.num_parameters():,} parameters (formula = count); BERT-base "
    f"has {built:,}, {n_emb / built:.0%} of it in the embedding tables (04_parameter_count.png).",
    "Parameters vs capacity: wider models memorise random labels further in the same budget "
    f"({', '.join(f'C={w}: {final[w]:.2f}' for w in widths)}; always answering the commonest label: "
    f"{np.mean(majority):.2f}; 04_capacity.png).",
    f"On a {N_TRAIN}-sentence corpus, trained to the same train loss (≤ {TARGET}), the largest model "
    f"generalises worse: held-out {gen[big_w]['held']:.2f} at C = {big_w} against {gen[best_w]['held']:.2f} at "
    f"C = {best_w}, and costs {gen[big_w]['macs'] / gen[small_w]['macs']:.0f}× the multiply-adds per token "
    "(04_generalisation.png).",
], try_next=[
    ("Swap the layout to pre-norm in step 3, u = x + attn.forward(layer.attention_norm.forward(x)), then "
     "y = u + FFN(LN(u)), and stack six such layers; print the residual stream's row means and stds.",
     "pre-norm never normalises the residual stream, only each sublayer's input: its row std grows with "
     "depth (above 1.5× its first-layer value after six layers) and its row means wander from 0, while "
     "the post-norm stack (step 3's layout) gives std 1 and mean 0 after every layer."),
    ("Count a model of your own in step 7: add BertConfig(hidden_size=512, num_hidden_layers=8, "
     "num_attention_heads=8, intermediate_size=2048) to `configs`.",
     "its bar in 04_parameter_count.png, with a larger embedding share than BERT-base's (about 38 % "
     "against 22 %): the vocabulary table grows with C, the layers with C² and L."),
    ("Compare the widths the way a quick experiment would: stop every model after the same 150 steps "
     "instead of at the same train loss (step 9 with max_steps=150 and no target), for C = 16 and 128.",
     "the confound step 9 avoids: after a fixed budget C = 16 has not fitted its sentences (train loss far "
     "above L*), so C = 128 shows the larger train/held-out gap and yet the lower held-out loss — the "
     "opposite of what step 9 finds at the same train loss."),
])
