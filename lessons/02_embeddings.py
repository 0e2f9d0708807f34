"""From token ids to vectors: the article's input embedding

    E(x_i) = Embedding(x_i) + PositionalEncoding(i)

Embedding(x_i) looks up a learned row for the token; PositionalEncoding(i) says where the token is.
We build both, see why the second one is needed, draw the sinusoidal table, and compare it with the
position table a real BERT learned (all-MiniLM-L6-v2).
"""
import numpy as np

from _stepper import Code, Lesson

from tinybert.io.checkpoint import load_pretrained
from tinybert.config import BertConfig
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.embedding import Embedding
from tinybert.nn.positional import PositionalEncoding, sinusoidal_table
from tinybert.text.tokenizer import BertTokenizer

lesson = Lesson("02", "Embeddings and positional encoding", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)
C = 16                                       # hidden size of this lesson's toy model

# ------------------------------------------------------------------------------------------------
lesson.step("A sentence as ids", "x = (x_1, x_2, …, x_n),  x_i = a vocabulary index   (here a toy vocabulary; "
            "lesson 01's tokenizer does the same lookup)",
            code=Code(BertTokenizer.convert_tokens_to_ids, "return [self.vocab"), article="math.input_ids")
sentence = "the cat sat on the mat".split()
vocab = {w: i for i, w in enumerate(sorted(set(sentence)))}
ids = np.array([[vocab[w] for w in sentence]])            # [B=1, T=6]
print("  vocabulary:", vocab)
lesson.show("x (ids)", ids)
lesson.claim("the word 'the' occurs twice, at positions 0 and 4, with the same id {i}",
             ids[0, 0] == ids[0, 4], i=int(ids[0, 0]))

# ------------------------------------------------------------------------------------------------
lesson.step("Token embedding: a table lookup", "Embedding(x_i) = W_E[x_i]      W_E: [V, C]",
            code=Code(Embedding.forward, "return self.weight.data[ids]"), article="math.embedding")
emb = Embedding(len(vocab), C, rng=rng, std=1.0, dtype=np.float64)
tok = emb.forward(ids)                                     # [1, T, C]
lesson.show("W_E", emb.weight.data)
lesson.show("Embedding(x)", tok)
lesson.claim("without anything else the two 'the's are the same vector: max |Embedding(x_0) − "
             "Embedding(x_4)| = {d}", np.array_equal(tok[0, 0], tok[0, 4]), d=float(np.abs(tok[0, 0] - tok[0, 4]).max()))
lesson.say("""Self-attention treats its input as a set: shuffle the words and every output is shuffled
the same way (lesson 03, step 6 checks it). Without positions the model could not tell "the cat sat
on the mat" from "the mat sat on the cat".""")

# ------------------------------------------------------------------------------------------------
lesson.step("The sinusoidal positional encoding",
            """PositionalEncoding(i)[2k]   = sin(i / 10000^(2k/C))
PositionalEncoding(i)[2k+1] = cos(i / 10000^(2k/C))""",
            code=Code(sinusoidal_table, "i = np.arange", "pe[:, 1::2]"), article="math.embedding")
P = 64 if lesson.small else 128
pe_big = sinusoidal_table(P, 64)
lesson.show("PE [P, 64]", pe_big)
periods = 2 * np.pi * 10000 ** (np.arange(0, 64, 2) / 64)              # the formula's periods
turn = np.arctan2(pe_big[1, 0::2], pe_big[1, 1::2])                     # angle of each pair at i = 1, read from the table
measured = 2 * np.pi / turn                                              # positions per full turn
lesson.claim("each pair of dimensions (2k, 2k+1) is a clock hand turning at its own speed: read from the "
             "table, the first pair turns once every {p0:.2f} positions, the last once every {p1:,.0f}, as the "
             "formula's 2π·10000^(2k/C) says (worst relative difference {e:.0e})",
             np.abs(measured / periods - 1).max() < 1e-9 and measured[0] < 10 and measured[-1] > 1000,
             p0=measured[0], p1=measured[-1], e=float(np.abs(measured / periods - 1).max()))
lesson.say("""Read down a column of the figure for one frequency; read across a row for one position's
fingerprint.""")
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
im = axes[0].imshow(pe_big.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower")
axes[0].set_xlabel("position i")
axes[0].set_ylabel("dimension (2k, 2k+1)")
axes[0].set_title(f"sinusoidal table PE [{P} positions × 64 dims]")
fig.colorbar(im, ax=axes[0], label="value")
for d in (6, 14, 24, 40):
    period = 2 * np.pi * 10000 ** (d / 64)
    axes[1].plot(pe_big[:, d], label=f"dim {d} (period {period:.0f})")
axes[1].set_xlabel("position i")
axes[1].set_ylabel("PE(i)[dim]")
axes[1].set_title("columns sin(i / 10000^(d/64)): one frequency each")
axes[1].set_ylim(-1.1, 1.6)
axes[1].legend(fontsize=8, loc="upper left", ncol=2)
lesson.savefig(fig, "sinusoidal_table")

# ------------------------------------------------------------------------------------------------
lesson.step("Add them: the input embedding E(x_i)",
            "E(x_i) = Embedding(x_i) + PositionalEncoding(i)",
            code=Code(PositionalEncoding.forward, "return x + "), article="math.embedding")
posenc = PositionalEncoding(max_positions=32, dim=C)
E = posenc.forward(tok)                                   # [1, T, C]
lesson.show("E(x)", E)
dist = float(np.linalg.norm(E[0, 0] - E[0, 4]))
pe_dist = float(np.linalg.norm(posenc.table[0] - posenc.table[4]))
tok_dist = float(np.linalg.norm(tok[0, 0] - tok[0, 4]))
lesson.claim("the two 'the's now differ: ‖E(x_0) − E(x_4)‖ = {d:.4f}, where without positions (step 2) "
             "it was {d0}", dist > 0.1 and tok_dist == 0, d=dist, d0=tok_dist)
lesson.say(f"""As it must (their Embedding rows are the same), all of the difference comes from the
positions: ‖PE(0) − PE(4)‖ = {pe_dist:.4f}.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Why sines and cosines: relative positions are a rotation",
            """PE(i+k) = R_k · PE(i)     R_k: block-diagonal 2×2 rotations by k·ω_j,  ω_j = 1/10000^(2j/C)
PE(i) · PE(j) depends only on i − j""",
            code=Code(sinusoidal_table, "freq = ", "pe[:, 1::2]"), article="math.embedding")
omega = 1.0 / 10000 ** (np.arange(0, C, 2) / C)
k = 3
R = np.zeros((C, C))
for j, w in enumerate(omega):
    c, s = np.cos(k * w), np.sin(k * w)
    R[2 * j:2 * j + 2, 2 * j:2 * j + 2] = [[c, s], [-s, c]]
table = posenc.table
err = float(np.abs(table[k:k + 20] - table[:20] @ R.T).max())
lesson.claim("one matrix R_{k} shifts every position by {k}: max |PE(i+{k}) − R_{k}·PE(i)| over i < 20 is {e:.1e}",
             err < 1e-12, k=k, e=err)
dots = pe_big @ pe_big.T                                   # [P, P]
diag_dev = max(float(np.ptp(np.diagonal(dots, off))) for off in range(-P + 1, P))
lesson.claim("PE(i)·PE(j) depends only on i − j: PE(10)·PE(15) = {a:.6f}, PE(40)·PE(45) = {b:.6f}; "
             "along every diagonal of the [P, P] dot-product matrix the values differ by at most {dev:.1e}",
             diag_dev < 1e-9, a=dots[10, 15], b=dots[40, 45], dev=diag_dev)
lesson.say("""Because a shift by k is the same linear map R_k at every position, attention can learn
"look 3 tokens back" once and use it everywhere.""")

# ------------------------------------------------------------------------------------------------
lesson.step("BERT's version: learned positions, segments, LayerNorm",
            """E(x_i) = LayerNorm(W_word[x_i] + W_pos[i] + W_type[s_i]),  then Dropout""",
            code=Code(BertEmbeddings.forward, "positions = ", "return self.dropout"),
            article="math.embedding")
cfg = BertConfig(vocab_size=len(vocab), hidden_size=C, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=4 * C, max_position_embeddings=32, hidden_dropout_prob=0.0)
bert_emb = BertEmbeddings(cfg, rng, np.random.default_rng(lesson.seed), dtype=np.float64)
segments = np.zeros_like(ids)
E_bert = bert_emb.forward(ids, segments)
lesson.show("W_pos (learned)", bert_emb.position_embeddings.weight.data)
lesson.show("E_bert(x)", E_bert)
lesson.show("row means", E_bert[0].mean(-1))
lesson.show("row std", E_bert[0].std(-1))
lesson.claim("LayerNorm leaves every token's vector at mean 0 (worst |mean| {m:.1e}) and standard deviation "
             "1 (worst |std − 1| {sd:.1e}; γ = 1, β = 0 at initialisation)",
             np.abs(E_bert[0].mean(-1)).max() < 1e-9 and np.abs(E_bert[0].std(-1) - 1).max() < 1e-6,
             m=float(np.abs(E_bert[0].mean(-1)).max()), sd=float(np.abs(E_bert[0].std(-1) - 1).max()))
lesson.say("""BERT learns its position table (an Embedding over positions 0 … 511) instead of fixing
it, adds a third table for sentence A/B, and normalises the sum. At initialisation the learned table
is random noise; training shapes it.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Learned vs sinusoidal: what a trained BERT's position table looks like",
            "cos(W_pos[i], W_pos[j])  vs  cos(PE(i), PE(j))",
            code=Code(load_pretrained, "folder = checkpoint_folder(path)", "model = cls("), article="math.embedding")
learned, source = None, ""
try:
    from tinybert.models import BertModel
    real = BertModel.from_pretrained("all-MiniLM-L6-v2")
    learned = np.asarray(real.embeddings.position_embeddings.weight.data[:P], dtype=np.float64)
    source = "all-MiniLM-L6-v2 (trained)"
except Exception as e:                                     # no checkpoint: show the untrained table
    lesson.say(f"(could not load all-MiniLM-L6-v2: {e}; showing a freshly initialised table)")
    learned = np.random.default_rng(0).normal(0, 0.02, (P, 384))
    source = "random init (untrained)"
lesson.show("W_pos[:P]", learned)


def cosine_matrix(a):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return a @ a.T


sin_full = sinusoidal_table(P, learned.shape[1])
cos_learned, cos_sin = cosine_matrix(learned), cosine_matrix(sin_full)
near = float(np.mean([cos_learned[i, i + 1] for i in range(P - 1)]))
far = float(np.mean([cos_learned[i, i + 32] for i in range(P - 32)]))
sin_near = float(np.mean([cos_sin[i, i + 1] for i in range(P - 1)]))
sin_far = float(np.mean([cos_sin[i, i + 32] for i in range(P - 32)]))
untrained = np.random.default_rng(lesson.seed).normal(0, 0.02, learned.shape)   # BERT's initialisation
cos_untrained = cosine_matrix(untrained)
rand_near = float(np.mean(np.diagonal(cos_untrained, 1)))
rand_far = float(np.mean(np.diagonal(cos_untrained, 32)))
lesson.value("learned:    mean cos(i, i+1), cos(i, i+32)", f"{near:.3f}, {far:.3f}")
lesson.value("sinusoidal: mean cos(i, i+1), cos(i, i+32)", f"{sin_near:.3f}, {sin_far:.3f}")
lesson.value("untrained N(0, 0.02): mean cos(i, i+1), cos(i, i+32)", f"{rand_near:.3f}, {rand_far:.3f}")
fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
for ax, m, name in ((axes[0], cos_sin, f"sinusoidal (C={learned.shape[1]})"),
                    (axes[1], cos_learned, source)):
    im = ax.imshow(m, cmap="viridis", vmin=-1, vmax=1)
    ax.set_xlabel("position j")
    ax.set_ylabel("position i")
    ax.set_title(f"cosine similarity of positions:\n{name}")
    fig.colorbar(im, ax=ax, label="cos(i, j)")
lesson.savefig(fig, "learned_vs_sinusoidal")
if source.startswith("all-MiniLM"):
    lesson.claim("both tables make neighbours similar and distant positions less so — learned: cos "
                 "{n:.2f} at distance 1, {f:.2f} at 32; sinusoidal: {sn:.2f} and {sf:.2f}. Training made the "
                 "band: an untrained N(0, 0.02) table of the same shape gives {rn:.2f} and {rf:.2f}, a gap "
                 "of {rg:.2f} against the learned {g:.2f}",
                 near > far + 0.2 and sin_near > sin_far + 0.2 and (near - far) > (rand_near - rand_far) + 0.2,
                 n=near, f=far, sn=sin_near, sf=sin_far, rn=round(rand_near, 2) + 0.0, rf=round(rand_far, 2) + 0.0,
                 rg=round(rand_near - rand_far, 2) + 0.0, g=near - far)   # + 0.0: no "-0.00"

lesson.end([
    "Embedding(x_i) is a row lookup: the same word gets the same vector wherever it stands.",
    f"Adding PositionalEncoding(i) makes the two 'the's differ (distance {dist:.3f}); "
    "the sinusoidal table is drawn in 02_sinusoidal_table.png.",
    f"A shift by k positions is one rotation R_k of the sinusoidal code (error {err:.1e}), "
    "so dot products depend only on the offset.",
    "BERT learns its positions, adds a segment table and applies LayerNorm "
    "(tinybert/nn/bert_embeddings.py).",
    f"The learned table of {source} is smooth: neighbours have cosine {near:.2f}, positions 32 "
    f"apart {far:.2f} (02_learned_vs_sinusoidal.png).",
], try_next=[
    ("Remove the positions: use E = tok instead of posenc.forward(tok) in step 4.",
     "‖E(x_0) − E(x_4)‖ = 0: the two 'the's are the same vector again, and step 4's claim fails."),
    ("Change k = 3 in step 5 to 10, and the base 10000 of sinusoidal_table's formula to 100.",
     "the rotation error stays ~1e-15 for any k and either base; with base 100 every clock turns faster "
     "(the slowest once every ~540 positions instead of ~47,000 at C = 64), so positions 32 apart are "
     "much less alike (mean cosine ~0.1 instead of ~0.6): the base sets how fast similarity falls with "
     "distance."),
    ("Print cos_learned[0, 1], cos_learned[1, 2] and cos_learned[100, 101] (with 128 positions, "
     "as without --small).",
     "position 0 stands apart: cos(0, 1) ≈ 0.3, below every later pair of neighbours (≈ 0.85 on "
     "average). It always holds [CLS], and a learned table, unlike the sinusoids, need not treat every "
     "position alike."),
])
