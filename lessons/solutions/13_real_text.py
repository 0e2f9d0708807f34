"""Solutions to lesson 13's exercises (People's Daily). Run one with
``python lessons/13_real_text.py --small --exercise k``. None of them trains a model: they measure the
data and the baselines the lesson's held-out scores rest on."""
import numpy as np
from _13_baselines import bigram_guess

from tinybert.text.tokenizer import is_chinese_char
from tinybert.text.wordpiece_trainer import train_wordpiece
from tinybert.training.corpora import read_peoples_daily, split_by_document


def _documents(lesson):
    """The lesson's documents and its split (150 documents of 10 paragraphs with --small, else 400)."""
    docs = read_peoples_daily(max_paragraphs=(150 if lesson.small else 400) * 10)
    return docs, *split_by_document(docs, 0.05, lesson.seed)


def _chars(docs):
    return [c for d in docs for t in d.texts for c in t if is_chinese_char(c)]


def exercise_1(lesson):
    """Train the vocabulary (1,500 tokens, as --small does) on a fifth of the training documents instead
    of all of them, and measure how many held-out Chinese characters it covers (the rest become [UNK]).

    You should see: fewer documents, fewer characters seen, so the coverage of the held-out text falls
    and more of it becomes [UNK] — the model cannot even read what its vocabulary lacks."""
    docs, train, held = _documents(lesson)
    held_chars = _chars(held)
    coverage = {}
    for name, part in (("all", train), ("a fifth", train[: len(train) // 5])):
        vocab = set(train_wordpiece([t for d in part for t in d.texts], 1500))
        coverage[name] = float(np.mean([c in vocab for c in held_chars]))
        lesson.value(f"vocabulary from {name} of the {len(train)} training documents",
                     f"{len(part)} documents: covers {coverage[name]:.1%} of the held-out characters")
    lesson.claim("a vocabulary from a fifth of the training documents covers {a:.1%} of the held-out characters, "
                 "against {b:.1%} from all of them: [UNK] goes from {ub:.1%} to {ua:.1%}",
                 coverage["a fifth"] < coverage["all"] - 0.01, a=coverage["a fifth"], b=coverage["all"],
                 ua=1 - coverage["a fifth"], ub=1 - coverage["all"])


def exercise_2(lesson):
    """Hold out paragraphs at random instead of whole documents (the same 5 %), and count the held-out
    paragraphs whose document also has paragraphs in the training part.

    You should see: nearly every held-out paragraph has neighbours from its own article in training
    (split_by_document: none) — the same names, places and topic: a held-out score measured that way
    is on text whose context the model has already read."""
    docs, train, held = _documents(lesson)
    paragraphs = [(d.id, t) for d in docs for t in d.texts]
    rng = np.random.default_rng(lesson.seed)
    pick = set(rng.permutation(len(paragraphs))[: round(0.05 * len(paragraphs))].tolist())
    held_p = [paragraphs[i] for i in sorted(pick)]
    train_p = [paragraphs[i] for i in range(len(paragraphs)) if i not in pick]
    train_ids = {i for i, _ in train_p}
    leaked = float(np.mean([i in train_ids for i, _ in held_p]))
    by_doc = float(np.mean([d.id in {t.id for t in train} for d in held]))

    lesson.value("held out by paragraph", f"{len(held_p)} paragraphs, {leaked:.0%} with their document in training")
    lesson.value("held out by document", f"{len(held)} documents, {by_doc:.0%} of them in training")
    lesson.claim("held out by paragraph, {a:.0%} of the {n} held-out paragraphs have their own article in the "
                 "training part; held out by document, {b:.0%}", leaked > 0.8 and by_doc == 0, a=leaked,
                 n=len(held_p), b=by_doc)


def exercise_3(lesson):
    """A baseline that reads one character of context: guess each held-out character as the one that most
    often follows the character before it in the training documents (the unigram model's commonest
    character when the previous one was never followed by one). Only Chinese characters are guessed and
    scored, as in the lesson.

    You should see: the bigram guess is right several times as often as the unigram model's single
    guess — a far stronger baseline than the unigram model. Step 2 of the lesson scores the same guess
    on the model's own masked targets (there it reads the corrupted input the model reads), beside
    the model's accuracy."""
    _, train, held = _documents(lesson)
    g = bigram_guess(train, held)
    lesson.value("unigram", f"always '{g['common']}': {g['unigram']:.1%} of {g['n']:,} held-out characters")
    lesson.value("bigram", f"the commonest follower of the previous character: {g['bigram']:.1%}")
    lesson.claim("one character of context lifts the guess from {u:.1%} (unigram) to {b:.1%} (bigram) on the "
                 "held-out characters, {x:.1f} times as many", g["bigram"] > 2 * g["unigram"], u=g["unigram"],
                 b=g["bigram"], x=g["bigram"] / g["unigram"])
