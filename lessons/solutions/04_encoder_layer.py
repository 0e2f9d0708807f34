"""Solutions to lesson 04's exercises (run one with: lessons/04_encoder_layer.py --exercise N)."""
import numpy as np

from _04_generalisation import TARGET, SmallCorpus, masked_loss, train_to_loss
from _stepper import spread

from tinybert.config import BertConfig
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.encoder import EncoderLayer
from tinybert.nn.pooler import Pooler


def exercise_1(lesson):
    """Swap the layout to pre-norm in step 3, u = x + attn.forward(layer.attention_norm.forward(x)), then
    y = u + FFN(LN(u)), and stack six such layers; print the residual stream's row means and stds.

    You should see that pre-norm never normalises the residual stream, only each sublayer's input: its
    row std grows with depth (above 1.5× its first-layer value after six layers) and its row means
    wander from 0, while the post-norm stack (step 3's layout) gives std 1 and mean 0 after every layer.
    """
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, initializer_range=0.3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)     # the lesson's layer
    rng = np.random.default_rng(lesson.seed)
    x = rng.standard_normal((1, 6, 16))
    layers = [EncoderLayer(cfg, rng, np.random.default_rng(i), dtype=np.float64, backend="numpy").eval()
              for i in range(6)]
    pre, post, pre_std, post_dev, pre_mean = x, x, [], [], []
    for depth, layer in enumerate(layers, 1):
        u = pre + layer.attention.forward(layer.attention_norm.forward(pre))   # pre-norm: LN inside the branch
        pre = u + layer.ffn.forward(layer.ffn_norm.forward(u))
        post = layer.forward(post)                                             # post-norm: LN(x + sublayer(x))
        pre_std.append(float(pre.std(-1).mean()))
        pre_mean.append(float(np.abs(pre.mean(-1)).max()))
        post_dev.append(float(max(np.abs(post.std(-1) - 1).max(), np.abs(post.mean(-1)).max())))
        lesson.value(f"after layer {depth}", f"pre-norm: mean row std {pre_std[-1]:.2f}, largest |row mean| "
                     f"{pre_mean[-1]:.2f}   post-norm: worst |std − 1| or |mean| {post_dev[-1]:.1e}")
    lesson.claim("pre-norm lets the residual stream grow: its mean row std goes from {a:.2f} after one layer to "
                 "{b:.2f} after six, and row means reach {m:.2f}; the post-norm stack stays at std 1 and mean 0 "
                 "after every layer (worst deviation {d:.1e})",
                 pre_std[-1] > 1.5 * pre_std[0] and max(pre_mean) > 0.3 and max(post_dev) < 1e-6,
                 a=pre_std[0], b=pre_std[-1], m=max(pre_mean), d=max(post_dev))


def exercise_2(lesson):
    """Count a model of your own in step 7: add BertConfig(hidden_size=512, num_hidden_layers=8,
    num_attention_heads=8, intermediate_size=2048) to `configs`.

    You should see a larger embedding share than BERT-base's: the vocabulary table grows with C, the
    layers with C² and L, so a narrower, shallower model spends more of its parameters on the table.
    """
    init = np.random.default_rng(0)
    share = {}
    for name, cfg in (("yours", BertConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                           intermediate_size=2048)), ("BERT-base", BertConfig())):
        emb = BertEmbeddings(cfg, init, init).num_parameters()            # built from tinybert's own layers
        total = emb + cfg.num_hidden_layers * EncoderLayer(cfg, init, init).num_parameters() \
            + Pooler(cfg.hidden_size, init).num_parameters()
        share[name] = emb / total
        lesson.value(f"{name:>9}", f"{total:,} parameters, {emb:,} in the embeddings ({share[name]:.0%})")
    lesson.claim("C = 512, L = 8 puts {a:.0%} of its parameters in the embedding tables, against {b:.0%} for "
                 "BERT-base", share["yours"] > share["BERT-base"] + 0.05, a=share["yours"], b=share["BERT-base"])


def exercise_3(lesson):
    """Compare the widths the way the lesson used to: stop every model after the same 150 steps instead of
    at the same train loss (step 9 with max_steps=150 and no target), for C = 16 and C = 128.

    You should see the confound step 9 avoids: after a fixed budget the small model has not fitted its
    sentences (train loss far above L*), so the large one has the larger train/held-out gap and yet the
    lower held-out loss — the opposite of what step 9 finds at the same train loss.
    """
    data = SmallCorpus(lesson.seed)
    seeds = lesson.seeds(2)
    res = {}
    for width in (16, 128):
        runs = []
        for seed in seeds:
            model = data.model(width, seed)
            _, train_loss = train_to_loss(model, data, np.random.default_rng(seed), target=0.0, max_steps=150,
                                          progress=lesson.progress)
            runs.append((train_loss, masked_loss(model, data.fixed_held)))
        r = np.array(runs)
        res[width] = dict(train=spread(r[:, 0]), held=spread(r[:, 1]), gap=spread(r[:, 1] - r[:, 0]))
        lesson.value(f"C = {width:>3} after 150 steps", f"train {res[width]['train']:.2f}   held-out "
                     f"{res[width]['held']:.2f}   gap {res[width]['gap']:.2f}")
    s, b = res[16], res[128]
    lesson.claim("after 150 steps C = 16 is still at train loss {ts:.2f} (target ≤ {t}); C = 128 shows the larger "
                 "gap ({gb:.2f} against {gs:.2f}) and yet the lower held-out loss ({hb:.2f} against {hs:.2f}) in "
                 "every seed: a fixed budget measures how far training got, not how well a size generalises",
                 s["train"].lo > TARGET + 1 and b["gap"].lo > s["gap"].hi and b["held"].hi < s["held"].lo,
                 ts=s["train"], t=TARGET, gb=b["gap"], gs=s["gap"], hb=b["held"], hs=s["held"])
