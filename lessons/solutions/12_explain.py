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

    You should see (with --small's model) both sentences called 'positive': the model cannot read a pair
    whose adjectives it never saw, and explain() notes that the [PAD] baseline alone already scores
    'positive' — the words have almost nothing to explain.
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


def exercise_2(lesson):
    """Explain the lesson's first sentence with baseline="zero" (every word vector 0) instead of [PAD], and
    with output="logit" (tinybert explain … --baseline zero, --output logit).

    You should see that the baseline decides how much there is to explain: with zeros, f(x') falls from
    about 0.98 to about 0.01, so the attributions now share out most of the probability instead of 0.01;
    in every variant they still add up to f(x) − f(x') within 1%.
    """
    model, tok = load_explainable(trained_model(lesson.small, lesson.seed, lesson.say), PAIR)
    runs = {}
    for baseline in ("pad", "zero"):
        for output in ("probability", "logit"):
            e = explain(model, tok, PAIR[0], target="positive", baseline=baseline, output=output)
            runs[baseline, output] = e
            lesson.value(f"{baseline:>4}, {output:<11}", f"f(x) {e.score:+.3f}  f(x') {e.baseline_score:+.3f}  "
                         f"Σa {e.integrated_gradients.sum():+.3f}  error {e.completeness_error:.2%}  "
                         f"{e.steps} steps", _top(e))
    pad, zero = runs["pad", "probability"], runs["zero", "probability"]
    share_pad, share_zero = pad.score - pad.baseline_score, zero.score - zero.baseline_score
    lesson.claim("with the [PAD] baseline the words share out f(x) − f(x') = {p:.3f}; with zeros, {z:.3f} — "
                 "{r:.0f}× more — and every variant adds up within 1% (worst {w:.2%})",
                 share_zero > 10 * abs(share_pad) and max(e.completeness_error for e in runs.values()) <= 0.01,
                 p=share_pad, z=share_zero, r=share_zero / max(abs(share_pad), 1e-12),
                 w=max(e.completeness_error for e in runs.values()))


def exercise_3(lesson):
    """Explain the second sentence, "the soup was bland , not tasty .", as 'negative'.

    You should see that here the [PAD] baseline scores 'negative' low (about 0.02), so the words carry the
    whole decision (f(x) − f(x') ≈ 0.97, against about 0.01 for the first sentence), and the first adjective,
    'bland', leads the attributions.
    """
    model, tok = load_explainable(trained_model(lesson.small, lesson.seed, lesson.say), PAIR)
    first = explain(model, tok, PAIR[0], target="positive")
    second = explain(model, tok, PAIR[1], target="negative")
    for t, e in ((PAIR[0], first), (PAIR[1], second)):
        lesson.value(f"{e.target:<8}", f"f(x) {e.score:.3f}  f(x') {e.baseline_score:.3f}", _top(e, 4))
    lead = second.tokens[int(np.argmax(np.abs(second.integrated_gradients)))]
    lesson.claim("for 'negative' the baseline scores {b:.3f}, so the words explain f(x) − f(x') = {d:.3f} "
                 "(the first sentence: {d1:.3f}), and the token with the largest attribution is {t!r}",
                 second.score - second.baseline_score > 0.5
                 and second.score - second.baseline_score > 10 * abs(first.score - first.baseline_score)
                 and lead == "bland",
                 b=second.baseline_score, d=second.score - second.baseline_score,
                 d1=first.score - first.baseline_score, t=lead)
