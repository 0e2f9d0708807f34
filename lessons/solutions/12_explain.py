"""Solutions to lesson 12's exercises (run one with: lessons/12_explain.py --exercise N).

Each explains the lesson's own model (``_12_model.trained_model``: the demo's, or the one the lesson
trained and kept in runs/lessons/; trained now if the lesson has not run yet). The command line
``tinybert explain --model <that folder> "<text>"`` gives the same explanations.
"""
import numpy as np

from _12_model import recipe, trained_model

from tinybert.pipelines.explain import explain, load_explainable
from tinybert.pipelines.predict import classify
from tinybert.training.corpus import generate_sentiment_task

PAIR = ("the soup was tasty , not bland .", "the soup was bland , not tasty .")


def _top(e, k=3):
    order = np.argsort(-np.abs(e.integrated_gradients))[:k]
    return ", ".join(f"{e.tokens[t]} {e.integrated_gradients[t]:+.3f}" for t in order)


def exercise_1(lesson):
    """Explain a pair with words the fine-tuning never showed: "the hotel was clean , not dirty ." and
    "the hotel was dirty , not clean ." (tinybert explain --model <the lesson's model> "<text>").

    You should see both sentences get the same label ('positive' with --small's model, 'negative' with the
    full one): the model cannot read a pair whose adjectives it never saw, and explain() notes that the
    [PAD] baseline alone already scores that label — the words have almost nothing to explain.
    """
    texts = ("the hotel was clean , not dirty .", "the hotel was dirty , not clean .")
    model, tok = load_explainable(trained_model(lesson.small, lesson.seed, lesson.say), texts)
    train_texts = generate_sentiment_task(*recipe(lesson.small, lesson.seed)["task"], seed=lesson.seed)["train"][0]
    seen = {w for t in train_texts for w in t.split()}
    labels = [label for label, _ in classify(model, tok, list(texts))]
    explanations = [explain(model, tok, t) for t in texts]
    for t, e in zip(texts, explanations):
        print(f"    {e.target:<8} f(x) {e.score:.3f}  f(x') {e.baseline_score:.3f}   top: {_top(e)}")
        print(f"             {t}")
    lesson.claim("'clean' and 'dirty' never occur in the fine-tuning texts ({s}), and the model gives both mirrored "
                 "sentences the same label, {a!r}; the [PAD] baseline alone scores {b:.3f} for it, so the words "
                 "explain only {d:.3f} (explain's note says so)",
                 "clean" not in seen and "dirty" not in seen and labels[0] == labels[1]
                 and all(any("baseline alone" in n for n in e.notes) for e in explanations),
                 s=f"{len(train_texts)} sentences", a=labels[0], b=explanations[0].baseline_score,
                 d=explanations[0].score - explanations[0].baseline_score)


def _both(model, tok, **kwargs):
    """The explanations of the pair's two sentences, each for its own label."""
    return [explain(model, tok, text, target=label, **kwargs) for text, label in zip(PAIR, ("positive", "negative"))]


def exercise_2(lesson):
    """Explain the pair with output="logit" instead of the probability (tinybert explain … --output logit).

    You should see that for the sentence whose words carry the decision the same three tokens lead, while
    their attributions now add up to the logit difference — more than 1 (with --small's model 3.8, the
    full one 6.7), which no probability difference can reach — and every variant still adds up within 1%.
    """
    model, tok = load_explainable(trained_model(lesson.small, lesson.seed, lesson.say), PAIR)
    prob, logit = _both(model, tok), _both(model, tok, output="logit")
    for name, runs in (("probability", prob), ("logit", logit)):
        for e in runs:
            lesson.value(f"{name:<11} {e.target:<8}", f"f(x) {e.score:+.3f}  f(x') {e.baseline_score:+.3f}  "
                         f"error {e.completeness_error:.2%}", _top(e))
    k = int(np.argmax([e.score - e.baseline_score for e in prob]))        # the sentence the words decide
    top_p = {prob[k].tokens[t] for t in np.argsort(-np.abs(prob[k].integrated_gradients))[:3]}
    top_l = {logit[k].tokens[t] for t in np.argsort(-np.abs(logit[k].integrated_gradients))[:3]}
    d_logit = float(logit[k].integrated_gradients.sum())
    worst = max(e.completeness_error for e in prob + logit)
    lesson.claim("for {s!r} ('{lab}'), the sentence whose words decide, the same three tokens lead ({t}); the logit "
                 "attributions add up to {d:.2f}, more than any probability difference can, and every variant "
                 "adds up within 1% (worst {w:.2%})",
                 top_p == top_l and abs(d_logit) > 1 and worst <= 0.01,
                 s=PAIR[k], lab=prob[k].target, t=", ".join(sorted(top_p)), d=d_logit, w=worst)


def exercise_3(lesson):
    """Explain both sentences of the pair, each as its own label: the one the lesson's step 2 set aside as
    well, and compare.

    You should see that the [PAD] baseline already gives one label (which one depends on the model: 'positive'
    for --small's, 'negative' for the full one) at 0.98 or more, so that sentence's words have almost nothing
    to share out (under 0.03), while the other sentence's words carry the whole decision (over 0.9), led by
    one of the two adjectives.
    """
    model, tok = load_explainable(trained_model(lesson.small, lesson.seed, lesson.say), PAIR)
    runs = _both(model, tok)
    for e in runs:
        lesson.value(f"{e.target:<8}", f"f(x) {e.score:.3f}  f(x') {e.baseline_score:.3f}  "
                     f"shared out {e.score - e.baseline_score:.3f}", _top(e, 4))
    shares = [e.score - e.baseline_score for e in runs]
    k_none, k_all = int(np.argmin(shares)), int(np.argmax(shares))
    lead = runs[k_all].tokens[int(np.argmax(np.abs(runs[k_all].integrated_gradients)))]
    lesson.claim("the [PAD] baseline already scores '{a}' {b:.3f}, so {s0!r} shares out only {d0:.3f}; {s1!r} "
                 "shares out {d1:.3f}, and its largest attribution is on the adjective {t!r}",
                 runs[k_none].baseline_score >= 0.98 and shares[k_none] < 0.03 and shares[k_all] > 0.9
                 and lead in ("tasty", "bland"),
                 a=runs[k_none].target, b=runs[k_none].baseline_score, s0=PAIR[k_none], d0=shares[k_none],
                 s1=PAIR[k_all], d1=shares[k_all], t=lead)
