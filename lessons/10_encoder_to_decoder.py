"""From encoder to decoder

The article's Transformer has two halves: the encoder (lessons 02–09) and a decoder, "like the
encoder layer, with an extra decoder self-attention and encoder-decoder attention". We build the
decoder from the same pieces — the same Linear, LayerNorm, FFN and attention kernel — with two
changes: a causal mask (position i may only look at 0 … i) and cross-attention (queries from the
decoder, keys and values from the encoder). Then a tiny decoder-only language model (tinybert's
BertLMHeadModel) learns the generated corpus and writes text — the article's "text generation"
application — with a KV cache that keeps the past positions' keys and values.
"""
import time

import numpy as np

from _stepper import Code, Lesson
from _10_cross import source_and_cross
from _pretrain import encode, learned_tokenizer, train_causal_lm

import tinybert
from tinybert_kernels import dispatch
from tinybert_kernels import attention_numpy
from tinybert.training.corpus import generate_corpus
from tinybert.gradcheck import check_layer
from tinybert.losses import cross_entropy, next_token_loss
from tinybert.models import generation
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.cross_attention import CrossAttention
from tinybert.nn.decoder import DecoderLayer
from tinybert.nn.softmax import softmax

lesson = Lesson("10", "From encoder to decoder", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)
C, H, T = 16, 2, 7


def attention_weights(q, k, keep=None, causal=False):
    """The weights S [B, H, Tq, Tk] the kernel uses: the reference's masked scores A, softmax per row
    with the kernel's own row log-sum-exp: S = exp(A − lse). (The kernel never stores S; step 1 and 2
    check S · V against the layer's own Z.)"""
    _, lse = dispatch.attention_forward(q, k, k, mask=keep, causal=causal, backend="numpy")
    a = attention_numpy._scores(q, k, keep, causal, 1.0 / np.sqrt(q.shape[-1]))
    return attention_numpy._probs(a, lse)

# ------------------------------------------------------------------------------------------------
lesson.step("The causal mask: a decoder may not look ahead",
            """S = softmax(QKᵀ/√d_k + M),   M_ij = 0 if j ≤ i, −∞ if j > i      (d_k: the article's name for D, the head size C/H)""",
            code=[Code(MultiHeadSelfAttention.forward, "q, k, v = self._qkv(x, packing)", "dropout_p=p, dropout_seed"),
                  Code(attention_numpy._scores, "if causal:", "keep = c if")],
            article="math.decoder", letters=True)
x = rng.standard_normal((1, T, C))
enc_attn = MultiHeadSelfAttention(C, H, dtype=np.float64, backend="numpy", std=0.5).eval()
dec_attn = MultiHeadSelfAttention(C, H, dtype=np.float64, backend="numpy", std=0.5, causal=True).eval()
for name, param in dec_attn.named_parameters():
    param.data[...] = dict(enc_attn.named_parameters())[name].data      # the same weights
q = enc_attn._split(enc_attn.query.forward(x))
k = enc_attn._split(enc_attn.key.forward(x))
S_enc = softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(C // H))   # the encoder's weights, no mask
y = dec_attn.forward(x)
S_dec = attention_weights(q, k, causal=True)          # what the kernel computed inside dec_attn
_, _, _, v_dec, _, _, z_dec, _ = dec_attn.cache       # the layer's own V and Z = S · V
gap_dec = float(np.abs(S_dec @ v_dec - z_dec).max())
lesson.matrix("decoder weights S, head 0", S_dec[0, 0], precision=2)
x2 = x.copy()
x2[0, 4] += 10.0                                              # change token 4
y2 = dec_attn.forward(x2)
before_4, after_4 = float(np.abs(y2[0, :4] - y[0, :4]).max()), float(np.abs(y2[0, 4:] - y[0, 4:]).max())
lesson.claim("these weights are the layer's: S · V gives the Z the decoder layer computed to {g:.1e}; above the "
             "diagonal (the future) they are exactly {f}, where the encoder with the same weights puts {e:.2f} "
             "of each row's weight on average", gap_dec < 1e-12 and np.triu(S_dec[0], 1).sum() == 0
             and np.triu(S_enc[0], 1).sum(-1).mean() > 0.1, g=gap_dec,
             f=float(np.triu(S_dec[0], 1).sum()), e=float(np.triu(S_enc[0], 1).sum(-1).mean()))
lesson.claim("changing token 4 changes outputs 4–6 (by up to {a:.1f}) and leaves outputs 0–3 exactly as they "
             "were (change {b}): position i cannot depend on later tokens — what lets a decoder be trained to "
             "predict token i+1", before_4 == 0 and after_4 > 1, a=after_4, b=before_4)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), layout="constrained")
for ax, S_, title in ((axes[0], S_enc, "encoder: bidirectional"), (axes[1], S_dec, "decoder: causal mask")):
    im = ax.imshow(S_[0, 0], cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_title(f"{title} (head 0, same weights)")
fig.colorbar(im, ax=axes, label="attention weight", shrink=0.85)
lesson.savefig(fig, "masks")

# ------------------------------------------------------------------------------------------------
lesson.step("Cross-attention: the decoder reads the encoder",
            """Q = W_Q · h_decoder  [Tq, D];   K = W_K · h_encoder,  V = W_V · h_encoder  [Tk, D]   (per head)
S = softmax(QKᵀ/√d_k)  [Tq, Tk]  (padding of the source masked);   Z = S · V""",
            code=[Code(CrossAttention.forward, "q = self._split", "return self.out")], article="math.decoder")
src, src_mask, memory, cross = source_and_cross(C, H)   # a one-layer encoder's output for 6 tokens + 3 padding
z = cross.forward(x, memory, src_mask.astype(bool))
_, q_c, k_c, v_c, _, _, z_c, _ = cross.cache          # Q [1, H, Tq, D] of x, K, V [1, H, Tk, D] of the memory
S_cross = attention_weights(q_c, k_c, keep=src_mask.astype(bool))
gap_cross = float(np.abs(S_cross @ v_c - z_c).max())
noisy = memory.copy()
noisy[:, 6:] += 100 * rng.standard_normal(noisy[:, 6:].shape)   # change the memory at the padded positions
moved_pad = float(np.abs(cross.forward(x, noisy, src_mask.astype(bool)) - z).max())
noisy_real = memory.copy()
noisy_real[:, 5] += 1.0                                        # … and, for contrast, at one real position
moved_real = float(np.abs(cross.forward(x, noisy_real, src_mask.astype(bool)) - z).max())
lesson.show("memory (encoder out)", memory)
lesson.show("cross-attention out", z)
lesson.claim("the cross-attention weights form a Tq × Tk = {a} × {b} matrix per head (S · V gives the layer's Z "
             "to {g:.1e}), and the padded source positions get exactly {w} of them", S_cross.shape[-2:] ==
             (T, src.shape[1]) and S_cross[..., 6:].sum() == 0 and gap_cross < 1e-12,
             a=T, b=src.shape[1], w=float(S_cross[..., 6:].sum()), g=gap_cross)
lesson.claim("read from the layer itself: adding noise of size 100 to the memory at the 3 padded positions changes "
             "the cross-attention output by {p} (exactly nothing), while adding 1 at one real position changes it "
             "by {r:.2f}", moved_pad == 0 and moved_real > 1e-3, p=moved_pad, r=moved_real)
fig, ax = plt.subplots(figsize=(6, 4.2))
im = ax.imshow(S_cross[0, 0], cmap="viridis", vmin=0)
ax.set_xticks(range(src.shape[1]), [f"{j}{' pad' if src[0, j] == 0 else ''}" for j in range(src.shape[1])],
              rotation=45, fontsize=8)
ax.set_xlabel(f"encoder (source) position, Tk = {src.shape[1]}")
ax.set_ylabel(f"decoder (target) position, Tq = {T}")
ax.set_title("cross-attention weights (head 0): Tq × Tk")
fig.colorbar(im, ax=ax, label="attention weight")
lesson.savefig(fig, "cross_attention")

# ------------------------------------------------------------------------------------------------
lesson.step("The decoder layer, and its gradient check",
            """a = LN(x + CausalSelfAttn(x));  b = LN(a + CrossAttn(a, memory));  y = LN(b + FFN(b))""",
            code=[Code(DecoderLayer.forward), Code(DecoderLayer.backward)], article="math.decoder")
dec_cfg = tinybert.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              initializer_range=0.4, is_decoder=True, add_cross_attention=True)
layer = DecoderLayer(dec_cfg, None, np.random.default_rng(3), dtype=np.float64, backend="numpy")
xd = rng.standard_normal((2, 5, 8))
mem = rng.standard_normal((2, 6, 8))
res = check_layer(layer, xd, mem, input_names=["x", "memory"], max_checks=6 if lesson.small else 15)
grads = dict(layer.named_parameters())
res = {n: e for n, e in res.items() if not (n in grads and np.abs(grads[n].grad).max() < 1e-13)}
worst_dec = max(res.values())
lesson.claim("the decoder layer's hand-written backward passes the gradient check: {n} tensors (x, memory and "
             "every parameter; exact-zero key biases set apart), worst relative error {w:.1e}", worst_dec < 1e-7,
             n=len(res), w=worst_dec)

# ------------------------------------------------------------------------------------------------
lesson.step("A tiny causal language model on the generated corpus",
            """p(x_{t+1} | x_1 … x_t) = softmax(W_out · h_t);   L = −(1/N) Σ_t log p(x_{t+1} | x_≤t)""",
            code=[Code(train_causal_lm, "for step in range", "opt.step()"),
                  Code(next_token_loss, "loss, d = cross_entropy", "dlogits[:, :-1] = d"),
                  Code(cross_entropy, "zr -= zr.max", "zr[xp.arange(n), yr] -=")],
            article=["math.decoder", "apps.generation"])
texts = generate_corpus(4000, seed=lesson.seed)
tok = learned_tokenizer(texts)
ids, am = encode(tok, texts)
n_train = 3600                                   # the last 400 sentences are held out …
seen = set(texts[:n_train])
held = np.array([i for i in range(n_train, len(texts)) if texts[i] not in seen])   # … minus repeats of training ones
steps = 150 if lesson.small else 600
lm, losses = train_causal_lm(tok, ids[:n_train], am[:n_train], steps, seed=lesson.seed, rng=rng, log=print)
lm_cfg = lm.config
lesson.value("model", f"BertLMHeadModel: {lm_cfg.num_hidden_layers} decoder layers, C={lm_cfg.hidden_size}, "
                      f"{lm.num_parameters():,} parameters, vocab {tok.vocab_size}")
held_labels = np.where(am[held] == 1, ids[held], -100)
held_loss = float(next_token_loss(lm.forward(ids[held], attention_mask=am[held]), held_labels)[0])
prev, nxt = ids[:, :-1], ids[:, 1:]                          # every (token, next token) pair
real = am[:, 1:] == 1
V = tok.vocab_size
pairs = np.zeros((V, V))
np.add.at(pairs, (prev[:n_train][real[:n_train]], nxt[:n_train][real[:n_train]]), 1)    # training counts
bigram = (pairs + 0.01) / (pairs + 0.01).sum(1, keepdims=True)   # p(next | token), add-0.01 (less: < 0.01 lower)
unigram = (pairs.sum(0) + 1) / (pairs.sum() + V)                        # p(next), add-1 smoothing
hp, hn = prev[held][real[held]], nxt[held][real[held]]                  # the held-out targets the LM scored
bigram_loss, unigram_loss = float(-np.log(bigram[hp, hn]).mean()), float(-np.log(unigram[hn]).mean())
lesson.value("held-out next-token loss", f"LM {held_loss:.3f}, bigram {bigram_loss:.3f}, unigram {unigram_loss:.3f} "
                                         f"({len(held)} sentences not in training, {len(hn)} targets)")
lesson.claim("{n} steps bring the training loss from {a:.2f} (ln V = {u:.2f}, a uniform guess) to {b:.2f} (mean of "
             "the last 20 steps); on {h} held-out sentences the LM's loss is {l:.2f}, below a unigram model's "
             "{ul:.2f} and a bigram model's {bl:.2f} (both counted on the same training sentences)",
             held_loss < bigram_loss < unigram_loss and abs(losses[0] - np.log(V)) < 0.5,
             n=steps, a=losses[0], u=float(np.log(V)), b=float(np.mean(losses[-20:])), h=len(held),
             l=held_loss, ul=unigram_loss, bl=bigram_loss)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(np.arange(1, steps + 1), losses, lw=0.8, label="training loss")
ax.axhline(np.log(tok.vocab_size), color="gray", ls=":", label="uniform guess, ln V")
ax.axhline(bigram_loss, color="tab:orange", ls="--", label="bigram counts, held-out")
ax.axhline(held_loss, color="tab:green", ls="-.", label="this LM, held-out")
ax.set_xlabel("Adam step")
ax.set_ylabel("next-token cross-entropy")
ax.set_title("a tiny causal LM learning the generated corpus")
ax.legend()
lesson.savefig(fig, "lm_loss")

# ------------------------------------------------------------------------------------------------


def generate(prompt, temperature=0.7, max_new=20, seed=0):
    """Sample a continuation of ``prompt`` from the LM (BertLMHeadModel.generate, with its KV cache)."""
    ids = np.array([[tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize(prompt))])
    out = lm.generate(ids, max_new, do_sample=True, temperature=temperature, eos_token_id=tok.sep_token_id,
                      seed=seed)[0, 1:].tolist()
    out = out[:out.index(tok.sep_token_id)] if tok.sep_token_id in out else out
    return " ".join(tok.convert_ids_to_tokens(out))       # the corpus's spacing


lesson.step("Generating text, one token at a time",
            "x_{t+1} ~ softmax(logits_t / τ);  append;  repeat until [SEP]",
            code=[Code(generation.generate, "for _ in range(int(max_new_tokens))", "step_ids = new"),
                  Code(generation.next_tokens, "logits = filter_logits", "return np.minimum")],
            article="apps.generation")
samples = []
for i, prompt in enumerate(("anna has a", "the dogs", "tom went to the", "i loved the", "the soup was not")):
    out = generate(prompt, seed=lesson.seed + i)
    samples.append(out)
    print(f"  {prompt!r:>20} → {out}")
in_corpus = sum(s_ in set(texts) for s_ in samples)
lesson.value("samples that occur verbatim in the corpus", f"{in_corpus} of {len(samples)}")
lesson.say("""Each new token is sampled from the model's next-token distribution and fed back in: the
causal mask is what makes this consistent with training. Whether the new ones read like the corpus is
for you to judge — the article's "human evaluation", which no number here replaces.""")

# ------------------------------------------------------------------------------------------------
lesson.step("The KV cache: each step computes one new position",
            """step t without a cache: all t positions again;  with it: K = [K_past | k_t], V = [V_past | v_t]""",
            code=[Code(MultiHeadSelfAttention.forward, "if past is not None:", "self.present = (k, v)")],
            article="apps.generation")
prompt_ids = np.array([[tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize("the dogs"))])
n_new = 40 if lesson.small else 60
timed = {}
for use_cache in (True, False):
    t0 = time.perf_counter()
    timed[use_cache] = (lm.generate(prompt_ids, n_new, use_cache=use_cache), time.perf_counter() - t0)
lesson.claim("greedy decoding of {n} tokens gives the same tokens with the cache as with full recomputation",
             np.array_equal(timed[True][0], timed[False][0]), n=n_new)
lesson.value("time with / without the cache", f"{timed[True][1]:.2f} s / {timed[False][1]:.2f} s (look for the "
                                               "gap to grow with the length: bench/generation.py measures it)")

lesson.end([
    "A causal mask (MultiHeadSelfAttention(causal=True)) zeroes attention to future positions: changing token 4 leaves outputs 0–3 "
    "unchanged (10_masks.png).",
    "Cross-attention takes queries from the decoder and keys/values from the encoder's output, a "
    f"Tq × Tk = {T} × {src.shape[1]} weight matrix that ignores source padding (10_cross_attention.png).",
    f"The decoder layer is built from the encoder's pieces; its hand-written backward passes a gradient "
    f"check (worst relative error {worst_dec:.1e}).",
    f"A {lm_cfg.num_hidden_layers}-layer causal LM trained for {steps} steps brings the training loss from "
    f"{losses[0]:.2f} to {np.mean(losses[-20:]):.2f}, and {held_loss:.2f} on held-out sentences against a "
    f"bigram model's {bigram_loss:.2f} (10_lm_loss.png); it generates text token by token "
    f"({in_corpus} of {len(samples)} samples copied from the corpus).",
    "With a KV cache each generated token costs one position's work, and greedy decoding gives the same "
    "tokens as recomputing everything.",
], try_next=[
    ("In step 1 create the decoder attention without the mask: causal=False in MultiHeadSelfAttention(...).",
     "outputs 0–3 changing when token 4 changes (with the mask, the same weights leave them exactly as "
     "they were) — and step 1's claims fail."),
    ("In step 5 sample 20 continuations of \"the dogs\" at temperature 0.2, then at 1.5.",
     "at 0.2 fewer different sentences and more of them found word for word in the corpus; at 1.5 more "
     "variety and fewer corpus sentences."),
    ("In step 2 forget the source's padding mask: cross.forward(x, memory) without src_mask.",
     "the 3 padded source positions get a share of every row's attention and the output changes: the "
     "decoder reads padding as text."),
])
