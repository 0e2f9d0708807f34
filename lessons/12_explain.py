"""Why did it say that? Explaining a fine-tuned classifier's decision

The article ends on interpretability as an open direction. A model whose backward pass is written by
hand is the natural place to start: the gradient of a prediction with respect to the input words is
one more backward call. On the minimal pairs of the demo ("the soup was tasty , not bland ." is
positive, "the soup was bland , not tasty ." negative: the same words, only their order decides),
the lesson asks which tokens the decision rests on, by three methods:

    gradient × input       a_t = Σ_h x_th ∂f/∂x_th                 (one backward)
    integrated gradients   a_t = Σ_h (x − x')_th ∫₀¹ ∂f/∂x_th(x' + α(x − x')) dα, summing to f(x) − f(x')
    attention rollout      R = Π_l (½ mean_heads P_l + ½ I), the [CLS] row

x are the word vectors of the text, x' the baseline (every word replaced by [PAD]), f the probability
of the label. The model is the demo's fine-tuned classifier (runs/demo/finetune/best, after
`make demo`), or one trained here with the demo's recipe when that is absent or with --small.
"""
import os
import tempfile

import numpy as np

from _stepper import REPO_ROOT, Code, Lesson

from tinybert.models.attention_maps import attention_maps
from tinybert.pipelines.explain import (attention_rollout, explain, integrated_gradients, load_explainable,
                                        plot_explanation, score_and_gradient)
from tinybert.pipelines.predict import classify
from tinybert.training import TrainingConfig, finetune, pretrain
from tinybert.training.corpus import generate_sentiment_task

lesson = Lesson("12", "Why did it say that?", __doc__)
plt = lesson.plt
small = lesson.small
DEMO_MODEL = os.path.join(REPO_ROOT, "runs", "demo", "finetune", "best")
PAIR = ("the soup was tasty , not bland .", "the soup was bland , not tasty .")

# ------------------------------------------------------------------------------------------------
lesson.step("The model: a fine-tuned classifier of minimal pairs",
            "logits = W_C tanh(W_P h_[CLS]) + b;   f = softmax(logits)_label",
            code=Code(score_and_gradient, "logits = model.forward", "grad = model.backward"),
            article="finetune.5")
if not small and os.path.isdir(DEMO_MODEL):
    source = DEMO_MODEL
    lesson.say(f"Using the demo's fine-tuned model, {DEMO_MODEL}.")
else:
    lesson.say("Training one with the demo's recipe (pretraining on the generated corpus, then fine-tuning "
               "every weight on minimal pairs)" + (", smaller" if small else "") + "; `make demo` first to "
               "explain the demo's own model.")
    folder = tempfile.mkdtemp(prefix="tinybert_lesson12_")
    task = generate_sentiment_task(*((1000, 100, 50) if small else (1500, 200, 250)), seed=lesson.seed)
    pre = pretrain(os.path.join(folder, "pretrain"),
                   TrainingConfig(epochs=1 if small else 2, batch_size=64, lr=2e-3, warmup_ratio=0.05, max_length=32,
                                  seed=lesson.seed, progress=False, log_every=50),
                   corpus_size=12000 if small else 20000, num_layers=2, hidden_size=64, num_heads=4, dropout=0.1,
                   max_position_embeddings=32, model_seed=lesson.seed, plots=False)
    ft = finetune(os.path.join(folder, "finetune"), pre["checkpoint"],
                  TrainingConfig(epochs=3 if small else 4, batch_size=32, lr=1e-3, warmup_ratio=0.1, max_length=32,
                                 seed=lesson.seed, patience=2, progress=False, log_every=50),
                  train=task["train"], val=task["validation"], model_seed=lesson.seed, plots=False)
    source = ft["best"]
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
            "a_t = Σ_h (x − x')_th Σ_i Δα_i ½(∂f/∂x_th(α_i) + ∂f/∂x_th(α_i+1));   Σ_t a_t = f(x) − f(x')",
            code=Code(integrated_gradients, "shares = np.diff", "err = np.abs"), article="pretrain.4")
ids = np.asarray(tok(PAIR[0])["input_ids"])
table = model.bert.embeddings.word_embeddings.weight.data.astype(np.float64)
x = table[ids]
keep = np.isin(ids, [tok.cls_token_id, tok.sep_token_id])
x_base = np.where(keep[:, None], x, table[tok.pad_token_id][None])
alphas = np.linspace(0, 1, 201)
points = x_base[None] + alphas[:, None, None] * (x - x_base)[None]                    # [201, T, H]
f_path, _ = score_and_gradient(model, points.astype(model.bert.embeddings.word_embeddings.weight.data.dtype),
                               np.zeros((len(alphas), len(ids)), int), e.target_index, 0)
half = float(alphas[np.argmax(np.abs(f_path - f_path[0]) >= 0.5 * abs(f_path[-1] - f_path[0]))])
equal = {n: explain(model, tok, PAIR[0], target="positive", steps=n, tolerance=0).completeness_error for n in (10, 50)}
lesson.value("f along the path", f"{f_path[0]:.3f} at α=0, {f_path[100]:.3f} at α=0.5, {f_path[-1]:.3f} at α=1",
             f"half of the change is done at α = {half:.3f}")
lesson.value("completeness error, equal steps", ", ".join(f"{n} steps: {v:.2%}" for n, v in equal.items()))
lesson.claim("the refined rule (split the intervals where the trapezoid rule is worst until the estimated error "
             "is under 1%) makes the attributions add up: Σ a_t = {s:.4f} against f(x) − f(x') = {d:.4f}, a "
             "completeness error of {c:.3%} (at most 1%) with {n} steps. Compare the equal-step errors above: "
             "refinement pays where f turns sharply along the path and only spends steps where it does not",
             e.completeness_error <= 0.01, s=float(e.integrated_gradients.sum()), d=e.score - e.baseline_score,
             c=e.completeness_error, n=e.steps)
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
           "where each adjective stands, not which one it is. A model trained longer (the demo's) leans more "
           "on the adjectives and 'not'; one that learned a shortcut shows it here.")
lesson.value("the three largest |a_t|", ", ".join(sorted(top3)), f"{share:.0%} of Σ|a_t|")
print("    (explained with the other label's score: the second sentence)")
e2 = explain(model, tok, PAIR[1], target="negative")
lesson.value("second sentence, 'negative'", f"f(x) {e2.score:.4f}, f(x') {e2.baseline_score:.4f}",
             "; ".join(e2.notes) if e2.notes else "")
plot_explanation(e, os.path.join(lesson.out, "12_explanation.png"))
lesson.add_figure(os.path.join(lesson.out, "12_explanation.png"))

# ------------------------------------------------------------------------------------------------
lesson.step("Where attention and gradients disagree",
            "R = Â_L ⋯ Â_1,  Â_l = ½ mean_heads(P_l) + ½ I;   R ≥ (½)^L I elementwise",
            code=Code(attention_rollout, "rollout = np.eye(t)", "rollout = a @ rollout"), article="math.attention")
maps = attention_maps(model, ids)
n_layers = maps.shape[0]
r = e.attention_rollout
lesson.claim("rollout never disagrees in sign (it is never negative: min {m:.3f}) and keeps at least (½)^L = {b} "
             "of [CLS]'s row on [CLS] itself through the residual path alone (here {c:.3f}), where integrated "
             "gradients give [CLS] exactly {ig}", r.min() >= 0 and r[0] >= 0.5 ** n_layers - 1e-12
             and e.integrated_gradients[0] == 0, m=float(r.min()), b=0.5 ** n_layers, c=float(r[0]),
             ig=float(e.integrated_gradients[0]))
words = [t for t in range(len(ids)) if not keep[t]]
rank_ig = np.argsort(np.argsort(-np.abs(e.integrated_gradients[words])))
rank_r = np.argsort(np.argsort(-r[words]))
rho = float(np.corrcoef(rank_ig, rank_r)[0, 1])
lesson.value("rank correlation of |IG| and rollout over the words", rho,
             "1: they agree on the order of importance; 0: unrelated")
lesson.say("Attention says where information flowed, not which way it pushed: a token can be attended to "
           "and still not move p(positive), and a negative a_t (a token that argues against the label) has "
           "no counterpart in a rollout.")

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
    f"correlates with |IG| at ρ = {rho:.2f}.",
], try_next=[
    ("tinybert explain --model runs/demo/finetune/best \"the hotel was clean , not dirty .\" --png e.png",
     "the adjectives and 'not' lead the integrated gradients; e.png draws the three methods as rows"),
    ("explain the same sentence with --baseline zero, then with --output logit",
     "the same tokens on top; the completeness error stays under 1% either way, with a different number of steps"),
    ("tinybert explain --model runs/demo/finetune/best \"the soup was bland , not tasty .\"",
     "whether the [PAD] baseline alone already scores 'negative' (a note says so): then the words have "
     "little left to explain, and --target positive shows what argues against it"),
])
