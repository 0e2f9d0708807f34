"""Solutions to lesson 09's exercises (run one with: lessons/09_pretrained_model.py --exercise N)."""
import numpy as np

from _09_examples import SENTENCES, TEXT_ATT, it_weights, load, rain_gap

from tinybert.pipelines.sentence import SentenceEncoder, cosine_similarity


def exercise_1(lesson):
    """Replace text_att by "the cat sat on the mat because it was soft" in step 5: now "it" is the mat.

    You should see the head that linked "it" to "cat" (layer 5, head 11) still put most of its weight on
    "cat" (0.64 against 0.11 on "mat"), and the count of heads favouring "cat" move only a little
    (37 → 30 of 72): the weights follow the sentence's form more than its meaning.
    """
    model, tok = load()
    _, _, cat_tired, mat_tired = it_weights(model, tok, TEXT_ATT)
    soft = TEXT_ATT.replace("tired", "soft")
    _, _, cat_soft, mat_soft = it_weights(model, tok, soft)
    l, h = np.unravel_index(np.argmax(cat_tired), cat_tired.shape)      # the lesson's 'it' → 'cat' head
    n_tired, n_soft = int((cat_tired > mat_tired).sum()), int((cat_soft > mat_soft).sum())
    lesson.value("tired", f"layer {l}, head {h}: 'it' → 'cat' {cat_tired[l, h]:.2f}, → 'mat' {mat_tired[l, h]:.2f}; "
                 f"{n_tired} of {cat_tired.size} heads favour 'cat'")
    lesson.value("soft", f"layer {l}, head {h}: 'it' → 'cat' {cat_soft[l, h]:.2f}, → 'mat' {mat_soft[l, h]:.2f}; "
                 f"{n_soft} of {cat_soft.size} heads favour 'cat'")
    lesson.claim("with \"soft\" (it = the mat) layer {l}, head {h} still puts {c:.2f} on \"cat\" and {m:.2f} on \"mat\"; "
                 "the heads favouring \"cat\" go from {a} to {b} of {n}: the weights barely follow the meaning",
                 cat_soft[l, h] > 3 * mat_soft[l, h] and abs(n_soft - n_tired) < cat_soft.size // 6,
                 l=int(l), h=int(h), c=cat_soft[l, h], m=mat_soft[l, h], a=n_tired, b=n_soft, n=cat_soft.size)


def exercise_2(lesson):
    """Add "it is raining and i am outside" to the sentences of step 4.

    You should see it land with the rain group (cosine 0.59–0.61, against at most 0.13 with the others),
    though being out in the rain is not liking a walk in it: sentence vectors mix topic and meaning.
    """
    model, tok = load()
    sentences = SENTENCES + ["it is raining and i am outside"]
    sims = cosine_similarity(*(SentenceEncoder(model, tok).encode(sentences),) * 2)
    new = sims[-1, :-1]
    for s_, v in zip(SENTENCES, new):
        print(f"    {v:+.2f}  {s_}")
    lesson.claim("\"it is raining and i am outside\" scores {lo:.2f}–{hi:.2f} with the three rain sentences and at "
                 "most {o:.2f} with the others: the shared topic (rain) pulls it into the group",
                 new[:3].min() > 0.4 > new[3:].max(), lo=float(new[:3].min()), hi=float(new[:3].max()),
                 o=float(new[3:].max()))


def exercise_3(lesson):
    """In step 4 use the [CLS] vector (last_hidden_state[:, 0]) instead of the mean over the tokens.

    You should see paraphrases still score highest, but every pair look alike (unrelated sentences ≈ 0.6):
    the gap shrinks from 0.72 to 0.35 — all-MiniLM-L6-v2 was trained with mean pooling, not with its
    [CLS] vector.
    """
    model, tok = load()
    mean_vectors = SentenceEncoder(model, tok).encode(SENTENCES)
    hidden = model(**tok(SENTENCES, return_tensors="np", padding=True)).last_hidden_state
    cls_vectors = hidden[:, 0]
    gaps = {}
    for name, vectors in (("mean pool", mean_vectors), ("[CLS]", cls_vectors)):
        r_mean, r_lo, c_mean, c_hi = rain_gap(cosine_similarity(vectors, vectors))
        gaps[name] = (r_mean - c_mean, r_lo, c_hi, c_mean)
        lesson.value(name, f"rain sentences {r_mean:.2f} (lowest {r_lo:.2f}), others {c_mean:.2f} "
                     f"(highest {c_hi:.2f}); gap {r_mean - c_mean:.2f}")
    g_mean, g_cls = gaps["mean pool"][0], gaps["[CLS]"][0]
    lesson.claim("[CLS] still puts paraphrases first (lowest {lo:.2f} > highest unrelated {hi:.2f}), but unrelated "
                 "pairs score {c:.2f} on average and the gap shrinks from {a:.2f} (mean pool) to {b:.2f}",
                 gaps["[CLS]"][1] > gaps["[CLS]"][2] and gaps["[CLS]"][3] > 0.4 and g_cls < 0.6 * g_mean,
                 lo=gaps["[CLS]"][1], hi=gaps["[CLS]"][2], c=gaps["[CLS]"][3], a=g_mean, b=g_cls)
