"""Solutions to lesson 01's exercises (run one with: lessons/01_tokenization.py --exercise N)."""
import os
import tempfile

import numpy as np

from _01_corpus import CHINESE_SENTENCES, vocab_size, wordpiece_corpus

from tinybert.text.tokenizer import BertTokenizer, basic_tokenize, wordpiece
from tinybert.text.wordpiece_trainer import save_wordpiece_vocab, train_wordpiece


def _learned_tokenizer(texts, size):
    """A BertTokenizer on a WordPiece vocabulary of ``size`` learned from ``texts`` (lesson 01, steps 5 and 7)."""
    tokens = train_wordpiece(texts, vocab_size=size)
    return BertTokenizer(save_wordpiece_vocab(tokens, os.path.join(tempfile.mkdtemp(), "vocab.txt")))


def exercise_1(lesson):
    """Tokenize a word of your own with the English vocabulary: wordpiece('unbelievably', tok.vocab).

    You should see the longest prefix in the vocabulary first, then '##' pieces; a made-up word breaks
    into many short pieces, a word with a character the vocabulary lacks becomes one [UNK].
    """
    tok = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
    words = {"unbelievably": "a real word", "flurbogrix": "a made-up word", "caf☃": "a character the vocabulary lacks"}
    pieces = {w: wordpiece(w, tok.vocab) for w in words}
    for w, what in words.items():
        lesson.value(f"wordpiece({w!r})", pieces[w], what)
    word, first = "unbelievably", pieces["unbelievably"][0]
    longer = [word[:n] for n in range(len(first) + 1, len(word) + 1) if word[:n] in tok.vocab]
    glued = first + "".join(p[2:] for p in pieces[word][1:])
    lesson.claim("'unbelievably' starts with {f!r}, and no longer prefix is in the vocabulary ({n} longer "
                 "ones are); the rest are '##' continuations that spell the word back ({g!r})",
                 not longer and all(p.startswith("##") for p in pieces[word][1:]) and glued == word,
                 f=first, n=len(longer), g=glued)
    lesson.claim("the made-up 'flurbogrix' falls into {k} short pieces (longest {m} characters); 'caf☃' is "
                 "one {u}: a single unknown character makes the whole word [UNK]",
                 len(pieces["flurbogrix"]) >= 3 and pieces["caf☃"] == ["[UNK]"],
                 k=len(pieces["flurbogrix"]), m=max(len(p.lstrip("#")) for p in pieces["flurbogrix"]),
                 u=pieces["caf☃"])


def exercise_2(lesson):
    """Learn a smaller vocabulary: set vocab_size in step 5 (400 with --small, 800 without) to 150.

    You should see fewer merges, so more tokens per word, and most words of 'the dog sleeps in the
    park .' split into pieces in step 7, whose claim (true of the larger vocabulary only) then fails.
    """
    texts = wordpiece_corpus(lesson.small, lesson.seed) + CHINESE_SENTENCES
    words = [w for s in texts[:1000] for w in basic_tokenize(s)]
    sentence = "the dog sleeps in the park .".split()
    per_word, single = {}, {}
    for size in (vocab_size(lesson.small), 150):
        own = _learned_tokenizer(texts, size)
        per_word[size] = float(np.mean([len(own.tokenize(w)) for w in words]))
        single[size] = sum(len(own.tokenize(w)) == 1 for w in sentence)
        lesson.value(f"vocab_size {size}", f"{per_word[size]:.2f} tokens per word; "
                     f"{[own.tokenize(w) for w in sentence]}")
    big = vocab_size(lesson.small)
    lesson.claim("with 150 tokens a word takes {a:.2f} tokens on average against {b:.2f} with {big}; only "
                 "{s} of the {n} words of 'the dog sleeps in the park .' stay single tokens (with {big}: {s0}), "
                 "so step 7's claim would fail",
                 per_word[150] > 2 * per_word[big] and single[150] < len(sentence) / 2 <= single[big],
                 a=per_word[150], b=per_word[big], big=big, s=single[150], n=len(sentence), s0=single[big])


def exercise_3(lesson):
    """Remove the Chinese sentences from the corpus (texts = corpus) in step 5.

    You should see that the learned vocabulary has no Chinese characters, so 我喜欢在雨中漫步 becomes
    [UNK]s in step 7 — and that step's claim fails, as it should.
    """
    corpus = wordpiece_corpus(lesson.small, lesson.seed)
    unk = {}
    for name, texts in (("corpus + Chinese", corpus + CHINESE_SENTENCES), ("corpus alone", corpus)):
        zh = _learned_tokenizer(texts, vocab_size(lesson.small)).tokenize("我喜欢在雨中漫步")
        unk[name] = zh.count("[UNK]")
        lesson.value(name, zh)
    lesson.claim("learned from the English corpus alone, the vocabulary turns all {n} characters of "
                 "我喜欢在雨中漫步 into [UNK] ({u} of 8); with the 18 Chinese sentences: {u0}",
                 unk["corpus alone"] == 8 and unk["corpus + Chinese"] == 0, n=8, u=unk["corpus alone"],
                 u0=unk["corpus + Chinese"])
