"""Solutions to lesson 10's exercises (from encoder to decoder). Run one with
``python lessons/10_encoder_to_decoder.py --small --exercise k``."""
import numpy as np

from _10_cross import source_and_cross
from _pretrain import encode, learned_tokenizer, train_causal_lm

from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.softmax import softmax
from tinybert.training.corpus import generate_corpus

C, H, T = 16, 2, 7                                     # lesson 10's sizes


def exercise_1(lesson):
    """In step 1 create the decoder attention without the mask: causal=False in MultiHeadSelfAttention(...).

    You should see: changing token 4 now changes outputs 0–3 as well — position i reads later tokens,
    so such a model could not be trained to predict token i+1 from tokens 0…i; with causal=True the
    same weights leave outputs 0–3 exactly as they were."""
    x = np.random.default_rng(lesson.seed).standard_normal((1, T, C))
    x2 = x.copy()
    x2[0, 4] += 10.0                                         # change token 4
    change = {}
    for causal in (True, False):
        attn = MultiHeadSelfAttention(C, H, dtype=np.float64, backend="numpy", std=0.5, causal=causal,
                                      init_rng=np.random.default_rng(1)).eval()
        change[causal] = float(np.abs(attn.forward(x2)[0, :4] - attn.forward(x)[0, :4]).max())
        lesson.value(f"causal={causal!s:<5}", f"outputs 0–3 change by up to {change[causal]:.3g}")
    lesson.claim("without the mask, changing token 4 changes outputs 0–3 by up to {a:.2f}; with it, by {b} "
                 "(the same weights)", change[False] > 0.1 and change[True] == 0, a=change[False], b=change[True])


def exercise_2(lesson):
    """In step 5 sample at temperature 0.2, then 1.5: 20 samples from the prompt "the dogs" each.

    You should see: at 0.2 fewer different sentences, and more of them sentences the corpus holds
    word for word; at 1.5 more variety and more broken text (fewer of them in the corpus)."""
    texts = generate_corpus(4000, seed=lesson.seed)
    tok = learned_tokenizer(texts)
    ids, am = encode(tok, texts)
    lm, _ = train_causal_lm(tok, ids, am, 150 if lesson.small else 600, seed=lesson.seed, log=print)
    prompt = np.array([[tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize("the dogs"))])
    corpus = set(texts)
    seen = {}
    for temperature in (0.2, 1.5):
        samples = []
        for i in range(20):
            out = lm.generate(prompt, 20, do_sample=True, temperature=temperature, eos_token_id=tok.sep_token_id,
                              seed=lesson.seed + i)[0, 1:].tolist()
            out = out[:out.index(tok.sep_token_id)] if tok.sep_token_id in out else out
            samples.append(" ".join(tok.convert_ids_to_tokens(out)))
        seen[temperature] = (len(set(samples)), sum(s in corpus for s in samples))
        print(f"  τ = {temperature}: {samples[0]!r}, {samples[1]!r}, …")
        lesson.value(f"τ = {temperature}", f"{seen[temperature][0]} different sentences of 20, "
                                           f"{seen[temperature][1]} in the corpus word for word")
    (d_lo, c_lo), (d_hi, c_hi) = seen[0.2], seen[1.5]
    lesson.claim("at τ = 0.2: {a} different sentences of 20, {b} of them in the corpus; at τ = 1.5: {c} "
                 "different, {d} in the corpus", d_lo < d_hi and c_lo > c_hi, a=d_lo, b=c_lo, c=d_hi, d=c_hi)


def exercise_3(lesson):
    """In step 2 forget the source's padding mask: call cross.forward(x, memory) without it.

    You should see: the 3 padded source positions get a share of every decoder position's attention
    (about their count's share, 3 of 9, at these random weights), and the output changes: the decoder
    now reads padding as if it were text."""
    _, src_mask, memory, cross = source_and_cross(C, H)                 # step 2's source and layer
    x = np.random.default_rng(lesson.seed).standard_normal((1, T, C))
    z_masked = cross.forward(x, memory, src_mask.astype(bool))
    z_open = cross.forward(x, memory)
    _, q, k, *_ = cross.cache
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(C // H)
    w = softmax(s)                                                     # the weights without a mask
    on_pad = float(w[..., 6:].sum(-1).mean())
    diff = float(np.abs(z_open - z_masked).max())
    lesson.claim("without the mask the padded positions get {p:.0%} of the attention on average (with it: 0), "
                 "and the output changes by up to {d:.2f}", on_pad > 0.1 and diff > 0.01, p=on_pad, d=diff)
