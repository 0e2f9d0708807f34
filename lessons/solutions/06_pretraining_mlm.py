"""Solutions to lesson 06's exercises (pretraining with MLM). Run one with
``python lessons/06_pretraining_mlm.py --small --exercise k``."""
import math

import numpy as np

from _pretrain import encode, learned_tokenizer, pretrain_small

from tinybert.training.corpus import ANIMALS, COLORS, VERBS, generate_corpus
from tinybert.training.masking import mask_tokens


def held_out(kind_marker, seed, n=3000):
    """Sentences of one template family (those containing ``kind_marker``) from a corpus drawn with
    another seed than the training one: the training run excludes them."""
    return sorted({t for t in generate_corpus(n, seed=seed + 1000) if kind_marker in t})


def masked_logits(model, tok, texts, word_index):
    """The model's logits at word ``word_index`` (counted on whitespace words) of each text, masked.
    -> (logits [N, V], true ids [N])"""
    words = [t.split() for t in texts]
    true = np.array(tok.convert_tokens_to_ids([w[word_index] for w in words]))
    masked = [" ".join(w[:word_index] + ["[MASK]"] + w[word_index + 1:]) for w in words]
    enc = tok(masked, padding=True)
    x = enc["input_ids"]
    rows, cols = np.nonzero(x == tok.mask_token_id)
    model.eval()
    logits = model.forward(x, attention_mask=enc["attention_mask"])
    return logits[rows, cols], true


def colour_picks(model, tok, texts):
    """The model's favourite of the 8 colours at the masked last colour of "… has a C thing . the thing
    of … is [MASK] .", and the colour said earlier. -> (picked ids [N], true ids [N])"""
    logits, true = masked_logits(model, tok, texts, -2)           # "... is [MASK] ."
    colours = np.array(tok.convert_tokens_to_ids(list(COLORS)))
    return colours[logits[:, colours].argmax(-1)], true


def exercise_1(lesson):
    """Does the model copy a word from earlier in the sentence? In "anna has a red kite . the kite of
    anna is [MASK] ." only the colour said earlier is right. Mask the last colour of such sentences
    that the model never saw (excluded from its training corpus) and count how often its favourite
    among the 8 colours is the one said earlier. With --small the lesson's 150 steps are trained;
    without, 1500 (a few minutes).

    You should see: no more often than chance (1 in 8), at 150 steps and still at 1500: the model names
    one colour for most sentences, whatever colour was said — it has learned that a colour goes there,
    not which. This model, trained this long, does not copy: an effect it does not reach, which three
    probes could not have told."""
    steps = 150 if lesson.small else 1500
    unseen = held_out(" has a ", lesson.seed)
    model, tok, _ = pretrain_small(steps, seed=lesson.seed, exclude=set(unseen), log=print)
    pick, true = colour_picks(model, tok, unseen)
    share, n = float((pick == true).mean()), len(unseen)
    se = math.sqrt(1 / 8 * 7 / 8 / n)
    ids, counts = np.unique(pick, return_counts=True)
    top = tok.convert_ids_to_tokens(int(ids[counts.argmax()]))
    lesson.value("held-out colour sentences", n)
    lesson.value("the earlier colour is the favourite", f"{share:.3f} (chance 1/8 = 0.125, standard error {se:.3f})")
    lesson.value("the favourite colour", f"'{top}' for {counts.max() / n:.0%} of the sentences")
    lesson.claim("after {s} steps, on {n} sentences it never saw, the earlier colour is the model's favourite "
                 "in {a:.1%}, within 3 standard errors of chance (12.5%), and it names '{c}' for {k:.0%} of them, "
                 "whatever colour was said: it does not copy", abs(share - 1 / 8) < 3 * se and counts.max() > n / 2,
                 s=steps, n=n, a=share, c=top, k=counts.max() / n)


def exercise_2(lesson):
    """In step 2 draw other masks: np.random.default_rng(5) in place of np.random.default_rng(4).

    You should see: every share moves, by about a standard error (two independent draws differ by
    √2 · SE ≈ 1.4 SE in standard deviation, 1.1 SE on average), within the 3·√2 ≈ 4.2 SE two draws
    allow, and stays within 3 standard errors of BERT's recipe: a gap like 0.102 against 0.100 is
    what sampling alone produces."""
    texts = generate_corpus(6000, seed=lesson.seed)[:5500]
    tok = learned_tokenizer(texts)
    ids, am = encode(tok, texts)
    eligible = (am == 1) & ~np.isin(ids, tok.all_special_ids)
    V = tok.vocab_size
    expected = {"chosen / eligible": 0.15, "[MASK] / chosen": 0.8, "random / chosen": 0.1 * (1 - 1 / V),
                "kept / chosen": 0.1 + 0.1 / V}
    shares, ses = {}, {}
    for seed in (4, 5):
        inp, lab = mask_tokens(ids, np.random.default_rng(seed), tok.mask_token_id, V, tok.all_special_ids,
                               attention_mask=am)
        chosen = lab != -100
        n = {"chosen / eligible": eligible.sum()}
        n.update({k: chosen.sum() for k in expected if k != "chosen / eligible"})
        shares[seed] = {"chosen / eligible": chosen.sum() / eligible.sum(),
                        "[MASK] / chosen": (chosen & (inp == tok.mask_token_id)).sum() / chosen.sum(),
                        "random / chosen": (chosen & (inp != ids) & (inp != tok.mask_token_id)).sum() / chosen.sum(),
                        "kept / chosen": (chosen & (inp == ids)).sum() / chosen.sum()}
        ses[seed] = {k: math.sqrt(expected[k] * (1 - expected[k]) / n[k]) for k in expected}
    for k in expected:
        lesson.value(f"{k:<18}", f"rng(4) {shares[4][k]:.4f}   rng(5) {shares[5][k]:.4f}   "
                                 f"expected {expected[k]:.4f} ± {ses[5][k]:.4f}")
    moved = max(abs(shares[5][k] - shares[4][k]) / ses[5][k] for k in expected)
    worst = max(abs(shares[5][k] - expected[k]) / ses[5][k] for k in expected)
    lesson.claim("with rng(5) every share moved, by at most {m:.1f} standard errors (two draws' difference has "
                 "standard deviation √2 SE: 3·√2 = 4.2 SE is its bound), and every share is within 3 standard "
                 "errors of the recipe (largest gap {w:.1f}): the masking holds, the digits after the second are "
                 "sampling noise", moved < 3 * math.sqrt(2) and worst < 3
                 and all(shares[5][k] != shares[4][k] for k in expected), m=moved, w=worst)
