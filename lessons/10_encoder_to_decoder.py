"""From encoder to decoder

The article's Transformer has two halves: the encoder (lessons 02–09) and a decoder, "like the
encoder layer, with an extra decoder self-attention and encoder-decoder attention". We build the
decoder from the same pieces — the same Linear, LayerNorm, FFN and attention kernel — with two
changes: a causal mask (position i may only look at 0 … i) and cross-attention (queries from the
decoder, keys and values from the encoder). Then a tiny decoder-only language model learns the
generated corpus and writes text — the article's "text generation" application.
"""
import numpy as np

from _stepper import Lesson
from _decoder import CausalSelfAttention, CrossAttention, DecoderLayer, TinyCausalLM
from _pretrain import encode, learned_tokenizer

import tinybert
import tinybert_kernels
from tinybert.training.corpus import generate_corpus
from tinybert.gradcheck import check_layer
from tinybert.losses import cross_entropy
from tinybert.nn.attention import MultiHeadSelfAttention

lesson = Lesson("10", "From encoder to decoder", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)
C, H, T = 16, 2, 7

# ------------------------------------------------------------------------------------------------
lesson.step("The causal mask: a decoder may not look ahead",
            """S = softmax(QKᵀ/√d_k + M),   M_ij = 0 if j ≤ i, −∞ if j > i""",
            code=[CausalSelfAttention.forward, tinybert_kernels.attention_forward])
x = rng.standard_normal((1, T, C))
enc_attn = MultiHeadSelfAttention(C, H, dtype=np.float64, backend="numpy", std=0.5).eval()
dec_attn = CausalSelfAttention(C, H, np.random.default_rng(1), std=0.5, dtype=np.float64)
for a, b in ((dec_attn.query, enc_attn.query), (dec_attn.key, enc_attn.key),
             (dec_attn.value, enc_attn.value), (dec_attn.out, enc_attn.out)):
    a.weight.data[:], a.bias.data[:] = b.weight.data, b.bias.data      # the same weights
enc_attn.forward(x)
q, k = enc_attn.cache[1], enc_attn.cache[2]
s = q @ np.swapaxes(k, -1, -2) / np.sqrt(C // H)
P_enc = np.exp(s - s.max(-1, keepdims=True))
P_enc /= P_enc.sum(-1, keepdims=True)
y = dec_attn.forward(x)
P_dec = dec_attn.weights()
lesson.matrix("decoder weights, head 0", P_dec[0, 0], precision=2)
lesson.value("weight above the diagonal (future)", float(np.triu(P_dec[0, 0], 1).sum()))
x2 = x.copy()
x2[0, 4] += 10.0                                              # change token 4
y2 = dec_attn.forward(x2)
lesson.value("change token 4: max change of outputs 0–3", float(np.abs(y2[0, :4] - y[0, :4]).max()))
lesson.value("change token 4: max change of outputs 4–6", float(np.abs(y2[0, 4:] - y[0, 4:]).max()))
lesson.say("""With the same weights, the encoder lets every position see the whole sentence (BERT is
bidirectional); the decoder's row i is zero right of the diagonal, so the output at position i
cannot depend on later tokens — what lets it be trained to predict token i+1.""")
fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), layout="constrained")
for ax, P, title in ((axes[0], P_enc, "encoder: bidirectional"), (axes[1], P_dec, "decoder: causal mask")):
    im = ax.imshow(P[0, 0], cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_title(f"{title} (head 0, same weights)")
fig.colorbar(im, ax=axes, label="attention weight", shrink=0.85)
lesson.savefig(fig, "masks")

# ------------------------------------------------------------------------------------------------
lesson.step("Cross-attention: the decoder reads the encoder",
            """Q = W_Q · h_decoder  [Tq, d];   K = W_K · h_encoder,  V = W_V · h_encoder  [Tk, d]
S = softmax(QKᵀ/√d_k)  [Tq, Tk]  (padding of the source masked);   Z = S · V""",
            code=[CrossAttention.forward, tinybert.BertModel.forward])
cfg = tinybert.BertConfig(vocab_size=40, hidden_size=C, num_hidden_layers=1, num_attention_heads=H,
                          intermediate_size=2 * C, max_position_embeddings=16,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5)
encoder = tinybert.BertModel(cfg, seed=0, dtype=np.float64, attention_backend="numpy").eval()
src = np.array([[2, 11, 17, 23, 5, 3, 0, 0, 0]])               # 6 real tokens + 3 padding
src_mask = (src != 0).astype(int)
memory, _ = encoder.forward(src, attention_mask=src_mask)     # [1, Tk=9, C]
cross = CrossAttention(C, H, np.random.default_rng(2), std=0.5, dtype=np.float64)
z = cross.forward(x, memory, src_mask.astype(bool))
P_cross = cross.weights()
lesson.show("memory (encoder out)", memory)
lesson.show("cross-attention out", z)
lesson.value("weight on padded source positions", float(P_cross[..., 6:].sum()))
fig, ax = plt.subplots(figsize=(6, 4.2))
im = ax.imshow(P_cross[0, 0], cmap="viridis", vmin=0)
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
            code=[DecoderLayer.forward, DecoderLayer.backward, check_layer])
layer = DecoderLayer(8, 2, 16, np.random.default_rng(3), cross=True, std=0.4, dtype=np.float64)
xd = rng.standard_normal((2, 5, 8))
mem = rng.standard_normal((2, 6, 8))
res = check_layer(layer, xd, mem, input_names=["x", "memory"], max_checks=6 if lesson.small else 15)
grads = dict(layer.named_parameters())
res = {n: e for n, e in res.items() if not (n in grads and np.abs(grads[n].grad).max() < 1e-13)}
worst_dec = max(res.values())
lesson.value("tensors checked", len(res), "x, memory and every parameter (exact-zero key biases set apart)")
lesson.value("worst relative error", worst_dec)

# ------------------------------------------------------------------------------------------------
lesson.step("A tiny causal language model on the embedded corpus",
            """p(x_{t+1} | x_1 … x_t) = softmax(W_out · h_t);   L = −(1/N) Σ_t log p(x_{t+1} | x_≤t)""",
            code=[TinyCausalLM.forward, TinyCausalLM.backward, cross_entropy, tinybert.Adam.step])
texts = generate_corpus(4000, seed=lesson.seed)
tok = learned_tokenizer(texts)
ids, am = encode(tok, texts)
lm = TinyCausalLM(tok.vocab_size, hidden=64, heads=4, layers=2, seed=lesson.seed)
lesson.value("model", f"{len(lm.layers)} decoder layers, C=64, {lm.num_parameters():,} parameters, "
                      f"vocab {tok.vocab_size}")
opt = tinybert.Adam(lm.parameters(), lr=3e-3)
steps = 150 if lesson.small else 600
losses = []
for step in range(1, steps + 1):
    rows = rng.integers(0, len(ids), 32)
    t = int(am[rows].sum(1).max())
    x_in, mask_in = ids[rows, :t], am[rows, :t]
    inputs, targets = x_in[:, :-1], np.where(mask_in[:, 1:] == 1, x_in[:, 1:], -100)   # shift by one
    logits = lm.forward(inputs)
    loss, dlogits = cross_entropy(logits, targets)
    lm.zero_grad()
    lm.backward(dlogits)
    tinybert.clip_grad_norm(lm.parameters(), 1.0)
    opt.step()
    losses.append(loss)
    if step % max(1, steps // 5) == 0:
        print(f"  step {step:>4}  next-token loss {loss:.3f}  (perplexity {np.exp(loss):.1f})")
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(np.arange(1, steps + 1), losses, lw=0.8, label="training loss")
ax.axhline(np.log(tok.vocab_size), color="gray", ls=":", label="uniform guess, ln V")
ax.set_xlabel("Adam step")
ax.set_ylabel("next-token cross-entropy")
ax.set_title("a tiny causal LM learning the generated corpus")
ax.legend()
lesson.savefig(fig, "lm_loss")

# ------------------------------------------------------------------------------------------------
lesson.step("Generating text, one token at a time",
            "x_{t+1} ~ softmax(logits_t / τ);  append;  repeat until [SEP]")
gen_rng = np.random.default_rng(lesson.seed)


def generate(prompt, temperature=0.7, max_new=20):
    seq = [tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize(prompt))
    for _ in range(max_new):
        logits = lm.forward(np.array([seq]))[0, -1] / temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        nxt = int(gen_rng.choice(len(p), p=p))
        if nxt == tok.sep_token_id:
            break
        seq.append(nxt)
    return " ".join(tok.convert_ids_to_tokens(seq[1:]))       # the corpus's spacing


samples = []
for prompt in ("anna has a", "the dogs", "tom went to the", "i loved the", "the soup was not"):
    out = generate(prompt)
    samples.append(out)
    print(f"  {prompt!r:>20} → {out}")
in_corpus = sum(s_ in set(texts) for s_ in samples)
lesson.say(f"""Each new token is sampled from the model's next-token distribution and fed back in:
the causal mask is what makes this consistent with training. {in_corpus} of {len(samples)} samples
are sentences that occur verbatim in the corpus; the rest are new combinations in its style.""")

lesson.end([
    "A causal mask zeroes attention to future positions: changing token 4 leaves outputs 0–3 "
    "unchanged (10_masks.png).",
    "Cross-attention takes queries from the decoder and keys/values from the encoder's output, a "
    f"Tq × Tk = {T} × {src.shape[1]} weight matrix that ignores source padding (10_cross_attention.png).",
    f"The decoder layer is built from the encoder's pieces; its hand-written backward passes a gradient "
    f"check (worst relative error {worst_dec:.1e}).",
    f"A 2-layer causal LM trained for {steps} steps brings next-token loss from "
    f"{losses[0]:.2f} to {np.mean(losses[-20:]):.2f} (10_lm_loss.png) and generates text in the "
    "corpus's style.",
])
