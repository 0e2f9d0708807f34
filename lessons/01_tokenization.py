"""Tokenization: from text to the ids x = (x_1, …, x_n)

The article's formulas start from "an input sequence x = (x_1, x_2, …, x_n) where x_i is a vocabulary
index", and its code example starts with tokenizer.tokenize("我喜欢在雨中漫步"). This lesson makes
those ids: text → basic tokens → WordPiece pieces → ids (with [CLS], [SEP], segments and a padding
mask), for English and for the article's Chinese sentence, and then learns a WordPiece vocabulary
from a corpus.
"""
import os
import tempfile
from collections import Counter

import numpy as np

from _stepper import Code, Lesson
from _01_corpus import CHINESE_SENTENCES, vocab_size, wordpiece_corpus

from tinybert.text.tokenizer import (BertTokenizer, basic_tokenize, clean_text, lowercase,
                                split_on_punctuation, strip_accents, tokenize_chinese_chars, wordpiece)
from tinybert.text.wordpiece_trainer import _score, count_words, save_wordpiece_vocab, train_wordpiece

lesson = Lesson("01", "Tokenization", __doc__)
plt = lesson.plt
ENGLISH = "Héllo, I can't believe it's UNAFFABLE!"
CHINESE = "我喜欢在雨中漫步"

# ------------------------------------------------------------------------------------------------
lesson.step("Basic tokenization, stage by stage",
            """clean → split CJK characters → strip accents → lower-case → split on spaces and punctuation""",
            code=basic_tokenize, article=["math.input_ids", "code.tokenize"])
stages = {}
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
    stages[text] = words
    print()
lesson.claim("the stages written out give what basic_tokenize gives, for both texts",
             all(stages[t] == basic_tokenize(t) for t in stages))
lesson.claim("punctuation splits words: \"can't\" becomes {cant}",
             ["can", "'", "t"] == stages[ENGLISH][3:6], cant=stages[ENGLISH][3:6])
lesson.claim("Chinese has no spaces, so every CJK character is a word: 我喜欢在雨中漫步 becomes {n} words",
             stages[CHINESE] == list(CHINESE), n=len(stages[CHINESE]))

# ------------------------------------------------------------------------------------------------
lesson.step("WordPiece: greedy longest match against a vocabulary",
            """word → longest prefix in the vocab, then the longest "##"-continuation, … ; no match → [UNK]""",
            code=Code(wordpiece, "pieces = []", "return pieces"), article="code.tokenize")
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
lesson.claim("the greedy search written out above gives wordpiece's pieces {p}",
             pieces_trace == wordpiece(word, tok.vocab), p=pieces_trace)
examples = {w: wordpiece(w, tok.vocab) for w in ("believe", "tokenization", "xqzv", "喜欢")}
for w, pieces in examples.items():
    lesson.value(f"wordpiece({w!r})", pieces)
lesson.claim("a common word is one piece ({b}); a rarer one is spelled from pieces, '##' marking a "
             "continuation ({t}); a word whose characters are missing from the vocabulary is [UNK] ({x})",
             len(examples["believe"]) == 1 and len(examples["tokenization"]) > 1
             and all(p.startswith("##") for p in examples["tokenization"][1:]) and examples["喜欢"] == ["[UNK]"],
             b=examples["believe"], t=examples["tokenization"], x=examples["喜欢"])

# ------------------------------------------------------------------------------------------------
lesson.step("Tokens → ids, and the three arrays BERT reads",
            """x_i = vocab[token_i];   [CLS] A [SEP] B [SEP];   token_type_ids s_i ∈ {0, 1};   attention_mask""",
            code=[Code(BertTokenizer.convert_tokens_to_ids, "if isinstance", "return [self"),
                  Code(BertTokenizer._with_special_tokens), Code(BertTokenizer._pad)],
            article=["math.input_ids", "code.tokenize"])
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
pair_tokens = tok.convert_ids_to_tokens(enc["input_ids"])
n_a = pair_tokens.index("[SEP]") + 1
n_pad = int((batch["attention_mask"][0] == 0).sum())
lesson.claim("[CLS] opens the input, [SEP] closes each sentence, token_type_ids are 0 on the first "
             "{n_a} tokens and 1 after; the shorter text of the batch has {n_pad} [PAD] positions, "
             "exactly where its attention_mask is 0",
             pair_tokens[0] == "[CLS]" and pair_tokens[-1] == "[SEP]"
             and list(enc["token_type_ids"]) == [0] * n_a + [1] * (len(pair_tokens) - n_a)
             and np.array_equal(batch["attention_mask"][0] == 0, batch["input_ids"][0] == tok.pad_token_id),
             n_a=n_a, n_pad=n_pad)
lesson.say("""[CLS] opens every input (its final vector feeds the classifier), [SEP] closes each
sentence, token_type_ids say which sentence a token is in, and attention_mask is 0 on the [PAD]
positions that make the batch rectangular (lesson 03 masks them out of attention).""")

# ------------------------------------------------------------------------------------------------
lesson.step("The article's sentence with an English vocabulary",
            "tokenizer.tokenize('我喜欢在雨中漫步')",
            code=Code(BertTokenizer.tokenize, "for word in basic_tokenize", "tokens.extend"), article="code.tokenize")
zh_tokens = tok.tokenize(CHINESE)
n_unk = zh_tokens.count(tok.unk_token)
lesson.value("tokens", zh_tokens)
lesson.value("ids", tok.convert_tokens_to_ids(zh_tokens))
lesson.claim("{n_unk} of the {n} characters are [UNK] in the uncased English vocabulary (the one the "
             "article's bert-base-uncased uses): the model would see {seen}",
             n_unk >= len(zh_tokens) // 2, n_unk=n_unk, n=len(zh_tokens), seen=" ".join(zh_tokens))
lesson.say("""For Chinese text one needs a vocabulary that contains its characters — which is what we
learn next.""")

# ------------------------------------------------------------------------------------------------
lesson.step("Learning a WordPiece vocabulary from a corpus",
            """start from characters ("h", "##u", "##g"); repeatedly merge the pair with the highest
score(a, b) = freq(ab) / (freq(a) · freq(b))""",
            code=[Code(train_wordpiece, "while len(vocab) < vocab_size", "vocab.append(merged)"),
                  Code(_score)],
            article="pretrain.1")
corpus = wordpiece_corpus(lesson.small, lesson.seed)
chinese = CHINESE_SENTENCES      # a few Chinese sentences, so the vocabulary has the article's characters
texts = corpus + chinese
merges = []
vocab_tokens = train_wordpiece(texts, vocab_size=vocab_size(lesson.small),
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
# The pair counts before any merge: every word as characters, "##" on all but the first.
start_pairs = Counter()
for w, n in count_words(texts).items():
    syms = [w[0]] + ["##" + c for c in w[1:]]
    start_pairs.update({pair: n for pair in zip(syms, syms[1:])})
(a2, b2), n2 = start_pairs.most_common(1)[0]
first = merges[0]
lesson.claim("the score divides by how frequent each part is, so a pair wins by being exclusive, not "
             "common: at step 1 the most frequent pair is {a2}+{b2} ({n2} times), yet the merge chosen "
             "is {a}+{b}, which occurs {n1} times", (first[1], first[2]) != (a2, b2) and first[5] < n2,
             a=first[1], b=first[2], n1=first[5], a2=a2, b2=b2, n2=n2)
print("  the last merges:")
for step, a, b, ab, score, count in merges[-4:]:
    print(f"    {step:>4}  {a:>6} + {b:<6} -> {ab:<8} score {score:.2e}  count {count}")
corpus_words = {w for s in corpus for w in s.split()}
whole_words = [m[3] for m in merges[-4:] if m[3] in corpus_words]
lesson.claim("later merges build whole words: {k} of the last 4 merges are words of the corpus ({w})",
             len(whole_words) >= 2, k=len(whole_words), w=", ".join(whole_words))

# ------------------------------------------------------------------------------------------------
lesson.step("How the vocabulary size trades against sequence length",
            "tokens per word, for the vocabulary after k merges (the learned list cut at k)",
            code=Code(wordpiece, "while start < end", "end -= 1"), article="pretrain.1")
words = [w for s in corpus[:1000] for w in basic_tokenize(s)]
sizes, per_word, whole = [], [], []
for k in np.linspace(0, len(merges), 12).astype(int):
    v = set(vocab_tokens[:n_alpha + k])
    pieces = [len(wordpiece(w, v)) for w in words]
    sizes.append(n_alpha + k)
    per_word.append(float(np.mean(pieces)))
    whole.append(float(np.mean(np.array(pieces) == 1)))
for s_, p_, w_ in zip(sizes[::3] + [sizes[-1]], per_word[::3] + [per_word[-1]], whole[::3] + [whole[-1]]):
    lesson.value(f"vocab {s_:>4}", f"{p_:.2f} tokens per word, {w_:.1%} of words are one token")
lesson.claim("more merges, shorter sequences: from {p0:.2f} tokens per word with the alphabet alone to "
             "{p1:.2f} with the full vocabulary, which makes {k1:,} of {n:,} corpus words ({w1:.1%}) single tokens",
             per_word[-1] < per_word[0] and all(b <= a for a, b in zip(per_word, per_word[1:])),
             p0=per_word[0], p1=per_word[-1], w1=whole[-1], k1=round(whole[-1] * len(words)), n=len(words))
lesson.say("""The generated corpus has a small, closed word list; on open text a vocabulary of ~30k
(BERT's) plays the same trade-off: fewer, longer tokens against a bigger embedding table (lesson 04
counts its cost).""")
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
            code=[save_wordpiece_vocab, Code(BertTokenizer.tokenize, "for word in basic_tokenize", "tokens.extend")],
            article="pretrain.1")
folder = tempfile.mkdtemp(prefix="tinybert_vocab_")
path = save_wordpiece_vocab(vocab_tokens, os.path.join(folder, "vocab.txt"))
own = BertTokenizer(path)
for text in ("the dog sleeps in the park .", "the dogs were sleeping happily", CHINESE):
    t = own.tokenize(text)
    lesson.value(repr(text), t)
zh_own = own.tokenize(CHINESE)
lesson.value("ids of the article's sentence", own.convert_tokens_to_ids(zh_own))
known = "the dog sleeps in the park .".split()
one_piece = sum(len(own.tokenize(w)) == 1 for w in known)
unseen = own.tokenize("happily")
lesson.claim("{k} of the {n} words of 'the dog sleeps in the park .' are single tokens; the unseen "
             "word 'happily' is spelled from {m} pieces; the article's sentence has {n_unk} [UNK]",
             one_piece >= len(known) - 1 and "happily" not in corpus_words and len(unseen) > 1
             and "[UNK]" not in zh_own + unseen,
             k=one_piece, n=len(known), m=len(unseen), n_unk=zh_own.count("[UNK]"))

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
], try_next=[
    ("Tokenize words of your own with the English vocabulary: wordpiece('unbelievably', tok.vocab), "
     "a made-up word such as 'flurbogrix', and 'caf☃'.",
     "'unbelievably' starts with the longest prefix in the vocabulary, then '##' pieces that spell the "
     "word back; the made-up word breaks into short pieces; 'caf☃', with a character the vocabulary "
     "lacks, becomes one [UNK]."),
    ("Learn a smaller vocabulary: set vocab_size in step 5 (400 with --small, 800 without) to 150.",
     "fewer merges, so more than twice as many tokens per word (the curve in 01_vocab_size.png stops "
     "earlier and higher), and fewer than half of the words of 'the dog sleeps in the park .' stay "
     "single tokens in step 7, whose claim then fails: it was true of the larger vocabulary only."),
    ("Remove the Chinese sentences from the corpus (texts = corpus) in step 5.",
     "the learned vocabulary has no Chinese characters, so all 8 characters of 我喜欢在雨中漫步 become "
     "[UNK] in step 7 — and that step's claim fails, as it should."),
])
