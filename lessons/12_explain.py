"""Why did it say that? Explaining a fine-tuned classifier's decision

The article's summary names 可解释性增强 (better interpretability: making the model's decisions
transparent) as a direction for the future. A model whose backward pass is written by hand is the
natural place to start: the gradient of a prediction with respect to the input words is one more
backward call. On the minimal pairs of the demo ("the soup was tasty , not bland ." is positive,
"the soup was bland , not tasty ." negative: the same words, only their order decides), the lesson
asks which tokens the decision rests on, by three methods:

    gradient × input       a_t = Σ_c x_tc ∂f/∂x_tc                 (one backward)
    integrated gradients   a_t = Σ_c (x − x')_tc ∫₀¹ ∂f/∂x_tc(x' + α(x − x')) dα, summing to f(x) − f(x')
    attention rollout      R = Π_l (½ mean_heads S_l + ½ I), the [CLS] row

x [T, C] are the word vectors of the text (c runs over the C hidden units), x' the baseline (every
word replaced by [PAD]), f the probability of the label, S_l layer l's attention weights [H, T, T]
(P_l in the code's letters). The model is the demo's fine-tuned classifier (runs/demo/finetune/best,
after `make demo`), or one trained here with the demo's recipe when that is absent or with --small
(kept in runs/lessons/, so that the exercises explain the same model).
"""
import os
from itertools import permutations

import numpy as np

from _stepper import Code, Lesson
from _12_model import recipe, trained_model

from tinybert.models.attention_maps import attention_maps
from tinybert.pipelines.explain import (attention_rollout, explain, integrated_gradients, load_explainable,
                                        plot_explanation, score_and_gradient)
from tinybert.pipelines.predict import classify
from tinybert.training.corpus import generate_sentiment_task

lesson = Lesson("12", "Why did it say that?", __doc__)
plt = lesson.plt
small = lesson.small
PAIR = ("the soup was tasty , not bland .", "the soup was bland , not tasty .")

# ------------------------------------------------------------------------------------------------
lesson.step("The model: a fine-tuned classifier of minimal pairs",
            "logits = W_C tanh(W_P h_[CLS]) + b;   f = softmax(logits)_label",
            code=Code(score_and_gradient, "logits = model.forward", "grad = model.backward"),
            article=["future.interpretability", "finetune.5"])
source = trained_model(small, lesson.seed, lesson.say)
model, tok = load_explainable(source, PAIR)
labels = classify(model, tok, list(PAIR))
for text, (label, p) in zip(PAIR, labels):
    print(f"    {label:<8} {p:.3f}  {text}")
lesson.claim("the model tells the pair apart: {a!r} and {b!r}, though the two sentences hold the same words",
             labels[0][0] == "positive" and labels[1][0] == "negative", a=labels[0][0], b=labels[1][0])

# ------------------------------------------------------------------------------------------------
lesson.step("The gradient with respect to the words: one more backward call",
            "∂f/∂x = model.backward(∂f/∂logits),   ∂p_k/∂z = p_k (e_k − p)",
            code=[Code(score_and_gradient, "if output == \"probability\"", "dz = onehot")],
            article="pretrain.4")
both = [explain(model, tok, text, target=label) for text, label in zip(PAIR, ("positive", "negative"))]
for b in both:
    lesson.value(f"'{b.target}' for {b.text!r}", f"f(x) {b.score:.3f}, f(x') {b.baseline_score:.3f}",
                 f"the words share out f(x) − f(x') = {b.score - b.baseline_score:.3f}")
k = int(np.argmax([b.score - b.baseline_score for b in both]))        # the sentence whose words decide
e, other, TEXT = both[k], both[1 - k], PAIR[k]
lesson.say(f"""f(x') is the [PAD] baseline's score: it already gives '{other.target}' {other.baseline_score:.3f},
so the words of {other.text!r} have only {other.score - other.baseline_score:.3f} to share out (exercise 3):
what the model says there it says without them. The rest of the lesson explains {TEXT!r} as
'{e.target}', whose words take f from {e.baseline_score:.3f} to {e.score:.3f}.""")
gxi_gap = abs(e.gradient_x_input.sum() - (e.score - e.baseline_score)) / abs(e.score - e.baseline_score)
lesson.value("Σ gradient × input", float(e.gradient_x_input.sum()))
lesson.claim("gradient × input is not an account of the decision: its tokens sum to {s:.3g}, {g:.0%} away "
             "from f(x) − f(x') = {d:.3f}", gxi_gap > 0.5,
             s=float(e.gradient_x_input.sum()), g=gxi_gap, d=e.score - e.baseline_score)
lesson.say(f"""Why so small: at p = {e.score:.3f} the softmax is saturated, ∂p_k/∂z_k = p_k(1 − p_k) =
{e.score * (1 - e.score):.4f} (0.25 at p = ½), so the gradient at x says little about how the words got
f there. The next step walks the whole way from x' to x instead.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Integrated gradients: walk from the baseline to the text",
            "a_t = Σ_c (x − x')_tc Σ_i Δα_i ½(∂f/∂x_tc(α_i) + ∂f/∂x_tc(α_i+1));   Σ_t a_t = f(x) − f(x')",
            code=Code(integrated_gradients, "shares = np.diff", "err = np.abs"), article="pretrain.4")
ids = np.asarray(tok(TEXT)["input_ids"])
table = model.bert.embeddings.word_embeddings.weight.data.astype(np.float64)
x = table[ids]
keep = np.isin(ids, [tok.cls_token_id, tok.sep_token_id])
x_base = np.where(keep[:, None], x, table[tok.pad_token_id][None])
alphas = np.linspace(0, 1, 201)
points = x_base[None] + alphas[:, None, None] * (x - x_base)[None]                    # [201, T, C]
f_path, _ = score_and_gradient(model, points.astype(model.bert.embeddings.word_embeddings.weight.data.dtype),
                               np.zeros((len(alphas), len(ids)), int), e.target_index, 0)
half = float(alphas[np.argmax(np.abs(f_path - f_path[0]) >= 0.5 * abs(f_path[-1] - f_path[0]))])
equal = {n: explain(model, tok, TEXT, target=e.target, steps=n, tolerance=0).completeness_error for n in (10, 50)}
lesson.value("f along the path", f"{f_path[0]:.3f} at α=0, {f_path[100]:.3f} at α=0.5, {f_path[-1]:.3f} at α=1",
             f"half of the change is done at α = {half:.3f}")
lesson.value("completeness error, equal steps", ", ".join(f"{n} steps: {v:.2%}" for n, v in equal.items()))
same_cost = explain(model, tok, TEXT, target=e.target, steps=e.steps, tolerance=0).completeness_error
own_change = float(f_path[-1] - f_path[0])            # f(x) − f(x') from this step's own forward calls on the path
own_error = abs(float(e.integrated_gradients.sum()) - own_change) / abs(own_change)
lesson.value(f"equal steps, as many as the refined rule ({e.steps})", f"{same_cost:.3%}")
lesson.claim("the attributions add up when there are steps enough: Σ a_t = {s:.4f} against f(x) − f(x') = {d:.4f} "
             "computed here from the path's two ends, an error of {c:.3%} (≤ 1%) with the {n} steps the refined "
             "rule stopped at, where 10 equal steps miss by {q10:.2%}",
             own_error <= 0.01 and equal[10] > 0.01,
             s=float(e.integrated_gradients.sum()), d=own_change, c=own_error, n=e.steps, q10=equal[10])
if same_cost <= 0.01:
    lesson.say(f"""Equal steps of the same number reach the 1% too ({same_cost:.3%}): on this path what counts is
how many steps there are, not where the refined rule put them. What it buys is a stopping rule: it
reaches the 1% asked for without a step count chosen beforehand.""")
else:
    lesson.say(f"""Equal steps of the same number miss the 1% ({same_cost:.2%}): on this path f changes within a
short stretch (half of it by α = {half:.3f}), and the refined rule put its steps there.""")
fig, ax = plt.subplots(figsize=(6.4, 3.6))
ax.plot(alphas, f_path)
ax.set_xlabel("α  (0: baseline, 1: the text)")
ax.set_ylabel(f"p({e.target})")
ax.set_title(f"f along the straight path, {TEXT!r}", fontsize=9)
ax.grid(alpha=0.3)
lesson.savefig(fig, "path")

# ------------------------------------------------------------------------------------------------
lesson.step("Which tokens flip the decision",
            "a_t per token; the pair's two sentences differ only in the order of the adjectives",
            code=Code(explain, "ig, grad_x, f_x, f_base, n"), article="finetune.5")
order = np.argsort(-np.abs(e.integrated_gradients))
for t in order[:5]:
    print(f"    {e.tokens[t]:<8} {e.integrated_gradients[t]:+.4f}")
top3 = {e.tokens[t] for t in order[:3]}
share = float(np.abs(e.integrated_gradients[order[:3]]).sum() / np.abs(e.integrated_gradients).sum())
lead = e.tokens[order[0]]
lesson.value("the three largest |a_t|", ", ".join(sorted(top3)), f"{share:.0%} of Σ|a_t|")
lesson.claim("of the {d:.3f} that the words of {t!r} share out, the largest share goes to an adjective: "
             "{w!r} {a:+.3f}, not the noun, 'not' or the punctuation",
             lead in ("tasty", "bland"), d=e.score - e.baseline_score, t=TEXT, w=lead,
             a=float(e.integrated_gradients[order[0]]))
lesson.say("Look at the rest of the list: does 'not' take a share, or the punctuation? And do both adjectives "
           "push the same way? Then the model reads where each adjective stands, not which one it is.")
plot_explanation(e, os.path.join(lesson.out, "12_explanation.png"))
lesson.add_figure(os.path.join(lesson.out, "12_explanation.png"))

# ------------------------------------------------------------------------------------------------
lesson.step("Where attention and gradients disagree",
            """R = Ŝ_L ⋯ Ŝ_1,  Ŝ_l = ½ mean_heads(S_l) + ½ I (rows renormalised);   the [CLS] row of R against |a_t|
agreement: Spearman's ρ of the two rankings of the words; chance: ρ when one ranking is shuffled""",
            code=Code(attention_rollout, "rollout = np.eye(t)", "rollout = a @ rollout"), article="math.attention",
            letters=True)
maps = attention_maps(model, ids)
n_layers = maps.shape[0]
r = e.attention_rollout
lesson.say(f"""By construction rollout is never negative (here min {r.min():.3f}) and keeps at least (½)^L =
{0.5 ** n_layers} of [CLS]'s row on [CLS] itself through the residual path (here {r[0]:.3f}), where
integrated gradients give [CLS] exactly {e.integrated_gradients[0]:g}: it cannot say that a word argues
against the label. The question is whether the two rank the words alike.""")


def word_ranks(ex):
    """The ranks of the words (not [CLS], [SEP]) by |IG| and by rollout, largest first."""
    w = [t for t, tok_ in enumerate(ex.tokens) if tok_ not in (tok.cls_token, tok.sep_token)]
    return (np.argsort(np.argsort(-np.abs(ex.integrated_gradients[w]))),
            np.argsort(np.argsort(-ex.attention_rollout[w])))


def spearman(rank_a, rank_b):
    """Spearman's ρ of rankings without ties, 1 − 6 Σ d² / (n(n² − 1)); rank_b may be [k, n] (k rankings)."""
    n = len(rank_a)
    return 1 - 6 * ((np.asarray(rank_b) - rank_a) ** 2).sum(axis=-1) / (n * (n ** 2 - 1))


rank_ig, rank_r = word_ranks(e)
rho = float(spearman(rank_ig, rank_r))
orderings = np.array(list(permutations(range(len(rank_ig)))))
chance = spearman(rank_ig, orderings)                 # every ordering of the words, ranked against |IG|
p_value = float(np.mean(chance >= rho - 1e-12))
lesson.value(f"ρ of |IG| and rollout over the {len(rank_ig)} words of {TEXT!r}", rho,
             f"{p_value:.0%} of all {len(orderings):,} orderings of the words agree with |IG| at least as well")
lesson.say(f"""One sentence of {len(rank_ig)} words can hardly tell: a ranking must reach
ρ ≈ {np.percentile(chance, 95):.2f} to beat 95% of random orderings. So the same question over many sentences the model never trained on:
the task's test sentences whose words decide (f(x) − f(x') > 0.5), each explained as its predicted label.""")
test_texts = generate_sentiment_task(*recipe(small, lesson.seed)["task"], seed=lesson.seed)["test"][0][:100]
pool = [ex for ex in (explain(model, tok, t_) for t_ in test_texts) if ex.score - ex.baseline_score > 0.5]
pairs = [word_ranks(ex) for ex in pool]
mean_rho = float(np.mean([spearman(a, b) for a, b in pairs]))
rng = np.random.default_rng(lesson.seed)
shuffles = np.mean([spearman(a, rng.permuted(np.tile(b, (2000, 1)), axis=1)) for a, b in pairs], axis=0)  # [2000]
bar = float(np.percentile(shuffles, 99))
lesson.value(f"mean ρ over {len(pool)} test sentences", mean_rho,
             f"with rollout's ranking shuffled in each sentence, 2,000 times: 99% of the means stay below {bar:.3f}")
lesson.claim("over the {n} test sentences whose words decide, rollout ranks the words like |IG| better than chance: "
             "mean ρ = {m:.3f}, above the {b:.3f} that 99% of 2,000 shuffles stay under (on the one sentence above, "
             "ρ = {r:.3f}, {p:.0%} of orderings do as well)", len(pool) >= 10 and mean_rho > bar,
             n=len(pool), m=mean_rho, b=bar, r=rho, p=p_value)
lesson.say(f"""Better than chance is not agreement: ρ = 1 would be the same order. Attention says where
information flowed, not which way it pushed: a token can be attended to and still not move
p({e.target}), and a negative a_t (a token that argues against the label) has no counterpart in a
rollout.""")

# The same explanation in tinybert's interactive page (open it in a browser): the prediction, the
# attributions on one colour scale, the rollout and every head of the classifier.
from tinybert import view                                                                  # noqa: E402
lesson.display_html(view(model, tok, TEXT), "12_view.html")
lesson.say("Open the page in a browser: hover a token for its attribution.")

lesson.end([
    f"Of the pair, the lesson explains the sentence whose words decide ({TEXT!r}: f(x') {e.baseline_score:.3f} → "
    f"f(x) {e.score:.3f}); the [PAD] baseline already gives the other its label ({other.baseline_score:.3f}).",
    f"The model's backward, fed ∂f/∂logits, returns ∂f/∂x for every word vector; gradient × input from it "
    f"sums to {float(e.gradient_x_input.sum()):.3g} of f(x) − f(x') = {e.score - e.baseline_score:.3f} (saturation).",
    f"Integrated gradients add up to f(x) − f(x') within {e.completeness_error:.3%} with the {e.steps} steps of the "
    f"refined rule (equal steps: {equal[10]:.2%} at 10, {equal[50]:.2%} at 50, {same_cost:.3%} at {e.steps}); half "
    f"of f's change happens by α = {half:.2f} of the path.",
    f"The three largest attributions: {', '.join(sorted(top3))} ({share:.0%} of the total), led by {lead!r}.",
    f"Attention rollout keeps ≥ (½)^L of [CLS] on itself and cannot be negative; its ranking of the words "
    f"correlates with |IG| at ρ = {rho:.2f} on this sentence (too few words to tell), and at a mean ρ = "
    f"{mean_rho:.2f} over {len(pool)} test sentences: better than chance (99% of shuffles < {bar:.2f}), though not "
    "the same order (ρ = 1).",
], try_next=[
    ("Explain a pair with words the fine-tuning never showed: \"the hotel was clean , not dirty .\" and its mirror "
     "(tinybert explain --model <the model folder printed in step 1> \"<text>\").",
     "both sentences get the same label ('positive' with --small's model, 'negative' with the full one): the model "
     "cannot read adjectives it never saw, and explain notes that the [PAD] baseline alone already gives that label."),
    ("Explain the pair with --output logit instead of the probability.",
     "for the sentence whose words decide, the same three tokens lead, while their attributions now add up to the "
     "logit difference, more than 1 (no probability difference can be); every variant adds up within 1%."),
    ("Explain both sentences of the pair, each as its own label: the one step 2 set aside as well, and compare.",
     "the [PAD] baseline already gives one label (which depends on the model) at 0.98 or more, so that sentence's "
     "words share out under 0.03, while the other's carry the whole decision (over 0.9), led by an adjective."),
])
