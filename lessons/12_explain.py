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
from _12_model import trained_model

from tinybert.models.attention_maps import attention_maps
from tinybert.pipelines.explain import (attention_rollout, explain, integrated_gradients, load_explainable,
                                        plot_explanation, score_and_gradient)
from tinybert.pipelines.predict import classify

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
e = explain(model, tok, PAIR[0], target="positive")
gxi_gap = abs(e.gradient_x_input.sum() - (e.score - e.baseline_score)) / abs(e.score - e.baseline_score)
lesson.value("f(x)", e.score, "probability of 'positive'")
lesson.value("f(x')", e.baseline_score, "every word replaced by [PAD]")
lesson.value("Σ gradient × input", float(e.gradient_x_input.sum()))
lesson.claim("gradient × input is not an account of the decision: its tokens sum to {s:.3g}, {g:.0%} away "
             "from f(x) − f(x') = {d:.3f}, since at p = {p:.3f} the softmax is flat and the gradient small",
             gxi_gap > 0.5, s=float(e.gradient_x_input.sum()), g=gxi_gap, d=e.score - e.baseline_score, p=e.score)

# ------------------------------------------------------------------------------------------------
lesson.step("Integrated gradients: walk from the baseline to the text",
            "a_t = Σ_c (x − x')_tc Σ_i Δα_i ½(∂f/∂x_tc(α_i) + ∂f/∂x_tc(α_i+1));   Σ_t a_t = f(x) − f(x')",
            code=Code(integrated_gradients, "shares = np.diff", "err = np.abs"), article="pretrain.4")
ids = np.asarray(tok(PAIR[0])["input_ids"])
table = model.bert.embeddings.word_embeddings.weight.data.astype(np.float64)
x = table[ids]
keep = np.isin(ids, [tok.cls_token_id, tok.sep_token_id])
x_base = np.where(keep[:, None], x, table[tok.pad_token_id][None])
alphas = np.linspace(0, 1, 201)
points = x_base[None] + alphas[:, None, None] * (x - x_base)[None]                    # [201, T, C]
f_path, _ = score_and_gradient(model, points.astype(model.bert.embeddings.word_embeddings.weight.data.dtype),
                               np.zeros((len(alphas), len(ids)), int), e.target_index, 0)
half = float(alphas[np.argmax(np.abs(f_path - f_path[0]) >= 0.5 * abs(f_path[-1] - f_path[0]))])
equal = {n: explain(model, tok, PAIR[0], target="positive", steps=n, tolerance=0).completeness_error for n in (10, 50)}
lesson.value("f along the path", f"{f_path[0]:.3f} at α=0, {f_path[100]:.3f} at α=0.5, {f_path[-1]:.3f} at α=1",
             f"half of the change is done at α = {half:.3f}")
lesson.value("completeness error, equal steps", ", ".join(f"{n} steps: {v:.2%}" for n, v in equal.items()))
same_cost = explain(model, tok, PAIR[0], target="positive", steps=e.steps, tolerance=0).completeness_error
own_change = float(f_path[-1] - f_path[0])            # f(x) − f(x') from this step's own forward calls on the path
own_error = abs(float(e.integrated_gradients.sum()) - own_change) / abs(own_change)
lesson.value(f"equal steps, as many as the refined rule ({e.steps})", f"{same_cost:.3%}")
lesson.claim("the refined rule (split the intervals where the trapezoid rule is worst until its error estimate is "
             "under 1%) makes the attributions add up: Σ a_t = {s:.4f} against f(x) − f(x') = {d:.4f} computed "
             "here from the path's two ends, an error of {c:.3%} (≤ 1%) with {n} steps (equal steps: {q:.3%} with "
             "the same number)", own_error <= 0.01,
             s=float(e.integrated_gradients.sum()), d=own_change, c=own_error, n=e.steps, q=same_cost)
lesson.say(f"""No gain from refinement at this size: equal steps of the same number do {'as well or better' if
same_cost <= own_error else 'a little worse'} ({same_cost:.3%} against {own_error:.3%}) on
this path. What the refined rule buys here is a stopping rule: it reaches the 1% it was asked for without
a step count chosen beforehand (10 equal steps miss it: {equal[10]:.2%}).""")
fig, ax = plt.subplots(figsize=(6.4, 3.6))
ax.plot(alphas, f_path)
ax.set_xlabel("α  (0: baseline, 1: the text)")
ax.set_ylabel("p(positive)")
ax.set_title(f"f along the straight path, {PAIR[0]!r}", fontsize=9)
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
lesson.say("Look at the top of the list: do the words that carry the order (the two adjectives, 'not') lead, "
           "or the noun and the punctuation? And do both adjectives push the same way? Then the model reads "
           "where each adjective stands, not which one it is.")
lesson.value("the three largest |a_t|", ", ".join(sorted(top3)), f"{share:.0%} of Σ|a_t|")
print("    (explained with the other label's score: the second sentence)")
e2 = explain(model, tok, PAIR[1], target="negative")
lesson.value("second sentence, 'negative'", f"f(x) {e2.score:.4f}, f(x') {e2.baseline_score:.4f}",
             "; ".join(e2.notes) if e2.notes else "")
lesson.say(f"""Mind how much there is to share: the [PAD] baseline scores 'positive' {e.baseline_score:.3f}, so
the words of the first sentence share out f(x) − f(x') = {e.score - e.baseline_score:.3f} and those of the second
{e2.score - e2.baseline_score:.3f}. An attribution can only share out what the words change: the sentence
whose label the baseline already gives has almost nothing to explain (exercise 3).""")
plot_explanation(e, os.path.join(lesson.out, "12_explanation.png"))
lesson.add_figure(os.path.join(lesson.out, "12_explanation.png"))

# ------------------------------------------------------------------------------------------------
lesson.step("Where attention and gradients disagree",
            """R = Ŝ_L ⋯ Ŝ_1,  Ŝ_l = ½ mean_heads(S_l) + ½ I (rows renormalised);   the [CLS] row of R against |a_t|
agreement: Spearman's ρ of the two rankings of the words; chance: ρ over every ordering of the words""",
            code=Code(attention_rollout, "rollout = np.eye(t)", "rollout = a @ rollout"), article="math.attention",
            letters=True)
maps = attention_maps(model, ids)
n_layers = maps.shape[0]
r = e.attention_rollout
lesson.say(f"""By construction rollout is never negative (here min {r.min():.3f}) and keeps at least (½)^L =
{0.5 ** n_layers} of [CLS]'s row on [CLS] itself through the residual path (here {r[0]:.3f}), where
integrated gradients give [CLS] exactly {e.integrated_gradients[0]:g}: it cannot say that a word argues
against the label. The question is whether the two rank the words alike.""")
words = [t for t in range(len(ids)) if not keep[t]]
rank_ig = np.argsort(np.argsort(-np.abs(e.integrated_gradients[words])))
rank_r = np.argsort(np.argsort(-r[words]))
rho = float(np.corrcoef(rank_ig, rank_r)[0, 1])
# the permutation baseline: every ordering of the words, ranked against |IG| as rollout's ranking was
orderings = np.array(list(permutations(range(len(words)))))
n_w = len(words)
chance = 1 - 6 * ((orderings - rank_ig) ** 2).sum(axis=1) / (n_w * (n_w ** 2 - 1))   # Spearman's ρ (no ties)
p_value = float(np.mean(chance >= rho - 1e-12))
lesson.value("rank correlation of |IG| and rollout over the words", rho,
             "1: they agree on the order of importance; 0: unrelated")
lesson.value(f"ρ of all {len(orderings):,} orderings of the {len(words)} words",
             f"5%, 50%, 95%: {np.percentile(chance, 5):+.3f}, {np.percentile(chance, 50):+.3f}, "
             f"{np.percentile(chance, 95):+.3f}", f"{p_value:.0%} reach ρ = {rho:.3f} or more")
lesson.claim("rollout ranks the {n} words no better than chance against integrated gradients: ρ = {rho:.3f}, "
             "and {p:.0%} of all {k:,} orderings of the words agree with |IG| at least as well (5% would be the "
             "usual bar for 'better than chance')", p_value > 0.05,
             n=len(words), rho=rho, p=p_value, k=len(orderings))
lesson.say("Attention says where information flowed, not which way it pushed: a token can be attended to "
           "and still not move p(positive), and a negative a_t (a token that argues against the label) has "
           f"no counterpart in a rollout. With {n_w} words a ranking must reach ρ ≈ {np.percentile(chance, 95):.2f} "
           "to beat 95% of random orderings.")

# The same explanation in tinybert's interactive page (open it in a browser): the prediction, the
# attributions on one colour scale, the rollout and every head of the classifier.
from tinybert import view                                                                  # noqa: E402
lesson.display_html(view(model, tok, PAIR[0]), "12_view.html")
lesson.say("Open the page in a browser: hover a token for its attribution.")

lesson.end([
    f"The model's backward, fed ∂f/∂logits, returns ∂f/∂x for every word vector; gradient × input from it "
    f"sums to {float(e.gradient_x_input.sum()):.3g} of f(x) − f(x') = {e.score - e.baseline_score:.3f} (saturation).",
    f"Integrated gradients add up to f(x) − f(x') within {e.completeness_error:.3%} with {e.steps} steps of the "
    f"refined rule (equal steps: {equal[10]:.2%} at 10, {equal[50]:.2%} at 50); half of f's change happens by "
    f"α = {half:.2f} of the path.",
    f"The three largest attributions: {', '.join(sorted(top3))} ({share:.0%} of the total).",
    f"Attention rollout keeps ≥ (½)^L of [CLS] on itself and cannot be negative; its ranking of the words "
    f"correlates with |IG| at ρ = {rho:.2f}, which {p_value:.0%} of random orderings match: no better than chance.",
], try_next=[
    ("Explain a pair with words the fine-tuning never showed: \"the hotel was clean , not dirty .\" and its mirror "
     "(tinybert explain --model <the model folder printed in step 1> \"<text>\").",
     "both sentences get the same label ('positive' with --small's model, 'negative' with the full one): the model "
     "cannot read adjectives it never saw, and explain notes that the [PAD] baseline alone already gives that label."),
    ("Explain the pair with --output logit instead of the probability.",
     "for the sentence whose words decide, the same three tokens lead, while their attributions now add up to the "
     "logit difference, more than 1 (no probability difference can be); every variant adds up within 1%."),
    ("Explain both sentences of the pair, each as its own label.",
     "the [PAD] baseline already gives one label (which depends on the model) at 0.98 or more, so that sentence's "
     "words share out under 0.03, while the other's carry the whole decision (over 0.9), led by an adjective."),
])
