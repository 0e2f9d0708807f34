"""A real pretrained model: the article's code example, done right

The article loads a pretrained BERT, tokenizes 我喜欢在雨中漫步, runs the model, and then calls
tokenizer.decode(outputs[0]) — decoding hidden states as if they were token ids. They are not:
outputs = model(inputs)[0] is the last hidden state [1, T, H], so outputs[0] is [T, H], one
H-dimensional vector per token; and tokenize adds no [CLS]/[SEP], so the model reads a sequence
unlike any it was trained on. We run the article's code as written (torch → numpy, the import
changed), see both bugs, fix them, and go on with tinybert on a real
checkpoint (all-MiniLM-L6-v2, loaded from its safetensors file), show what the output really is and
what can be done with it: nearest tokens, sentence similarity, the attention of a real head,
and what the pronoun "it" attends to.
"""
import numpy as np

from _stepper import Code, Lesson

from tinybert.pipelines.article_example import ARTICLE_TEXT, nearest_tokens, run_bert, why_not_decode
from tinybert import BertModel, BertTokenizer
from tinybert.io.checkpoint import load_pretrained
from tinybert.nn.softmax import softmax
from tinybert.pipelines.sentence import SentenceEncoder, cosine_similarity, mean_pool

lesson = Lesson("09", "A real pretrained model", __doc__)
plt = lesson.plt

# ------------------------------------------------------------------------------------------------
lesson.step("The article's code, as written",
            """import torch → import numpy as np;  from transformers import … → from tinybert import …
tokens = tokenizer.tokenize(text);  ids = convert_tokens_to_ids(tokens);  outputs = model(inputs)[0]""",
            code=[Code(load_pretrained, "folder = checkpoint_folder(path)", "model = cls("),
                  Code(BertTokenizer.tokenize, "for word in basic_tokenize", "tokens.extend"),
                  Code(BertTokenizer.decode, "if ids.size and ids.dtype.kind", "raise InvalidType")],
            article=["code.init", "code.tokenize", "code.forward", "code.decode"])
lesson.say("""The article's example, with two changes only: torch → numpy (so torch.tensor becomes
np.array, and .numpy() goes, since the arrays already are NumPy), and the import. The model is the
packaged all-MiniLM-L6-v2 (bert-base-uncased's vocabulary, 6 layers of width 384), which runs
offline; bert-base-uncased loads the same way when transformers has downloaded it
(from_pretrained finds the local Hugging Face cache). torch.no_grad() has no NumPy counterpart:
NumPy records no graph, and from_pretrained returns the model in eval mode, as transformers does.""")
# --- the article's code, with import torch -> import numpy as np and the import changed ---
import numpy as np  # noqa: E402,F811  (as the article writes its imports; also at the top of this file)
from tinybert import BertModel, BertTokenizer  # noqa: E402,F811

# 初始化模型和分词器
model = BertModel.from_pretrained('all-MiniLM-L6-v2')
tokenizer = BertTokenizer.from_pretrained('all-MiniLM-L6-v2')

# 输入文本
input_text = "我喜欢在雨中漫步"

# 分词
tokens = tokenizer.tokenize(input_text)
ids = tokenizer.convert_tokens_to_ids(tokens)

# 准备输入张量
inputs = np.array([ids])

# 前向传播
outputs = model(inputs)[0]

# 解码输出
try:
    decoded_output = tokenizer.decode(outputs[0])
    decode_error = None
except TypeError as e:
    decode_error = e
# --- end of the article's code ---
tok, c = tokenizer, model.config
lesson.value("tokens", tokens)
lesson.show("inputs", inputs, max_items=10)
lesson.show("outputs", outputs)
lesson.claim("all-MiniLM-L6-v2 loads into tinybert's own layers in eval mode: L={L}, C={C}, H={H}, vocabulary "
             "{V:,}, {n:,} parameters", c.num_hidden_layers == 6 and c.hidden_size == 384
             and 20e6 < model.num_parameters() < 25e6 and not model.training,
             L=c.num_hidden_layers, C=c.hidden_size, H=c.num_attention_heads, V=c.vocab_size, n=model.num_parameters())
lesson.claim("tokenize adds no [CLS] and no [SEP]: the {T} tokens are the {n} characters alone, so outputs "
             "is {shape} — a sequence the model never saw in training, which always began with [CLS]",
             len(tokens) == len(input_text) and "[CLS]" not in tokens and outputs.shape == (1, len(input_text), 384),
             T=len(tokens), n=len(input_text), shape=list(outputs.shape))
lesson.claim("{u} of the {n} characters are [UNK] (lesson 01): this English vocabulary lacks them, so the "
             "model never sees most of the sentence", tokens.count("[UNK]") > len(tokens) // 2,
             u=tokens.count("[UNK]"), n=len(tokens))
lesson.claim("the last line raises, as it does in transformers: {e}",
             isinstance(decode_error, TypeError), e=f"TypeError: {decode_error}")
lesson.say(why_not_decode(outputs[0]))

# ------------------------------------------------------------------------------------------------
lesson.step("Both bugs fixed: call the tokenizer, decode ids",
            """inputs = tokenizer(text, return_tensors="np")      [CLS] text [SEP], with mask and segments
outputs = model(**inputs);  outputs.last_hidden_state [1, T, H];  tokenizer.decode(inputs.input_ids[0])""",
            code=[Code(BertTokenizer.__call__, "rows = [self._encode_pair", "return BatchEncoding"),
                  Code(BertModel._output_fields, "h, pooled = self.forward", "return dict")],
            article=["code.tokenize", "code.forward", "code.decode"])
inputs = tokenizer(input_text, return_tensors="np")
result = model(**inputs)
hidden = result.last_hidden_state                          # the article's `outputs`, done right
enc, outputs = run_bert(model, tok, ARTICLE_TEXT)          # the same, through the pipeline's helper
lesson.show("input_ids", inputs.input_ids, max_items=10)
lesson.show("last_hidden_state", hidden)
T = inputs.input_ids.shape[1]
shift = float(np.abs(hidden[0, 1:-1] - model(inputs.input_ids[:, 1:-1])[0][0]).max())
lesson.claim("with [CLS] and [SEP], T = {T}: last_hidden_state is {a}, and run_bert gives the same; the "
             "{n} characters' vectors differ by up to {d:.2f} from the run without them — the first bug "
             "changed every vector", hidden.shape == (1, T, c.hidden_size) and T == len(tokens) + 2
             and np.array_equal(hidden, outputs) and shift > 0.1,
             T=T, a=list(hidden.shape), n=len(tokens), d=shift)
text_back = tokenizer.decode(inputs.input_ids[0])
lesson.value("tokenizer.decode(inputs.input_ids[0])", text_back)
lesson.claim("decode reads ids: it gives back the text as the model saw it, \"{t}\" (skip_special_tokens "
             "drops [CLS]/[SEP]); the vectors are read by comparing them (next step), not by decode",
             text_back.startswith("[CLS] 我") and text_back.endswith("[SEP]")
             and tokenizer.decode(inputs.input_ids[0], skip_special_tokens=True).startswith("我"), t=text_back)
wrong = np.asarray(outputs[0]).astype(int)                # what a forced cast would feed to decode
vals, counts = np.unique(wrong, return_counts=True)
lesson.claim("forcing the article's line with a cast to int would not help: each of the {T} vectors becomes "
             "{H} small integers — {z:.0%} of them 0 = \"{pad}\", {neg} negative (no id at all)",
             np.mean(wrong == 0) > 0.5 and (wrong < 0).any(),
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
                  Code(SentenceEncoder.mean_pooled, "hidden, _ = self.model.forward", "out[idx] = mean_pool"),
                  Code(SentenceEncoder.encode, "vectors = l2_normalize"),
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
             "these are the weights the model used", np.abs(h_last - model(ids_att).last_hidden_state).max() < 1e-4,
             e=float(np.abs(h_last - model(ids_att).last_hidden_state).max()))
prev = np.array([[np.mean([maps[l, h, i, i - 1] for i in range(1, T_)]) for h in range(maps.shape[1])]
                 for l in range(maps.shape[0])])
L_, H_ = np.unravel_index(np.argmax(prev), prev.shape)
from_call = np.stack(model(ids_att, output_attentions=True).attentions)[:, 0]     # [L, H, T, T]
lesson.claim("and they are what model(ids, output_attentions=True).attentions reports (the kernel's own P, "
             "recomputed from its q, k and log-sum-exp): max difference {e:.1e}",
             np.abs(maps - from_call).max() < 1e-5, e=float(np.abs(maps - from_call).max()))
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

# The same sentence in tinybert's interactive page (open it in a browser): every layer and head of
# all-MiniLM-L6-v2; click a thumbnail, hover "it" to see where it attends.
from tinybert import view                                                                  # noqa: E402
lesson.display_html(view(model, tokenizer, text_att), "09_view.html")
lesson.say("Open the page in a browser: click a head, hover 'it'.")

lesson.end([
    f"all-MiniLM-L6-v2 ({model.num_parameters():,} parameters) loads into tinybert's own layers; "
    f"on 我喜欢在雨中漫步 its English vocabulary gives {tokens.count('[UNK]')} [UNK] of {len(tokens)}.",
    f"The article's code runs with the import changed: tokenize adds no [CLS]/[SEP] "
    f"(outputs [1, {len(tokens)}, {c.hidden_size}]), and decode(outputs[0]) raises TypeError, as in transformers: "
    "hidden vectors are not ids. Fixed: tokenizer(text, return_tensors='np') and model(**inputs), "
    f"[1, {T}, {c.hidden_size}]; decode the ids; nearest-token lookup shows what the vectors are close to.",
    f"Mean-pooled, normalised vectors give sentence similarity: {rain.mean():.2f} within paraphrases vs "
    f"{cross.mean():.2f} against unrelated sentences (09_similarity.png).",
    f"Real heads specialise (layer {L_}, head {H_}: the previous token); one head links \"it\" to \"cat\" "
    f"({w_cat[best]:.2f}) six tokens back, while over all heads 'cat' and 'mat' get similar shares "
    f"({n_more} of {w_cat.size} heads favour 'cat'; 09_attention_head.png).",
], try_next=[
    ("Replace text_att by \"the cat sat on the mat because it was soft\" in step 5.",
     "look at the third panel: whether the heads now favour \"mat\" — and whether the claims of step 6, "
     "written for the tired cat, still hold."),
    ("Add sentences to step 4, e.g. \"it is raining and i am outside\".",
     "where it lands in the similarity matrix: shared words (\"rain\") pull it towards the rain group even "
     "when the meaning differs — sentence vectors mix meaning and wording."),
    ("Print tokenizer.convert_ids_to_tokens(inputs.input_ids[0]) next to result.last_hidden_state[0].",
     "the ids are what decode wants; the hidden states are the model's reading of them."),
])
