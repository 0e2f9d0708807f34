"""A real pretrained model: the article's code example, done right

The article loads a pretrained BERT, tokenizes 我喜欢在雨中漫步, runs the model, and then calls
tokenizer.decode(outputs[0]) — decoding hidden states as if they were token ids. They are not:
outputs = model(inputs)[0] is the last hidden state [1, T, H], so outputs[0] is [T, H], one
H-dimensional vector per token. We run the same steps with tinybert on a real
checkpoint (all-MiniLM-L6-v2, loaded from its safetensors file), show what the output really is and
what can be done with it: nearest tokens, sentence similarity, the attention of a real head,
and what the pronoun "it" attends to.
"""
import numpy as np

from _stepper import Code, Lesson

from tinybert.pipelines.article_example import ARTICLE_TEXT, nearest_tokens, run_bert, why_not_decode
from tinybert.io.checkpoint import load_pretrained
from tinybert.models import BertModel
from tinybert.nn.softmax import softmax
from tinybert.pipelines.sentence import SentenceEncoder, cosine_similarity, mean_pool
from tinybert.text.tokenizer import BertTokenizer

lesson = Lesson("09", "A real pretrained model", __doc__)
plt = lesson.plt

# ------------------------------------------------------------------------------------------------
lesson.step("Load the model and the tokenizer",
            "model = BertModel.from_pretrained(…);  tokenizer = BertTokenizer.from_pretrained(…)",
            code=[Code(load_pretrained, "folder = checkpoint_folder(path)", "model = cls("),
                  Code(BertTokenizer.from_pretrained, "path = resolve_model_path(path)", "folder, vocab_file = path")],
            article="code.init")
model = BertModel.from_pretrained("all-MiniLM-L6-v2", attention_backend="numpy").eval()
tok = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
c = model.config
lesson.claim("all-MiniLM-L6-v2 loads into tinybert's own layers: L={L}, C={C}, H={H}, vocabulary {V:,}, "
             "{n:,} parameters", c.num_hidden_layers == 6 and c.hidden_size == 384 and 20e6 < model.num_parameters() < 25e6,
             L=c.num_hidden_layers, C=c.hidden_size, H=c.num_attention_heads, V=c.vocab_size, n=model.num_parameters())

# ------------------------------------------------------------------------------------------------
lesson.step("The article's steps: tokenize, ids, forward",
            """tokens = tokenizer.tokenize(text);  ids = convert_tokens_to_ids(tokens)
outputs = model(inputs)[0]        the first output, the last hidden state: [1, T, H]""",
            code=[Code(run_bert, "enc = tokenizer", "return enc"), Code(BertModel.forward, "h = self.encoder", "return h")],
            article=["code.tokenize", "code.forward"])
tokens = tok.tokenize(ARTICLE_TEXT)
lesson.value("tokenize", tokens)
enc, outputs = run_bert(model, tok, ARTICLE_TEXT)          # the article's `outputs`
lesson.show("input_ids", enc["input_ids"], max_items=10)
lesson.show("outputs", outputs)
lesson.show("outputs[0]", outputs[0])
T = enc["input_ids"].shape[1]
lesson.claim("outputs is [1, T, H] = {a} (T = {T}: [CLS], {n} characters, [SEP]), so the article's "
             "outputs[0] is [T, H] = {b}: one {H}-dimensional float vector per token",
             outputs.shape == (1, T, c.hidden_size) and outputs[0].shape == (T, c.hidden_size),
             a=list(outputs.shape), T=T, n=len(tokens), b=list(outputs[0].shape), H=c.hidden_size)
lesson.claim("{u} of the {n} characters are [UNK] (lesson 01): this English vocabulary lacks them, so the "
             "model never sees most of the sentence", tokens.count("[UNK]") > len(tokens) // 2,
             u=tokens.count("[UNK]"), n=len(tokens))

# ------------------------------------------------------------------------------------------------
lesson.step("Why tokenizer.decode(outputs[0]) is wrong",
            "decode: ids (integers) → text;   outputs[0]: [T, H] floats — vectors, not ids",
            code=Code(why_not_decode), article="code.decode")
lesson.say(why_not_decode(outputs[0]))
wrong = np.asarray(outputs[0]).astype(int)                # what a forced cast would feed to decode
lesson.value("outputs[0] cast to int (first row)", wrong[0, :10].tolist())
vals, counts = np.unique(wrong, return_counts=True)
lesson.value("distinct integers after the cast", dict(zip(vals.tolist(), counts.tolist())))
lesson.claim("cast to int, each of the {T} vectors becomes {H} small integers — {z:.0%} of them 0 = "
             "\"{pad}\", {neg} negative (no id at all) — so \"decoding\" would print {H} tokens per position "
             "that have nothing to do with the text", np.mean(wrong == 0) > 0.5 and (wrong < 0).any(),
             T=T, H=c.hidden_size, z=np.mean(wrong == 0), pad=tok.convert_ids_to_tokens(0), neg=int((wrong < 0).sum()))

# ------------------------------------------------------------------------------------------------
lesson.step("What the vectors do mean: the nearest vocabulary tokens",
            "score(t, v) = cos(h_t, W_E[v])    W_E: the word-embedding matrix [V, H]",
            code=[Code(nearest_tokens, "W = to_numpy(bert.embeddings"), Code(nearest_tokens, "scores = l2_normalize(h)"),
                  Code(nearest_tokens, "for row in scores", "top = top[")], article="code.decode")
text_en = "i like to walk in the rain"
enc_en, hidden_en = run_bert(model, tok, text_en)
tokens_en = tok.convert_ids_to_tokens(enc_en["input_ids"][0])
near = nearest_tokens(model, tok, hidden_en, k=3)
near_in = nearest_tokens(model, tok, model.embeddings(enc_en["input_ids"], enc_en["token_type_ids"]), k=3)
print(f"  {'token':>8}   {'at the input (embedding layer)':<34} after 6 layers")
for t_, a_, b_ in zip(tokens_en, near_in, near):
    print(f"  {t_:>8} → {', '.join(w for w, _ in a_):<34} {', '.join(f'{w} ({s:.2f})' for w, s in b_)}")
own_in = sum(t_ == a_[0][0] for t_, a_ in zip(tokens_en, near_in))
own_out = sum(t_ == b_[0][0] for t_, b_ in zip(tokens_en, near))
moved = [f"{t_} → {b_[0][0]}" for t_, b_ in zip(tokens_en, near) if t_ != b_[0][0]]
lesson.claim("at the input every position's nearest token is its own ({a} of {n}); after six layers {b} of "
             "{n} still are, and the others have moved with their context ({m})",
             own_in == len(tokens_en) and len(tokens_en) // 2 <= own_out < own_in, a=own_in, b=own_out,
             n=len(tokens_en), m=", ".join(moved))
lesson.say("""That is the honest "decoding" of an encoder: a vector per token, to be compared, pooled or
fed to a task head — not text.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Sentence similarity: mean-pool, normalise, cosine",
            """e = Σ_t m_t h_t / Σ_t m_t;   ê = e / ‖e‖;   sim(a, b) = ê_a · ê_b""",
            code=[Code(mean_pool, "m = m.astype", "return summed"),
                  Code(SentenceEncoder.encode, "hidden, _ = self.model.forward", "e = l2_normalize"),
                  Code(cosine_similarity, "return l2_normalize")], article="concepts.transfer")
encoder = SentenceEncoder(model, tok)
sentences = ["i like to walk in the rain",
             "walking in the rain is something i enjoy",
             "a stroll under falling rain makes me happy",
             "the stock market fell sharply today",
             "shares dropped at the close of trading",
             "my cat sleeps on the sofa all day"]
E = encoder.encode(sentences)
sims = cosine_similarity(E, E)
lesson.show("embeddings", E)
lesson.matrix("cosine similarity", sims, precision=2, row_labels=[f"{i}" for i in range(len(sentences))],
              col_labels=[f"{i}" for i in range(len(sentences))])
for i, s_ in enumerate(sentences):
    print(f"    {i}: {s_}")
rain = sims[:3, :3][np.triu_indices(3, 1)]
cross = sims[:3, 3:]
lesson.claim("paraphrases score higher than unrelated sentences: the three 'rain' sentences {a:.2f} on "
             "average (lowest {lo:.2f}), against {b:.2f} with the others (highest {hi:.2f})",
             rain.min() > cross.max(), a=float(rain.mean()), lo=float(rain.min()), b=float(cross.mean()),
             hi=float(cross.max()))
fig, ax = plt.subplots(figsize=(8.5, 5.5))
im = ax.imshow(sims, cmap="viridis", vmin=0, vmax=1)
short = [s_ if len(s_) < 34 else s_[:32] + "…" for s_ in sentences]
ax.set_xticks(range(len(sentences)), [str(i) for i in range(len(sentences))])
ax.set_yticks(range(len(sentences)), [f"{i}: {s_}" for i, s_ in enumerate(short)], fontsize=8)
for i in range(len(sentences)):
    for j in range(len(sentences)):
        ax.text(j, i, f"{sims[i, j]:.2f}", ha="center", va="center", fontsize=8,
                color="white" if sims[i, j] < 0.6 else "black")
ax.set_xlabel("sentence")
ax.set_ylabel("sentence")
ax.set_title("all-MiniLM-L6-v2 sentence similarity (cosine of mean-pooled vectors)")
fig.colorbar(im, ax=ax, label="cosine similarity")
lesson.savefig(fig, "similarity")


# ------------------------------------------------------------------------------------------------
def attention_weights(model, ids):
    """S = softmax(QKᵀ/√d_k) of every layer and head: [L, H, T, T], recomputed from each layer's input."""
    h = model.embeddings(ids, np.zeros_like(ids))
    maps = []
    for layer in model.encoder.layers:
        a = layer.attention
        b_, t_, c_ = h.shape
        q = a.query.forward(h).reshape(b_, t_, a.num_heads, a.head_dim).transpose(0, 2, 1, 3)
        k = a.key.forward(h).reshape(b_, t_, a.num_heads, a.head_dim).transpose(0, 2, 1, 3)
        maps.append(softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(a.head_dim))[0])
        h = layer.forward(h)
    return np.stack(maps), h


lesson.step("The attention of real heads",
            "S = softmax(QKᵀ/√d_k) of every head, recomputed from each layer's input (its W_Q, W_K)",
            code=Code(attention_weights, "h = model.embeddings", "h = layer.forward(h)"), article="math.attention")
text_att = "the cat sat on the mat because it was tired"
enc_att = tok(text_att)
ids_att = enc_att["input_ids"][None]
maps, h_last = attention_weights(model, ids_att)          # [L, H, T, T]
toks_att = tok.convert_ids_to_tokens(enc_att["input_ids"])
T_ = len(toks_att)
lesson.claim("running the layers one by one gives the model's own output (max difference {e:.1e}), so "
             "these are the weights the model used", np.abs(h_last - model.forward(ids_att)[0]).max() < 1e-4,
             e=float(np.abs(h_last - model.forward(ids_att)[0]).max()))
prev = np.array([[np.mean([maps[l, h, i, i - 1] for i in range(1, T_)]) for h in range(maps.shape[1])]
                 for l in range(maps.shape[0])])
L_, H_ = np.unravel_index(np.argmax(prev), prev.shape)
lesson.claim("heads specialise: layer {l}, head {h} puts on average {w:.0%} of each token's weight on the "
             "token just before it (a uniform head would put {u:.0%})", prev[L_, H_] > 0.5,
             l=int(L_), h=int(H_), w=prev[L_, H_], u=1 / T_)

# ------------------------------------------------------------------------------------------------
lesson.step("Long-range dependencies: what does \"it\" attend to?",
            "S[l, h, i_it, j] for j = 'cat' (6 tokens back) and j = 'mat', in every layer l and head h",
            code=Code(attention_weights, "maps.append", "maps.append"), article="concepts.attention")
it, cat, mat = toks_att.index("it"), toks_att.index("cat"), toks_att.index("mat")
w_cat, w_mat = maps[:, :, it, cat], maps[:, :, it, mat]
best = np.unravel_index(np.argmax(w_cat), w_cat.shape)
order = np.argsort(-w_cat.ravel())[:3]
for flat in order:
    l, h = np.unravel_index(flat, w_cat.shape)
    lesson.value(f"layer {l}, head {h:>2}", f"'it' → 'cat' {w_cat[l, h]:.2f}   'it' → 'mat' {w_mat[l, h]:.2f}")
n_more = int((w_cat > w_mat).sum())
lesson.claim("attention reaches across the sentence in one step: in layer {l}, head {h}, \"it\" puts {c:.2f} of "
             "its weight on \"cat\", {d} tokens back, and only {m:.2f} on \"mat\"",
             w_cat[best] > 0.4 and w_cat[best] > 3 * w_mat[best], l=int(best[0]), h=int(best[1]), c=w_cat[best],
             d=it - cat, m=w_mat[best])
lesson.claim("but over all {n} heads \"cat\" gets more of \"it\"'s weight than \"mat\" in only {k}: attention "
             "weights show where information can flow, not that the model has resolved the pronoun",
             0.25 < n_more / w_cat.size < 0.75, n=w_cat.size, k=n_more)
fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), layout="constrained")
for ax, (l, h), title in ((axes[0], (L_, H_), "previous-token head"), (axes[1], best, "the head where 'it' → 'cat'")):
    im = ax.imshow(maps[l, h], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(T_), toks_att, rotation=90, fontsize=8)
    ax.set_yticks(range(T_), toks_att, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(f"{title}: layer {l}, head {h}")
fig.colorbar(im, ax=axes[:2], label="attention weight S", shrink=0.8)
x_ = np.arange(w_cat.size)
axes[2].bar(x_ - 0.2, w_cat.ravel(), 0.4, label="'it' → 'cat'")
axes[2].bar(x_ + 0.2, w_mat.ravel(), 0.4, label="'it' → 'mat'")
axes[2].set_xticks(range(0, w_cat.size, maps.shape[1]), [f"layer {l}" for l in range(maps.shape[0])], fontsize=8)
axes[2].set_xlabel(f"head (grouped by layer, {maps.shape[1]} per layer)")
axes[2].set_ylabel("attention weight from 'it'")
axes[2].set_title("every head: weight from 'it' on 'cat' and on 'mat'")
axes[2].legend()
fig.suptitle(f"all-MiniLM-L6-v2 on '{text_att}'")
lesson.savefig(fig, "attention_head")

lesson.end([
    f"all-MiniLM-L6-v2 ({model.num_parameters():,} parameters) loads into tinybert's own layers; "
    f"on 我喜欢在雨中漫步 its English vocabulary gives {tokens.count('[UNK]')} [UNK] of {len(tokens)}.",
    f"The article's outputs = model(inputs)[0] is [1, T, {c.hidden_size}] and its outputs[0] is "
    f"[T, {c.hidden_size}]: hidden vectors, not ids, so tokenizer.decode cannot read them; nearest-token "
    "lookup shows what the vectors are close to.",
    f"Mean-pooled, normalised vectors give sentence similarity: {rain.mean():.2f} within paraphrases vs "
    f"{cross.mean():.2f} against unrelated sentences (09_similarity.png).",
    f"Real heads specialise (layer {L_}, head {H_}: the previous token); one head links \"it\" to \"cat\" "
    f"({w_cat[best]:.2f}) six tokens back, while over all heads 'cat' and 'mat' get similar shares "
    f"({n_more} of {w_cat.size} heads favour 'cat'; 09_attention_head.png).",
], try_next=[
    ("Replace text_att by \"the cat sat on the mat because it was soft\" in step 6.",
     "look at the third panel: whether the heads now favour \"mat\" — and whether the claims of step 7, "
     "written for the tired cat, still hold."),
    ("Add sentences to step 5, e.g. \"it is raining and i am outside\".",
     "where it lands in the similarity matrix: shared words (\"rain\") pull it towards the rain group even "
     "when the meaning differs — sentence vectors mix meaning and wording."),
    ("Decode properly: print tok.convert_ids_to_tokens(enc['input_ids'][0]) next to outputs[0].",
     "the ids are what decode wants; the hidden states are the model's reading of them."),
])
