"""Tokenization: from text to the ids x = (x_1, …, x_n)

The article's formulas start from "an input sequence x = (x_1, x_2, …, x_n) where x_i is a vocabulary
index", and its code example starts with tokenizer.tokenize("我喜欢在雨中漫步"). This lesson makes
those ids: text → basic tokens → WordPiece pieces → ids (with [CLS], [SEP], segments and a padding
mask), for English and for the article's Chinese sentence, and then learns a WordPiece vocabulary
from a corpus.
"""
import os
import tempfile

import numpy as np

from _stepper import Lesson

from tinybert.training.corpus import generate_corpus
from tinybert.text.tokenizer import (BertTokenizer, basic_tokenize, clean_text, lowercase,
                                split_on_punctuation, strip_accents, tokenize_chinese_chars, wordpiece)
from tinybert.text.wordpiece_trainer import save_wordpiece_vocab, train_wordpiece

lesson = Lesson("01", "Tokenization", __doc__)
plt = lesson.plt
ENGLISH = "Héllo, I can't believe it's UNAFFABLE!"
CHINESE = "我喜欢在雨中漫步"

# ------------------------------------------------------------------------------------------------
lesson.step("Basic tokenization, stage by stage",
            """clean → split CJK characters → strip accents → lower-case → split on spaces and punctuation""",
            code=[clean_text, tokenize_chinese_chars, strip_accents, lowercase, split_on_punctuation])
for text in (ENGLISH, CHINESE):
    s1 = clean_text(text)
    s2 = tokenize_chinese_chars(s1)
    s3 = strip_accents(s2)
    s4 = lowercase(s3)
    words = split_on_punctuation(s4)
    print(f"  text                    {text!r}")
    print(f"  tokenize_chinese_chars  {s2!r}")
    print(f"  strip_accents           {s3!r}")
    print(f"  lowercase               {s4!r}")
    print(f"  split_on_punctuation    {words}")
    assert words == basic_tokenize(text)
    print()
lesson.say("""English splits on spaces and punctuation ("can't" becomes three words). Chinese has no
spaces, so BERT makes every CJK ideograph a word of its own: 我喜欢在雨中漫步 becomes eight.""")

# ------------------------------------------------------------------------------------------------
lesson.step("WordPiece: greedy longest match against a vocabulary",
            """word → longest prefix in the vocab, then the longest "##"-continuation, … ; no match → [UNK]""",
            code=wordpiece)
tok = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
lesson.value("vocabulary", f"{tok.vocab_size} tokens (all-MiniLM-L6-v2's, the uncased English BERT vocabulary)")
word = "unaffable"
start, pieces_trace = 0, []
while start < len(word):
    for end in range(len(word), start, -1):
        cand = word[start:end] if start == 0 else "##" + word[start:end]
        if cand in tok.vocab:
            pieces_trace.append(cand)
            print(f"  from position {start}: longest piece in the vocab is {cand!r}")
            start = end
            break
    else:
        break
lesson.value(f"wordpiece({word!r})", wordpiece(word, tok.vocab))
assert pieces_trace == wordpiece(word, tok.vocab)
for w in ("believe", "tokenization", "transformers", "xqzv"):
    lesson.value(f"wordpiece({w!r})", wordpiece(w, tok.vocab))
lesson.say("""Frequent words are one piece; rarer ones are spelled from smaller pieces, "##" marking
a piece that continues a word. A word with no matching piece at all becomes [UNK].""")

# ------------------------------------------------------------------------------------------------
lesson.step("Tokens → ids, and the three arrays BERT reads",
            """x_i = vocab[token_i];   [CLS] A [SEP] B [SEP];   token_type_ids s_i ∈ {0, 1};   attention_mask""",
            code=[BertTokenizer.tokenize, BertTokenizer.convert_tokens_to_ids, BertTokenizer.__call__])
tokens = tok.tokenize(ENGLISH)
ids = tok.convert_tokens_to_ids(tokens)
lesson.value("tokenize", tokens)
lesson.value("convert_tokens_to_ids", ids)
enc = tok("the cat sat", "it was happy")
for key in ("input_ids", "token_type_ids", "attention_mask"):
    lesson.show(key, enc[key], max_items=12)
lesson.value("tokens", tok.convert_ids_to_tokens(enc["input_ids"]))
batch = tok(["the cat sat", "a much longer second sentence here"], padding=True)
lesson.show("batch input_ids", batch["input_ids"], max_items=12)
lesson.matrix("attention_mask", batch["attention_mask"].astype(float), precision=0)
lesson.say("""[CLS] opens every input (its final vector feeds the classifier), [SEP] closes each
sentence, token_type_ids say which sentence a token is in, and attention_mask is 0 on the [PAD]
positions that make the batch rectangular (lesson 03 masks them out of attention).""")

# ------------------------------------------------------------------------------------------------
lesson.step("The article's sentence with an English vocabulary",
            "tokenizer.tokenize('我喜欢在雨中漫步')", code=BertTokenizer.tokenize)
zh_tokens = tok.tokenize(CHINESE)
n_unk = zh_tokens.count(tok.unk_token)
lesson.value("tokens", zh_tokens)
lesson.value("ids", tok.convert_tokens_to_ids(zh_tokens))
lesson.say(f"""{n_unk} of the {len(zh_tokens)} characters are [UNK]: the uncased English vocabulary
(the same one the article's bert-base-uncased uses) holds only a few Chinese characters, so the
model would see "我 [UNK] [UNK] …" and never the sentence. For Chinese text one needs a vocabulary
that contains its characters — which is what we learn next.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Learning a WordPiece vocabulary from a corpus",
            """start from characters ("h", "##u", "##g"); repeatedly merge the pair with the highest
score(a, b) = freq(ab) / (freq(a) · freq(b))""",
            code=[generate_corpus, train_wordpiece])
n_sent = 1500 if lesson.small else 5000
corpus = generate_corpus(n_sent, seed=lesson.seed)
# a few Chinese sentences of our own, so that the vocabulary has the article's characters
chinese = ["我喜欢读书。", "雨中的城市很安静。", "他在公园里漫步。", "我们喜欢在雨天喝茶。",
           "她每天在河边漫步。", "下雨了，我在家中看书。"] * 3
texts = corpus + chinese
merges = []
vocab_tokens = train_wordpiece(texts, vocab_size=400 if lesson.small else 800,
                               on_merge=lambda *m: merges.append(m))
n_alpha = len(vocab_tokens) - len(merges)
lesson.value("corpus", f"{len(corpus)} generated English sentences + {len(chinese)} Chinese ones")
for s in corpus[:3]:
    print(f"    {s}")
lesson.value("vocabulary", f"{len(vocab_tokens)} tokens = 5 special + {n_alpha - 5} characters "
                           f"+ {len(merges)} merges")
print("  the first merges (step, a + b -> ab, score, pair count):")
for step, a, b, ab, score, count in merges[:8]:
    print(f"    {step:>4}  {a:>6} + {b:<6} -> {ab:<8} score {score:.2e}  count {count}")
lesson.say("""The first merges join pieces that rarely occur apart (a rare letter that is almost always
followed by the same letter): the score divides by how frequent each part is, so a pair wins by
being *exclusive*, not merely common. Later merges build whole words.""")
print("  the last merges:")
for step, a, b, ab, score, count in merges[-4:]:
    print(f"    {step:>4}  {a:>6} + {b:<6} -> {ab:<8} score {score:.2e}  count {count}")

# ------------------------------------------------------------------------------------------------
lesson.step("How the vocabulary size trades against sequence length",
            "tokens per word, for the vocabulary after k merges (the learned list cut at k)",
            code=wordpiece)
words = [w for s in corpus[:1000] for w in basic_tokenize(s)]
sizes, per_word, whole = [], [], []
for k in np.linspace(0, len(merges), 12).astype(int):
    v = set(vocab_tokens[:n_alpha + k])
    pieces = [len(wordpiece(w, v)) for w in words]
    sizes.append(n_alpha + k)
    per_word.append(float(np.mean(pieces)))
    whole.append(float(np.mean(np.array(pieces) == 1)))
for s_, p_, w_ in zip(sizes[::3] + [sizes[-1]], per_word[::3] + [per_word[-1]], whole[::3] + [whole[-1]]):
    lesson.value(f"vocab {s_:>4}", f"{p_:.2f} tokens per word, {w_:.0%} of words are one token")
lesson.say(f"""The generated corpus has a small, closed word list, so the full learned vocabulary makes
{whole[-1]:.0%} of its words single tokens; on open text a vocabulary of ~30k (BERT's) plays the same
trade-off: fewer, longer tokens against a bigger embedding table (lesson 04 counts its cost).""")
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(sizes, per_word, "o-", color="tab:blue")
ax.set_xlabel("vocabulary size (special + characters + merges)")
ax.set_ylabel("mean WordPiece tokens per word", color="tab:blue")
ax2 = ax.twinx()
ax2.plot(sizes, whole, "s--", color="tab:orange")
ax2.set_ylabel("share of words that are a single token", color="tab:orange")
ax.set_title(f"a learned WordPiece vocabulary: more merges, shorter sequences\n"
             f"({len(words)} words of the generated corpus)")
lesson.savefig(fig, "vocab_size")

# ------------------------------------------------------------------------------------------------
lesson.step("A tokenizer built on the learned vocabulary",
            "vocab.txt (one token a line, id = line number) → BertTokenizer",
            code=[save_wordpiece_vocab, BertTokenizer.__init__])
folder = tempfile.mkdtemp(prefix="tinybert_vocab_")
path = save_wordpiece_vocab(vocab_tokens, os.path.join(folder, "vocab.txt"))
own = BertTokenizer(path)
for text in ("the dog sleeps in the park .", "the dogs were sleeping happily", CHINESE):
    t = own.tokenize(text)
    lesson.value(repr(text), t)
zh_own = own.tokenize(CHINESE)
lesson.value("ids of the article's sentence", own.convert_tokens_to_ids(zh_own))
lesson.say("""Words of the corpus are single tokens; an unseen form ("sleeping", "happily") is spelled
from pieces; and with a few Chinese sentences in the corpus, every character of the article's
sentence has its own id — no [UNK].""")

lesson.end([
    "Basic tokenization cleans the text, makes every CJK character a word, strips accents, "
    "lower-cases and splits on punctuation.",
    "WordPiece then splits each word greedily into the longest pieces in the vocabulary "
    f"({word!r} → {wordpiece(word, tok.vocab)}); the tokenizer adds [CLS]/[SEP], segment ids and "
    "the padding mask, giving BERT's input x = (x_1, …, x_n).",
    f"With the English vocabulary the article's model uses, {n_unk} of the {len(zh_tokens)} "
    "characters of 我喜欢在雨中漫步 are [UNK].",
    f"A vocabulary learned by WordPiece merges on our corpus ({len(vocab_tokens)} tokens) "
    f"shortens words from {per_word[0]:.1f} to {per_word[-1]:.2f} tokens on average "
    f"(01_vocab_size.png) and covers the Chinese sentence ({zh_own.count('[UNK]')} [UNK]).",
])
