"""A real pretrained model: the article's code example, done right

The article loads a pretrained BERT, tokenizes 我喜欢在雨中漫步, runs the model, and then calls
tokenizer.decode(outputs[0]) — decoding the *hidden states* as if they were token ids. They are not:
outputs[0] is one H-dimensional vector per token. We run the same steps with tinybert on a real
checkpoint (all-MiniLM-L6-v2, loaded from its safetensors file), show what the output really is and
what can be done with it: nearest tokens, sentence similarity, and the attention of a real head.
"""
import numpy as np

from _stepper import Lesson

from tinybert.pipelines.article_example import ARTICLE_TEXT, nearest_tokens, run_bert, why_not_decode
from tinybert.io.checkpoint import load_pretrained
from tinybert.models import BertModel
from tinybert.pipelines.sentence import SentenceEncoder, cosine_similarity, mean_pool
from tinybert.text.tokenizer import BertTokenizer

lesson = Lesson("09", "A real pretrained model", __doc__)
plt = lesson.plt

# ------------------------------------------------------------------------------------------------
lesson.step("Load the model and the tokenizer",
            "model = BertModel.from_pretrained(…);  tokenizer = BertTokenizer.from_pretrained(…)",
            code=[load_pretrained, BertTokenizer.from_pretrained])
model = BertModel.from_pretrained("all-MiniLM-L6-v2", attention_backend="numpy").eval()
tok = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
c = model.config
lesson.value("config", f"L={c.num_hidden_layers}, C={c.hidden_size}, H={c.num_attention_heads}, "
                       f"vocab {c.vocab_size}")
lesson.value("parameters", f"{model.num_parameters():,}")

# ------------------------------------------------------------------------------------------------
lesson.step("The article's steps: tokenize, ids, forward",
            """tokens = tokenizer.tokenize(text);  ids = convert_tokens_to_ids(tokens);  outputs = model(ids)""",
            code=[run_bert, BertModel.forward])
tokens = tok.tokenize(ARTICLE_TEXT)
lesson.value("tokenize", tokens)
enc, hidden = run_bert(model, tok, ARTICLE_TEXT)
lesson.show("input_ids", enc["input_ids"], max_items=10)
lesson.show("outputs[0]", hidden)
lesson.say(f"""{tokens.count('[UNK]')} of the {len(tokens)} characters are [UNK] (lesson 01): this
English vocabulary lacks them, so the model never sees most of the sentence.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Why tokenizer.decode(outputs[0]) is wrong",
            "decode: ids (integers) → text;   outputs[0]: [1, T, H] floats — vectors, not ids",
            code=why_not_decode)
lesson.say(why_not_decode(hidden))
wrong = np.asarray(hidden[0]).astype(int)          # what a forced cast would feed to decode
lesson.value("outputs[0] cast to int (first row)", wrong[0, :10].tolist())
vals, counts = np.unique(wrong, return_counts=True)
lesson.value("distinct integers after the cast", dict(zip(vals.tolist(), counts.tolist())))
lesson.say(f"""Casting to int turns each vector into {hidden.shape[-1]} small integers, {np.mean(wrong == 0):.0%}
of them 0 = "{tok.convert_ids_to_tokens(0)}" (and negative ones that are no id at all), so "decoding" would print
{hidden.shape[-1]} tokens per position that have nothing to do with the text.""")

# ------------------------------------------------------------------------------------------------
lesson.step("What the vectors do mean: the nearest vocabulary tokens",
            "score(t, v) = cos(h_t, W_E[v])    W_E: the word-embedding matrix [V, H]",
            code=nearest_tokens)
text_en = "i like to walk in the rain"
enc_en, hidden_en = run_bert(model, tok, text_en)
near = nearest_tokens(model, tok, hidden_en, k=3)
for t_, nn in zip(tok.convert_ids_to_tokens(enc_en["input_ids"][0]), near):
    print(f"  {t_:>8} → " + ", ".join(f"{w} ({s:.2f})" for w, s in nn))
lesson.say("""Each output vector still lies close to its own token's embedding, mixed with its context.
That is the honest "decoding" of an encoder: a vector per token, to be compared, pooled or fed to a
task head — not text.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Sentence similarity: mean-pool, normalise, cosine",
            """e = Σ_t m_t h_t / Σ_t m_t;   ê = e / ‖e‖;   sim(a, b) = ê_a · ê_b""",
            code=[mean_pool, SentenceEncoder.encode, cosine_similarity])
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
rain = sims[:3, :3][np.triu_indices(3, 1)].mean()
cross = sims[:3, 3:].mean()
lesson.value("mean similarity within the 'rain' group", float(rain))
lesson.value("mean similarity rain vs others", float(cross))
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
lesson.step("The attention of a real head",
            "S = softmax(QKᵀ/√d_k) of one head, recomputed from the Q, K the layer cached",
            code="tinybert/nn/attention.py: MultiHeadSelfAttention.forward (cache)")
text_att = "the cat sat on the mat because it was tired"
enc_att = tok(text_att)
ids_att = enc_att["input_ids"][None]
model.forward(ids_att)
toks_att = tok.convert_ids_to_tokens(enc_att["input_ids"])
maps = []
for layer in model.encoder.layers:
    _, q, k, _, scale, _, _, _ = layer.attention.cache
    s = (q @ np.swapaxes(k, -1, -2))[0] * scale
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    maps.append(p / p.sum(-1, keepdims=True))
maps = np.stack(maps)                                       # [L, H, T, T]
# the head whose weights are most concentrated on one key ("sharpest"), a readable example
T_ = len(toks_att)
prev = np.mean([[maps[l, h, i, i - 1] for i in range(1, T_)] for l in range(maps.shape[0])
                for h in range(maps.shape[1])], axis=1).reshape(maps.shape[:2])
L_, H_ = np.unravel_index(np.argmax(prev), prev.shape)
lesson.value("head that attends most to the previous token", f"layer {L_}, head {H_} "
             f"(mean weight on token i−1: {prev[L_, H_]:.2f})")
fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
for ax, (l, h), title in ((axes[0], (L_, H_), "previous-token head"),
                          (axes[1], (maps.shape[0] - 1, 0), "a last-layer head")):
    im = ax.imshow(maps[l, h], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(T_), toks_att, rotation=90, fontsize=8)
    ax.set_yticks(range(T_), toks_att, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(f"{title}: layer {l}, head {h}")
fig.colorbar(im, ax=axes, label="attention weight", shrink=0.8)
fig.suptitle(f"all-MiniLM-L6-v2 on '{text_att}'")
lesson.savefig(fig, "attention_head")

lesson.end([
    f"all-MiniLM-L6-v2 ({model.num_parameters():,} parameters) loads into tinybert's own layers; "
    f"on 我喜欢在雨中漫步 its English vocabulary gives {tokens.count('[UNK]')} [UNK] of {len(tokens)}.",
    f"outputs[0] is a [1, T, {c.hidden_size}] float array — hidden vectors, not ids — so "
    "tokenizer.decode cannot read it; nearest-token lookup shows what the vectors are close to.",
    f"Mean-pooled, normalised vectors give sentence similarity: {rain:.2f} within paraphrases vs "
    f"{cross:.2f} against unrelated sentences (09_similarity.png).",
    f"Real heads specialise: layer {L_}, head {H_} puts {prev[L_, H_]:.0%} of its weight on the previous "
    "token (09_attention_head.png).",
])
