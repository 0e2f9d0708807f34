"""Pretraining with the masked-language model (MLM)

The article's pretraining stage, in its five steps:

    1. data preparation   a large unlabelled corpus (here: one we generate, where words follow from context)
    2. model              a Transformer encoder (BertForMaskedLM)
    3. loss               cross-entropy — on the ~15 % of tokens that were masked
    4. backpropagation    gradients by backward(), parameters updated with Adam(W)
    5. regularization     dropout, and weight decay: AdamW's decoupled decay, which is not the
                          article's L2 (step 06.5 shows the two differ)

We show BERT's 80/10/10 masking on a sentence, train, watch the loss fall below a baseline that
ignores context, and compare the model's guesses for [MASK] before and after.
"""
import math

import numpy as np

from _stepper import Code, Lesson, fmt_array
from _pretrain import encode, learned_tokenizer, mlm_batch, mlm_step, small_config

import tinybert
from tinybert.training.corpus import COLORS, VERBS, generate_corpus
from tinybert.losses import cross_entropy
from tinybert.training.masking import mask_tokens
from tinybert.training.baselines import unigram_baseline
from tinybert.nn.dropout import Dropout
from tinybert.nn.module import Parameter
from tinybert.optim import adam_update
from tinybert.text.wordpiece_trainer import train_wordpiece

lesson = Lesson("06", "Pretraining with MLM", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)
STEPS = 150 if lesson.small else 500
BATCH = 32

# ------------------------------------------------------------------------------------------------
lesson.step("1. Data preparation: an unlabelled corpus, a vocabulary, ids",
            "corpus → WordPiece vocabulary (lesson 01) → x = (x_1 … x_n) per sentence",
            code=[Code(generate_corpus, "while len(out)", "return out"), Code(encode)], article="pretrain.1")
texts = generate_corpus(6000, seed=lesson.seed)
train_texts, val_texts = texts[:5500], texts[5500:]
tok = learned_tokenizer(train_texts)
ids, am = encode(tok, train_texts)
val_ids, val_am = encode(tok, val_texts)
lesson.value("sentences", f"{len(train_texts)} train, {len(val_texts)} held out")
for s in train_texts[:4]:
    print(f"    {s}")
lesson.value("vocabulary", tok.vocab_size)
lesson.show("train ids", ids, max_items=12)
lesson.say("""Look at the sentences: every template hides a word that only context can give back — the
colour said earlier, the verb form that agrees with the subject, the pronoun that matches a name.""")

# ------------------------------------------------------------------------------------------------
lesson.step("BERT's masking: choose 15 %, then 80 % [MASK] / 10 % random / 10 % unchanged",
            """chosen ~ Bernoulli(0.15) per eligible token;  of the chosen: 80 % → [MASK], 10 % → random id, 10 % kept
label_i = x_i where chosen, −100 (ignored) elsewhere""",
            code=[Code(mask_tokens, "chosen = eligible & (rng.random"), Code(mask_tokens, "u = rng.random", "labels = np.where")],
            article="pretrain.1")
demo = ids[:1]
demo_rng = np.random.default_rng(3)
inp, lab = mask_tokens(demo, demo_rng, tok.mask_token_id, tok.vocab_size, tok.all_special_ids,
                       attention_mask=am[:1], mlm_probability=0.4)
print("  (shown with p = 0.4 so that a short sentence has several choices)")
print("  original:", " ".join(tok.convert_ids_to_tokens(demo[0][am[0] == 1])))
print("  input:   ", " ".join(tok.convert_ids_to_tokens(inp[0][am[0] == 1])))
print("  labels:  ", " ".join(tok.convert_ids_to_tokens(int(l)) if l != -100 else "·" for l in lab[0][am[0] == 1]))
# the shares over the whole training set, with the real p = 0.15
inp_all, lab_all = mask_tokens(ids, np.random.default_rng(4), tok.mask_token_id, tok.vocab_size,
                               tok.all_special_ids, attention_mask=am)
eligible = (am == 1) & ~np.isin(ids, tok.all_special_ids)
chosen = lab_all != -100
share = {"chosen / eligible": chosen.sum() / eligible.sum(),
         "[MASK] / chosen": (chosen & (inp_all == tok.mask_token_id)).sum() / chosen.sum(),
         "random / chosen": (chosen & (inp_all != ids) & (inp_all != tok.mask_token_id)).sum() / chosen.sum(),
         "kept / chosen": (chosen & (inp_all == ids)).sum() / chosen.sum()}
expected = {"chosen / eligible": 0.15, "[MASK] / chosen": 0.8, "random / chosen": 0.1 * (1 - 1 / tok.vocab_size),
            "kept / chosen": 0.1 + 0.1 / tok.vocab_size}
n_of = {"chosen / eligible": int(eligible.sum())}
n_of.update({k: int(chosen.sum()) for k in share if k != "chosen / eligible"})
se = {k: math.sqrt(expected[k] * (1 - expected[k]) / n_of[k]) for k in share}
for k, v in share.items():
    lesson.value(f"{k:<18}", f"{v:.4f}", f"expected {expected[k]:.4f}, sampling standard error {se[k]:.4f} "
                                         f"over {n_of[k]:,} tokens")
z = {k: abs(share[k] - expected[k]) / se[k] for k in share}
lesson.claim("every measured share is within 3 standard errors of the expected one (largest gap: {w:.1f} "
             "standard errors): the masking does what BERT's recipe says", max(z.values()) < 3, w=max(z.values()))
lesson.claim("a random replacement can draw the original token, which adds 0.1/V = {e:.5f} to \"kept\" — "
             "{r:.0f}× smaller than the sampling error {se:.4f}: these numbers cannot show it, and the "
             "difference between the measured {m:.4f} and 0.1 is sampling noise",
             0.1 / tok.vocab_size < se["kept / chosen"] / 10, e=0.1 / tok.vocab_size,
             r=se["kept / chosen"] / (0.1 / tok.vocab_size), se=se["kept / chosen"], m=share["kept / chosen"])
lesson.say("""The random and kept 20 % stop the model from assuming that only [MASK] positions need
predicting — there is no [MASK] at fine-tuning time.""")
fig, ax = plt.subplots(figsize=(7, 4))
pos = np.arange(len(share))
ax.bar(pos - 0.2, list(share.values()), 0.4,
       label=f"measured: chosen of {int(eligible.sum()):,} eligible tokens; the rest of the {int(chosen.sum()):,} chosen")
ax.bar(pos + 0.2, list(expected.values()), 0.4, label="expected", alpha=0.6)
ax.set_xticks(pos, list(share))
ax.set_ylabel("fraction")
ax.set_xlabel("what happened to a token")
ax.set_title("BERT's 80/10/10 masking, measured over the training set (p = 0.15)")
ax.set_ylim(0, 1.05)
ax.legend(loc="upper right", fontsize=8)
lesson.savefig(fig, "masking")

# ------------------------------------------------------------------------------------------------
lesson.step("2. The model: a small BERT with an MLM head",
            "logits = LN(GELU(h W_T)) W_Eᵀ + b      (decoder tied to the word embeddings W_E)",
            code=[Code(tinybert.BertForMaskedLM.forward), Code(tinybert.models.MaskedLMHead.forward)],
            article="pretrain.2")
cfg = small_config(tok)
model = tinybert.BertForMaskedLM(cfg, seed=lesson.seed, attention_backend="numpy")
lesson.value("config", f"L={cfg.num_hidden_layers}, C={cfg.hidden_size}, H={cfg.num_attention_heads}, "
                       f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}")
lesson.value("parameters", f"{model.num_parameters():,}")

# ------------------------------------------------------------------------------------------------
lesson.step("3. The loss: cross-entropy on the masked positions",
            """L = −(1/N) Σ_{i masked} log softmax(logits_i)[x_i];   dL/dlogits = (softmax − onehot)/N""",
            code=Code(cross_entropy, "zr -= zr.max", "zr[xp.arange(n), yr] -="), article="pretrain.3")
val_batch = mask_tokens(val_ids, np.random.default_rng(99), tok.mask_token_id, tok.vocab_size,
                        tok.all_special_ids, attention_mask=val_am)


def val_loss_acc(model):
    model.eval()
    logits = model.forward(val_batch[0], attention_mask=val_am)
    loss, _ = cross_entropy(logits, val_batch[1])
    sel = val_batch[1] != -100
    acc = float((logits[sel].argmax(-1) == val_batch[1][sel]).mean())
    model.train()
    return loss, acc


loss0, acc0 = val_loss_acc(model)
lesson.claim("at initialisation the held-out loss, {l:.3f}, is within 0.1 of ln V = {u:.3f}, the loss of a "
             "uniform guess over the vocabulary", abs(loss0 - math.log(tok.vocab_size)) < 0.1, l=loss0,
             u=math.log(tok.vocab_size))
train_tokens = ids[(am == 1) & ~np.isin(ids, tok.all_special_ids)]
base = unigram_baseline(train_tokens, val_batch[1][val_batch[1] != -100], tok.vocab_size)
lesson.value("unigram baseline", f"loss {base['loss']:.3f}, accuracy {base['accuracy']:.3f}",
             f"always '{tok.convert_ids_to_tokens(base['token'])}', no context")

# probes: sentences of the corpus's kinds with the context-determined word masked
probes = ["anna has a red kite . the kite of anna is [MASK] .",
          "the dogs [MASK] in the park and they are happy .",
          "tom went to the river because [MASK] wanted to see his friend mia ."]


def probs(model, text):
    """the model's full distribution p(v | context) [V] at the [MASK] of ``text``"""
    enc = tok(text)
    x = enc["input_ids"][None]
    model.eval()
    logits = model.forward(x)[0]
    model.train()
    pos = int(np.flatnonzero(x[0] == tok.mask_token_id)[0])
    z = logits[pos] - logits[pos].max()
    return np.exp(z) / np.exp(z).sum()


def predict(model, text, k=5):
    """the k most likely tokens at the [MASK] of ``text``, with their probabilities"""
    p = probs(model, text)
    top = np.argsort(-p)[:k]
    return [(tok.convert_ids_to_tokens(int(i)), float(p[i])) for i in top]


def kind_mass(p, words):
    """total probability of the words (each a single token of the vocabulary)"""
    return float(sum(p[tok.convert_tokens_to_ids(w)] for w in words))


before = {t: predict(model, t) for t in probes}
model_before_probs = {t: probs(model, t) for t in probes}
for t in probes:
    print(f"  {t}")
    print("      before training:", ", ".join(f"{w} {p:.3f}" for w, p in before[t]))

# ------------------------------------------------------------------------------------------------
lesson.step("4. Backpropagation with AdamW, and 5. regularization",
            """loss.backward:  model.backward(dL/dlogits) fills every p.grad
clip ‖g‖ ≤ 1;  AdamW: θ ← θ(1 − ηλ) − η m̂/(√v̂ + ε)   (λ = 0.01: decoupled weight decay)
the article's L2 is another thing: Adam(weight_decay=λ) adds λθ to the gradient, g ← g + λθ
dropout p = 0.1 on embeddings and every sublayer output, during training only""",
            code=[Code(mlm_step, "logits = ", "schedule.step()"), Code(tinybert.clip_grad_norm),
                  Code(adam_update, "if wd and decoupled", "param -= "), Code(Dropout.forward)],
            article=["pretrain.4", "pretrain.5"])
LR, LAMBDA = 3e-3, 0.01


def decay_of_one_step(optimizer, grad):
    """What weight decay λ adds to one step of ``optimizer`` from θ = 1 with gradient ``grad``: the
    step with λ minus the same step with λ = 0. -> [len(grad)]"""
    after = []
    for wd in (LAMBDA, 0.0):
        p = Parameter(np.ones(len(grad)))
        p.grad[...] = grad
        optimizer([p], lr=LR, weight_decay=wd).step()
        after.append(p.data.copy())
    return after[0] - after[1]


grad = np.array([0.0, 1.0])                    # one weight with no gradient, one with gradient 1
decoupled, l2 = decay_of_one_step(tinybert.AdamW, grad), decay_of_one_step(tinybert.Adam, grad)
lesson.value("gradient", fmt_array(grad, precision=1), "two weights, both θ = 1")
lesson.value("AdamW's decay (decoupled)", fmt_array(decoupled, precision=7), f"η = {LR}, λ = {LAMBDA}")
lesson.value("Adam's L2 (λθ in the gradient)", fmt_array(l2, precision=7))
lesson.claim("AdamW's decay takes ηλθ = {e:.1e} off both weights, whatever their gradient (worst gap "
             "{w:.0e}); Adam with L2 takes {a:.1e} off the weight whose gradient is 0 ({r:.0f}× more) and "
             "{b:.0e} off the one whose gradient is 1: L2 in the gradient is divided by √v̂ like the rest of "
             "the gradient. The two differ; the article names L2, BERT trains with AdamW",
             np.abs(decoupled + LR * LAMBDA).max() < 1e-12 and l2[0] < -0.9 * LR
             and abs(l2[1]) < 0.01 * LR * LAMBDA, e=LR * LAMBDA, w=np.abs(decoupled + LR * LAMBDA).max(),
             a=-l2[0], r=l2[0] / decoupled[0], b=-l2[1])
opt = tinybert.AdamW(tinybert.bert_param_groups(model, LAMBDA), lr=LR)
sched = tinybert.get_linear_schedule_with_warmup(opt, max(1, STEPS // 20), STEPS)
losses, evals = [], [(0, loss0, acc0)]
model.train()
for step in range(1, STEPS + 1):
    rows = rng.integers(0, len(ids), BATCH)
    losses.append(mlm_step(model, opt, sched, *mlm_batch(tok, ids, am, rows, rng)))
    if step % max(1, STEPS // 5) == 0 or step == STEPS:
        vl, va = val_loss_acc(model)
        evals.append((step, vl, va))
        print(f"  step {step:>4}  train loss {losses[-1]:.3f}   held-out loss {vl:.3f}  "
              f"masked-token accuracy {va:.3f}   lr {sched.get_last_lr()[0]:.2e}")
final_loss, final_acc = evals[-1][1], evals[-1][2]
lesson.claim("after {n} steps the held-out loss is {l:.3f}, below the unigram baseline's {b:.3f}, and the "
             "masked-token accuracy {a:.3f} is above its {ba:.3f}: the model uses the context",
             final_loss < base["loss"] and final_acc > base["accuracy"], n=STEPS, l=final_loss, b=base["loss"],
             a=final_acc, ba=base["accuracy"])
lesson.say("""Each step draws fresh masks (dynamic masking), so the model never sees the same corrupted
sentence twice. Weight decay skips biases and LayerNorm weights (bert_param_groups), as BERT does.""")
fig, ax = plt.subplots(figsize=(7, 4.2))
ax.plot(np.arange(1, STEPS + 1), losses, lw=0.8, label="training loss (one batch)")
ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="held-out loss")
ax.axhline(base["loss"], color="gray", ls="--", label="unigram baseline (no context)")
ax.axhline(math.log(tok.vocab_size), color="gray", ls=":", label="uniform guess, ln V")
ax.set_xlabel("AdamW step")
ax.set_ylabel("MLM cross-entropy (masked tokens)")
ax.set_title("pretraining a small BERT on the generated corpus")
ax.legend()
lesson.savefig(fig, "loss_curve")

# ------------------------------------------------------------------------------------------------
lesson.step("Predictions for [MASK] after training",
            "p(v | context) = softmax(logits_i)[v] at the masked position i;   prediction = argmax_v",
            code=[Code(probs, "logits = model.forward", "return np.exp")], article="math.output")
after = {t: predict(model, t) for t in probes}
for t in probes:
    print(f"  {t}")
    print("      before:", ", ".join(f"{w} {p:.3f}" for w, p in before[t]))
    print("      after: ", ", ".join(f"{w} {p:.3f}" for w, p in after[t]))
# the kind of word that fits each probe (a colour, a verb, a pronoun), and within it the right one:
# the colour said earlier, the plural verb that agrees with "the dogs", the "he" that "his" refers to
kinds = [set(COLORS), {v for pair in VERBS for v in pair}, {"he", "she"}]
right = [{"red"}, {plural for _, plural in VERBS}, {"he"}]
missing = sorted(w for k in kinds for w in k if w not in tok.vocab)
assert not missing, f"every word of a kind must be one token of the vocabulary; not: {missing}"
counts = np.bincount(train_tokens, minlength=tok.vocab_size)
unigram_p = counts / counts.sum()                        # p(v) with no context: the training counts
p_after = [probs(model, t) for t in probes]
mass_before = [kind_mass(model_before_probs[t], k) for t, k in zip(probes, kinds)]
mass_after = [kind_mass(p, k) for p, k in zip(p_after, kinds)]
mass_uni = [kind_mass(unigram_p, k) for k in kinds]
right_share = [kind_mass(p, r_) / kind_mass(p, k) for p, r_, k in zip(p_after, right, kinds)]
chance = [len(r_) / len(k) for r_, k in zip(right, kinds)]
for t, k, b, u, a, rs, c in zip(probes, ("a colour", "a verb", "a pronoun"), mass_before, mass_uni, mass_after,
                                right_share, chance):
    lesson.value(f"p({k}) at [MASK]", f"{b:.3f} before, {u:.3f} unigram → {a:.3f} after; the right one's "
                                      f"share of it {rs:.2f} (even split {c:.2f})", t)
lesson.claim("before training the guesses are near-uniform (largest top-1 probability {b:.3f}, 1/V = {u:.3f})",
             max(before[t][0][1] for t in probes) < 5 / tok.vocab_size,
             b=max(before[t][0][1] for t in probes), u=1 / tok.vocab_size)
lesson.claim("after training the probability on the kind of word the slot takes (a colour, a verb, a pronoun) "
             "is above what the unigram counts give it at every probe, by ×{r:.1f} at least — {a} against "
             "{u} — so "
             "the context moves it", all(a > 3 * u for a, u in zip(mass_after, mass_uni)),
             r=min(a / u for a, u in zip(mass_after, mass_uni)),
             a=", ".join(f"{a:.2f}" for a in mass_after), u=", ".join(f"{u:.2f}" for u in mass_uni))
lesson.claim("but it does not pick the right word of the kind with confidence: the right one (the colour said "
             "earlier, the plural verb after \"the dogs\", \"he\" for \"his\") gets {r} of the kind's "
             "probability, against {c} for an even split — under 0.75 at every probe",
             max(right_share) < 0.75, r=", ".join(f"{r_:.2f}" for r_ in right_share),
             c=", ".join(f"{c:.2f}" for c in chance))


def true_word_ranks(model):
    """The rank (1 = top) of the true word in the model's scores at every masked held-out position [N]."""
    model.eval()
    logits = model.forward(val_batch[0], attention_mask=val_am)
    model.train()
    sel = val_batch[1] != -100
    z, y = logits[sel], val_batch[1][sel]
    return 1 + (z > z[np.arange(len(y)), y][:, None]).sum(-1)


unigram_rank = np.empty(tok.vocab_size, dtype=int)
unigram_rank[np.argsort(-counts, kind="stable")] = np.arange(1, tok.vocab_size + 1)   # commonest word: 1
ranks = true_word_ranks(model)
ranks_uni = unigram_rank[val_batch[1][val_batch[1] != -100]]
top5, top5_uni = float((ranks <= 5).mean()), float((ranks_uni <= 5).mean())
lesson.value("rank of the true word", f"median {np.median(ranks):.0f} (model) vs {np.median(ranks_uni):.0f} "
                                      f"(unigram: words by training count), over {len(ranks):,} masked positions")
lesson.claim("three probes are anecdotes; over all {n:,} masked held-out positions the true word is in the "
             "model's top 5 at {a:.0%} of them, against {b:.0%} for the unigram ranking (commonest words "
             "first, no context), and its median rank is {m:.0f} against {u:.0f}",
             top5 > top5_uni + 0.1 and np.median(ranks) < np.median(ranks_uni),
             n=len(ranks), a=top5, b=top5_uni, m=np.median(ranks), u=np.median(ranks_uni))
lesson.say(f"""Read the probes' top guesses beside that: after this little training the model has begun to
learn which kind of word fits a slot — the kind holds {min(mass_after):.2f} to {max(mass_after):.2f} of the
probability at the 3 probes, far from all of it but several times its unigram share — sooner than
which word of the kind. Whether it
copies the colour said earlier, over many sentences, is exercise 1.""")
fig, axes = plt.subplots(len(probes), 2, figsize=(10, 2.4 * len(probes)))
for r, t in enumerate(probes):
    for c, (name, pred) in enumerate((("before training", before[t]), ("after training", after[t]))):
        ax = axes[r, c]
        ax.barh([w for w, _ in pred][::-1], [p for _, p in pred][::-1],
                color="tab:gray" if c == 0 else "tab:blue")
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability")
        ax.set_title(f"{name}: {t}", fontsize=8)
fig.suptitle("top-5 predictions for [MASK]")
lesson.savefig(fig, "predictions")

lesson.end([
    "The corpus, a learned WordPiece vocabulary and padded ids are the data step; BERT's masking "
    f"chose {share['chosen / eligible']:.1%} of tokens, of which {share['[MASK] / chosen']:.0%} became "
    "[MASK], the rest random or kept (06_masking.png).",
    f"The loss is cross-entropy on masked tokens only; it starts at ln V = {math.log(tok.vocab_size):.2f}.",
    f"{STEPS} AdamW steps with dropout and weight decay bring the held-out loss to {final_loss:.2f}, "
    f"below the unigram baseline's {base['loss']:.2f} (06_loss_curve.png); masked-token accuracy "
    f"{final_acc:.2f} against the baseline's {base['accuracy']:.2f}.",
    f"Before training the guesses for [MASK] are near-uniform; after, the probability of the kind of word "
    f"a slot takes is above its unigram share at every probe (06_predictions.png), and over all masked held-out positions "
    f"the true word is in the top 5 at {top5:.0%} of them against the unigram ranking's {top5_uni:.0%}.",
    "AdamW's decoupled decay and Adam's L2 differ: one step from the same weights shows it.",
], try_next=[
    ("Does the model copy a word said earlier? In \"anna has a red kite . the kite of anna is [MASK] .\" "
     "count how often its favourite of the 8 colours is the one said earlier, on such sentences it never "
     "saw (the exercise excludes them from training).",
     "no more often than chance (1 in 8), at 150 steps and still at 1500 (without --small): it names one "
     "colour for most sentences, whatever was said — it learned that a colour goes there, not which. "
     "This model, trained this long, does not copy."),
    ("In step 2 draw other masks: replace np.random.default_rng(4) by np.random.default_rng(5).",
     "every share moves, by about a standard error, and stays within 3 of the recipe: a gap like 0.102 "
     "against 0.100 is what sampling alone produces."),
])
