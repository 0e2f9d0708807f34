"""BERT's WordPiece tokenizer: text -> input_ids, token_type_ids, attention_mask.

The article begins with ``tokenizer.tokenize("我喜欢在雨中漫步")``. This file shows every step of that
call, one small function per stage, in the order BERT runs them::

    text ──clean_text──▶ drop control characters, NUL and U+FFFD; every kind of space becomes " "
         ──tokenize_chinese_chars──▶ " 我 喜 欢 ..."  (each CJK ideograph becomes its own word)
         ──strip_accents──▶ NFD, then drop the combining marks     (uncased models only)
         ──lowercase──▶ one character at a time                     (uncased models only)
         ──split_on_punctuation──▶ ["hello", ",", "world", "!"]     (whitespace and punctuation)
         ──wordpiece──▶ ["una", "##ffa", "##ble"]  greedy longest-match-first against vocab.txt
         ──BertTokenizer──▶ [CLS] A [SEP] (B [SEP]) -> ids, segment ids, mask; truncate, pad

``basic_tokenize`` runs the first five stages; ``wordpiece`` is the last one.

Faithful to HF's ``BertTokenizerFast`` (the Rust ``tokenizers`` library), which is what checkpoints are
used with, and the tests check it id for id on real English and Chinese text. The places where it
differs from the older pure-Python ``BertTokenizer`` are stated where the code does them:

- lower-casing is per character (``"Σ"`` always becomes ``"σ"``; Python's ``str.lower`` would pick the
  final form ``"ς"`` at the end of a word), and it runs after accent stripping;
- no NFC normalization of the text first;
- the special tokens ``[CLS] [SEP] [PAD] [UNK] [MASK]`` written in the text are kept whole;
- the character classes (control, punctuation, combining mark) are Unicode 8.0's, which is what the
  Rust library's tables hold; Python's ``unicodedata`` is newer, so the few characters that changed
  class or were added since are listed in tables at the bottom of this file.

The library needs only NumPy; nothing here imports torch or transformers.
"""
import bisect
import json
import os
import re
import unicodedata

import numpy as np

from tinybert.config import check_memory, format_bytes
from tinybert.errors import InvalidType, InvalidValue, MissingFile
from tinybert.io.files import write_text_atomic
from tinybert.io.paths import (SPECIAL_TOKENS_MAP_NAME, TOKENIZER_CONFIG_NAME, TOKENIZER_JSON_NAME, VOCAB_NAME,
                               resolve_model_path, where_looked)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# BERT counts every printable non-alphanumeric ASCII character as punctuation, even "$", "^", "`"
# and "~", which Unicode files under symbols (S*), not punctuation (P*).
ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


# ---------------------------------------------------------------------------------------------
# Character classes
# ---------------------------------------------------------------------------------------------

def _in_ranges(cp, ranges):
    """Is code point ``cp`` in one of the inclusive ``ranges`` (sorted (first, last) pairs)?"""
    i = bisect.bisect_right(ranges, (cp, 0x10FFFF)) - 1   # the last range with first <= cp
    return i >= 0 and cp <= ranges[i][1]


def is_whitespace(char):
    """True for "\\t", "\\n", "\\r" and every character with Unicode's White_Space property."""
    return char in "\t\n\r" or char.isspace()


def is_control(char):
    """True for characters that ``clean_text`` deletes: categories Cc, Cf, Co, Cs, except "\\t\\n\\r".

    Unassigned code points (Cn) are kept, as in HF's tokenizers.
    """
    if char in "\t\n\r":
        return False
    cp = ord(char)
    if _in_ranges(cp, _CONTROL_ADDED_AFTER_UNICODE_8):
        return False
    return unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


def is_chinese_char(char):
    """True for a CJK ideograph: the CJK Unified Ideographs blocks and the compatibility ideographs.

    Hangul, Hiragana and Katakana are not in these blocks: those scripts separate words by spaces.
    The Rust library's list begins its Extension E range at U+2B920 rather than U+2B820; we follow it.
    """
    return _in_ranges(ord(char), _CJK_RANGES)


def is_punctuation(char):
    """True for ASCII punctuation (see ``ASCII_PUNCTUATION``) and Unicode categories P*."""
    if char in ASCII_PUNCTUATION:
        return True
    cp = ord(char)
    if _in_ranges(cp, _PUNCTUATION_IN_UNICODE_8_ONLY):
        return True
    if _in_ranges(cp, _PUNCTUATION_ADDED_AFTER_UNICODE_8):
        return False
    return unicodedata.category(char).startswith("P")


def is_nonspacing_mark(char):
    """True for Unicode category Mn (the accents that NFD splits off a letter)."""
    cp = ord(char)
    if _in_ranges(cp, _NONSPACING_MARK_IN_UNICODE_8_ONLY):
        return True
    if _in_ranges(cp, _NONSPACING_MARK_ADDED_AFTER_UNICODE_8):
        return False
    return unicodedata.category(char) == "Mn"


class _CharMap(dict):
    """A table for ``str.translate`` that fills itself: ``table[ord(c)]`` is ``rule(c)``, computed once.

    Real text uses a few thousand distinct characters, so after the first pass every stage below is a
    single ``str.translate`` call, running in C. The rule itself stays a plain Python function.
    """

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __missing__(self, cp):
        value = self.rule(chr(cp))
        self[cp] = value
        return value


# ---------------------------------------------------------------------------------------------
# The stages, each a function of a string
# ---------------------------------------------------------------------------------------------

def _clean_char(char):
    if char in ("\x00", "\ufffd") or is_control(char):
        return ""
    if is_whitespace(char):
        return " "
    return char


def _pad_chinese_char(char):
    return " " + char + " " if is_chinese_char(char) else char


def _drop_nonspacing_mark(char):
    return "" if is_nonspacing_mark(char) else char


def _lower_char(char):
    cp = ord(char)
    for first, last, offset in _LOWERCASE_ADDED_AFTER_UNICODE_14:
        if first <= cp <= last:
            return chr(cp + offset)
    return char.lower()


def _pad_punctuation(char):
    return " " + char + " " if is_punctuation(char) else char


_CLEAN = _CharMap(_clean_char)
_PAD_CHINESE = _CharMap(_pad_chinese_char)
_DROP_NONSPACING_MARKS = _CharMap(_drop_nonspacing_mark)
_LOWER = _CharMap(_lower_char)
_PAD_PUNCTUATION = _CharMap(_pad_punctuation)


def clean_text(text):
    """Delete NUL, U+FFFD and control/format characters; turn every whitespace character into " ".

    clean_text("a\\u200bb\\tc\\x00") == "ab c"   (U+200B ZERO WIDTH SPACE is a format character, Cf)
    """
    return text.translate(_CLEAN)


def tokenize_chinese_chars(text):
    """Put a space on both sides of every CJK ideograph, so that each one becomes its own word.

    tokenize_chinese_chars("我喜欢") == " 我  喜  欢 "
    """
    return text.translate(_PAD_CHINESE)


def strip_accents(text):
    """Decompose (Unicode NFD) and drop the non-spacing marks: "café" -> "cafe", "Ünïcödé" -> "Unicode".

    NFD writes "é" as "e" + U+0301 COMBINING ACUTE ACCENT; the accent is category Mn and goes.
    """
    if text.isascii():
        return text
    if _NFD_KEEP_WHOLE.search(text):
        # The Rust tables do not know these decompositions yet: keep those characters whole (they are
        # starters, so normalizing the pieces between them apart gives the same result otherwise).
        pieces = _NFD_KEEP_WHOLE.split(text)
        text = "".join(p if i % 2 else unicodedata.normalize("NFD", p) for i, p in enumerate(pieces))
    else:
        text = unicodedata.normalize("NFD", text)
    return text.translate(_DROP_NONSPACING_MARKS)


def lowercase(text):
    """Lower-case one character at a time ("ΣΑΣ" -> "σασ", not Python's word-final "σας")."""
    if text.isascii():
        return text.lower()
    return text.translate(_LOWER)


def split_on_punctuation(text):
    """Split on whitespace, and make every punctuation character a word of its own.

    split_on_punctuation("hello, world!") == ["hello", ",", "world", "!"]
    split_on_punctuation("don't") == ["don", "'", "t"]
    """
    return whitespace_tokenize(text.translate(_PAD_PUNCTUATION))


def whitespace_tokenize(text):
    """Split on runs of whitespace: "  a  b " -> ["a", "b"]."""
    return text.split()


def basic_tokenize(text, do_lower_case=True, tokenize_chinese=True, strip_accents_=None):
    """The whole pre-WordPiece pipeline: str -> list of words (punctuation marks are words too).

    Args:
        text: str.
        do_lower_case: lower-case the text (the "uncased" models).
        tokenize_chinese: make each CJK ideograph a word.
        strip_accents_: remove accents; None means "do it exactly when do_lower_case" (original BERT).
    Returns:
        list[str], e.g. basic_tokenize("Héllo, 世界!") == ["hello", ",", "世", "界", "!"].
    """
    if strip_accents_ is None:
        strip_accents_ = do_lower_case
    text = clean_text(text)
    if tokenize_chinese:
        text = tokenize_chinese_chars(text)
    if strip_accents_:
        text = strip_accents(text)
    if do_lower_case:
        text = lowercase(text)
    return split_on_punctuation(text)


def wordpiece(word, vocab, unk_token="[UNK]", max_input_chars_per_word=100):
    """Greedy longest-match-first WordPiece: one word -> its pieces.

    Take the longest prefix of the word that is in the vocab; then, from where it ended, the longest
    "##"-prefixed continuation that is in the vocab; and so on. If some position has no match at all,
    or the word is longer than ``max_input_chars_per_word`` characters, the whole word is ``unk_token``.

        wordpiece("unaffable", vocab) == ["una", "##ffa", "##ble"]     (bert-base-uncased's vocab)

    Args:
        word: str without whitespace.
        vocab: a dict (or set) of tokens.
    Returns:
        list[str] of pieces, or [unk_token].
    """
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    pieces = []
    start = 0
    while start < len(word):
        end = len(word)
        piece = None
        while start < end:
            candidate = word[start:end] if start == 0 else "##" + word[start:end]
            if candidate in vocab:
                piece = candidate
                break
            end -= 1
        if piece is None:
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# ---------------------------------------------------------------------------------------------
# Vocabulary files
# ---------------------------------------------------------------------------------------------

VOCAB_MEMORY_FACTOR = 40    # a vocab.txt of S bytes (~8 a token) takes about this many times S once loaded


def load_vocab_tokens(vocab_file):
    """Read vocab.txt: one token a line, the id is the line number (0-based). -> list of tokens.
    A tokenizer.json (what transformers >= 5 saves instead) is read by ``load_tokenizer_json_vocab``."""
    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise MissingFile(f"vocab file not found: {vocab_file!r} (expected a vocab.txt, one token a line)")
    size = os.path.getsize(vocab_file)          # a str (~50 bytes), a list slot and two dict entries a token
    check_memory(VOCAB_MEMORY_FACTOR * size, f"the vocabulary {vocab_file} ({format_bytes(size)})", "vocab_file",
                 vocab_file)
    if vocab_file.endswith(".json"):
        return load_tokenizer_json_vocab(vocab_file)
    with open(vocab_file, "r", encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    if tokens and tokens[-1] == "":
        tokens.pop()  # a trailing empty line is not a token
    if not tokens:
        raise InvalidValue(f"vocab file is empty: {vocab_file!r} (expected one token a line)")
    return tokens


def load_tokenizer_json_vocab(file):
    """The WordPiece vocabulary of a ``tokenizers`` tokenizer.json ({"model": {"type": "WordPiece",
    "vocab": {token: id}}}) as a list of tokens in id order; the ids must be 0 … V−1."""
    try:
        with open(file, encoding="utf-8") as f:
            model = json.load(f).get("model")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise InvalidValue(f"{file} is not a tokenizer.json: {e}") from None
    if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise InvalidValue(f"{file} holds no WordPiece model with a vocab (BERT's tokenizer.json has one)")
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise InvalidValue(f"{file}: the vocab's ids are not 0..{len(tokens) - 1}, one per token")
    return tokens


def load_vocab(vocab_file):
    """vocab.txt -> dict token -> id. A repeated line maps to its last id, as in HF's load_vocab."""
    return {token: index for index, token in enumerate(load_vocab_tokens(vocab_file))}


def write_vocab(tokens, path):
    """Write tokens, one a line, to ``path`` atomically (a temporary file, then os.replace)."""
    return write_text_atomic(path, "".join(token + "\n" for token in tokens))


def _check_fits_the_model(tokenizer, vocab_file, config_file) -> None:
    """A checkpoint's files checked against each other: a vocabulary with more tokens than the
    model beside it has embeddings (config.json's vocab_size) would give ids with no row, which the
    model refuses only later, not naming the files. Fewer tokens are fine (HF pads embedding
    tables)."""
    try:
        with open(config_file, encoding="utf-8") as f:
            vocab_size = json.load(f).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return                              # no readable config beside it: nothing to check against
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and tokenizer.vocab_size > vocab_size:
        raise InvalidValue(f"{vocab_file} has {tokenizer.vocab_size} tokens but {config_file} gives the model "
                           f"vocab_size={vocab_size}: ids {vocab_size}..{tokenizer.vocab_size - 1} would have no "
                           "embedding; the two files are not of one checkpoint")


def _whole_number(name, value) -> int:
    """``value`` as an int >= 1 (tokenizer_config.json may write 1e30 for "no limit"), else an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or not value >= 1 \
            or (isinstance(value, float) and not value.is_integer()):
        raise InvalidValue(f"{name}={value!r}: expected a whole number >= 1")
    return int(value)


# the options tokenizer_config.json carries, read by from_pretrained and written by save_pretrained
CONFIG_KEYS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length")


def _read_tokenizer_config(file):
    """tokenizer_config.json as a dict ({} when there is none); an unreadable one is an error naming it."""
    if not os.path.isfile(file):
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidValue(f"{file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise InvalidValue(f"{file} holds a JSON {type(config).__name__}, expected an object")
    return config


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------

_TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
_PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")


class BertTokenizer:
    """BERT's tokenizer: basic tokenization, WordPiece, then [CLS]/[SEP], segment ids, truncation, padding.

    Args:
        vocab_file: path to vocab.txt (one token a line; the id is the line number).
        do_lower_case: True for uncased checkpoints (lower-case and strip accents).
        tokenize_chinese_chars: make each CJK ideograph a word.
        strip_accents: None (follow do_lower_case), True or False.
        max_input_chars_per_word: longer words become [UNK] (100, as in BERT).
        model_max_length: the default max_length for truncation=True and padding="max_length"; 512 is
            the number of position embeddings of every BERT checkpoint.

    The call ``tok(text, text_pair=None, padding=False, truncation=None, max_length=None)`` returns a
    dict of NumPy int64 arrays ``input_ids``, ``token_type_ids``, ``attention_mask``:

    - one text (a str): each array has shape [T];
    - a list of B texts: each array has shape [B, T]. Without padding every row must have the same
      length, else ValueError (HF's ``return_tensors="np"`` does the same); pass padding=True.

    ``encode`` returns a plain list of ids, like HF's.
    """

    def __init__(self, vocab_file, do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None,
                 max_input_chars_per_word=100, model_max_length=512,
                 unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]"):
        self.vocab_file = os.fspath(vocab_file)
        self.ids_to_tokens = load_vocab_tokens(self.vocab_file)     # id -> token
        self.vocab = {token: index for index, token in enumerate(self.ids_to_tokens)}  # token -> id
        self.do_lower_case = bool(do_lower_case)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.strip_accents = strip_accents
        self.max_input_chars_per_word = _whole_number("max_input_chars_per_word", max_input_chars_per_word)
        self.model_max_length = _whole_number("model_max_length", model_max_length)

        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token = cls_token, mask_token
        self.all_special_tokens = [pad_token, unk_token, cls_token, sep_token, mask_token]
        missing = [t for t in self.all_special_tokens if t not in self.vocab]
        if missing:
            raise InvalidValue(f"vocab file {self.vocab_file!r} lacks the special token(s) {missing}; "
                             f"a BERT vocab must contain all of {self.all_special_tokens}")
        self.unk_token_id = self.vocab[unk_token]
        self.sep_token_id = self.vocab[sep_token]
        self.pad_token_id = self.vocab[pad_token]
        self.cls_token_id = self.vocab[cls_token]
        self.mask_token_id = self.vocab[mask_token]
        self.all_special_ids = [self.vocab[t] for t in self.all_special_tokens]

        # Special tokens written in the text stay whole ("a [MASK] b"), matched case-sensitively, the
        # longest first, before any other stage.
        by_length = sorted(self.all_special_tokens, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(re.escape(t) for t in by_length) + ")")
        self._word_cache = {}

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Load from a folder holding vocab.txt, from a vocab.txt file, or from "all-MiniLM-L6-v2".

        A tokenizer_config.json next to the vocab supplies do_lower_case, strip_accents,
        tokenize_chinese_chars and model_max_length unless given here.
        """
        name, path = path, resolve_model_path(path)
        if not os.path.exists(path):
            raise MissingFile(f"no tokenizer found for {os.fspath(name)!r} (a folder holding {VOCAB_NAME}, a "
                              f"{VOCAB_NAME} file, or a model name). Looked in: {where_looked(name)}")
        if os.path.isdir(path):
            folder, vocab_file = path, os.path.join(path, VOCAB_NAME)
            if not os.path.isfile(vocab_file) and os.path.isfile(os.path.join(path, TOKENIZER_JSON_NAME)):
                vocab_file = os.path.join(path, TOKENIZER_JSON_NAME)       # transformers >= 5 saves only this
        else:
            folder, vocab_file = os.path.dirname(path), path
        config = _read_tokenizer_config(os.path.join(folder, TOKENIZER_CONFIG_NAME))
        for key in CONFIG_KEYS:
            if key in config and key not in kwargs:
                kwargs[key] = config[key]
        tokenizer = cls(vocab_file, **kwargs)
        _check_fits_the_model(tokenizer, vocab_file, os.path.join(folder, "config.json"))
        return tokenizer

    def save_pretrained(self, folder):
        """Write vocab.txt, tokenizer_config.json and special_tokens_map.json into ``folder`` (created if
        missing): what ``BertTokenizer.from_pretrained`` reads back, ours and transformers'.
        -> the paths written."""
        if isinstance(folder, bool) or not isinstance(folder, (str, os.PathLike)):
            raise InvalidType(f"folder must be a path (str or os.PathLike), got {type(folder).__name__}")
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        paths = [self.save_vocabulary(folder)]
        special = {"unk_token": self.unk_token, "sep_token": self.sep_token, "pad_token": self.pad_token,
                   "cls_token": self.cls_token, "mask_token": self.mask_token}
        config = {"tokenizer_class": "BertTokenizer", **{key: getattr(self, key) for key in CONFIG_KEYS},
                  **special}
        for name, content in ((TOKENIZER_CONFIG_NAME, config), (SPECIAL_TOKENS_MAP_NAME, special)):
            path = os.path.join(folder, name)
            write_text_atomic(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
            paths.append(path)
        return tuple(paths)

    def save_vocabulary(self, folder):
        """Write vocab.txt into ``folder`` (created if missing), ids in order. -> the file's path."""
        os.makedirs(folder, exist_ok=True)
        return write_vocab(self.ids_to_tokens, os.path.join(folder, VOCAB_NAME))

    def get_vocab(self):
        """A copy of the token -> id dict."""
        return dict(self.vocab)

    @property
    def vocab_size(self):
        """The number of ids (lines of vocab.txt): the rows of the word-embedding matrix."""
        return len(self.ids_to_tokens)

    def __len__(self):
        return len(self.ids_to_tokens)

    def __repr__(self):
        return (f"BertTokenizer(vocab_file={self.vocab_file!r}, vocab_size={self.vocab_size}, "
                f"do_lower_case={self.do_lower_case})")

    # -- text -> tokens -> ids ---------------------------------------------------------------

    def tokenize(self, text):
        """str -> list of WordPiece tokens (no [CLS]/[SEP])."""
        if not isinstance(text, str):
            raise InvalidType(f"text must be a str, got {type(text).__name__}")
        tokens = []
        for i, chunk in enumerate(self._special_pattern.split(text)):
            if i % 2 == 1:          # re.split with a group puts the matched special tokens at odd places
                tokens.append(chunk)
                continue
            for word in basic_tokenize(chunk, self.do_lower_case, self.tokenize_chinese_chars, self.strip_accents):
                tokens.extend(self._wordpiece_cached(word))
        return tokens

    def _wordpiece_cached(self, word):
        pieces = self._word_cache.get(word)
        if pieces is None:
            pieces = wordpiece(word, self.vocab, self.unk_token, self.max_input_chars_per_word)
            if len(self._word_cache) > 200_000:
                self._word_cache.clear()
            self._word_cache[word] = pieces
        return pieces

    def convert_tokens_to_ids(self, tokens):
        """A token or a list of tokens -> its id(s); a token not in the vocab gives unk_token_id."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(token, self.unk_token_id) for token in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """An id or a sequence of ids (list or NumPy array) -> token(s)."""
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in np.asarray(ids).reshape(-1).tolist() if i not in special]

    def _id_to_token(self, index):
        if not 0 <= index < len(self.ids_to_tokens):
            raise InvalidValue(f"token id {index} is out of range: ids are 0..{len(self.ids_to_tokens) - 1}")
        return self.ids_to_tokens[index]

    def convert_tokens_to_string(self, tokens):
        """Join tokens with spaces, glue "##" continuations to what precedes them, tidy punctuation.

        The tidying is HF's WordPiece decoder's (``cleanup=True``), token by token: a token that is
        ".", "?", "!" or "," loses the space before it, "n't", "'m", "'s", "'ve", "'re" likewise.
        """
        out = []
        for i, token in enumerate(tokens):
            if i > 0:
                token = token[2:] if token.startswith("##") else " " + token
            out.append(_cleanup(token))
        return "".join(out)

    def decode(self, ids, skip_special_tokens=False):
        """ids (list, or a 1-D NumPy array) -> text. ``skip_special_tokens`` drops [CLS] [SEP] [PAD] [UNK] [MASK].

        Float arrays are a TypeError, as in transformers: the article's ``decode(outputs[0])`` hands it
        hidden states [T, H], vectors rather than token ids."""
        ids = np.asarray(ids)
        if ids.size and ids.dtype.kind not in "iu":
            # e.g. hidden states: vectors of floats are not token ids (the article's example does this)
            raise InvalidType(f"decode expects integer token ids, got dtype {ids.dtype} with shape "
                              f"{list(ids.shape)} (hidden states are vectors, not ids)")
        if ids.ndim != 1:
            raise InvalidValue(f"decode expects a 1-D sequence of ids, got shape {ids.shape} "
                               "(batch_decode takes [B, T])")
        return self.convert_tokens_to_string(self.convert_ids_to_tokens(ids, skip_special_tokens))

    def batch_decode(self, sequences, skip_special_tokens=False):
        """[B, T] ids (a 2-D array or a list of id lists) -> a list of B texts (``decode`` of each row)."""
        if isinstance(sequences, np.ndarray) and sequences.ndim != 2:
            raise InvalidValue(f"batch_decode expects [B, T] ids, got shape {sequences.shape}")
        return [self.decode(row, skip_special_tokens) for row in sequences]

    # -- ids with special tokens, truncation, padding ----------------------------------------

    def encode(self, text, text_pair=None, add_special_tokens=True, truncation=None, max_length=None):
        """One text (and optionally its pair) -> list of ids: [CLS] A [SEP] or [CLS] A [SEP] B [SEP]."""
        if truncation is None and max_length is None and isinstance(text, str) and text_pair is None:
            # The common case, without building arrays: [CLS] ids [SEP].
            ids = self.convert_tokens_to_ids(self.tokenize(text))
            return [self.cls_token_id] + ids + [self.sep_token_id] if add_special_tokens else ids
        if not isinstance(text, str):
            raise InvalidType(f"text must be a str, got {type(text).__name__}")
        encoded = self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                       max_length=max_length)
        return encoded["input_ids"].tolist()

    def __call__(self, text, text_pair=None, padding=False, truncation=None, max_length=None,
                 add_special_tokens=True, pad_to_multiple_of=None, return_tensors=None):
        """Text(s) -> a BatchEncoding {"input_ids", "token_type_ids", "attention_mask"} of NumPy int64 arrays.

        Args:
            text: a str (-> arrays of shape [T]) or a list of B str (-> arrays of shape [B, T]).
            text_pair: None, or the second segment(s): a str for a str, a list of B str for a list.
            padding: False/"do_not_pad"; True/"longest" (pad to the longest in the batch);
                "max_length" (pad to max_length, or model_max_length when max_length is None).
                Padding is on the right with pad_token_id, attention_mask 0, token_type_ids 0.
            truncation: None (= "longest_first" when max_length is given and padding is off, as in HF;
                otherwise no truncation), False/"do_not_truncate", True/"longest_first" (take tokens
                off the longer segment), "only_first", "only_second".
            max_length: the length limit including special tokens; None means model_max_length.
            add_special_tokens: add [CLS] and [SEP].
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_tensors: None (arrays [T] for a str, [B, T] for a list) or "np" (always [B, T], a
                str being a batch of one, as transformers gives). NumPy is all tinybert runs on, so
                "pt" and "tf" are refused.
        Returns:
            a BatchEncoding (a dict with attribute access: ``enc.input_ids``) of np.int64 arrays.
            token_type_ids is 0 on [CLS] A [SEP] and 1 on B [SEP].
        """
        if return_tensors not in (None, "np"):
            raise InvalidValue(f"return_tensors={return_tensors!r}: tinybert runs on NumPy, so it returns "
                               "return_tensors='np' (or None); torch and TensorFlow tensors are not made here")
        padding, truncation, max_length = _strategies(padding, truncation, max_length, pad_to_multiple_of,
                                                      self.model_max_length)
        texts, pairs, batched = _as_batch(text, text_pair)
        n_special = (3 if any(p is not None for p in pairs) else 2) if add_special_tokens else 0
        if truncation != "do_not_truncate" and max_length < n_special:
            raise InvalidValue(f"max_length={max_length} is too small to hold the {n_special} special tokens "
                               f"([CLS], then [SEP] after each segment); use max_length >= {n_special}")
        budget = None if truncation == "do_not_truncate" else max_length - n_special
        rows = [self._encode_pair(first, second, truncation, budget, add_special_tokens)
                for first, second in zip(texts, pairs)]
        if padding != "do_not_pad":
            target = max((len(r[0]) for r in rows), default=0) if padding == "longest" else max_length
            if pad_to_multiple_of:
                target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
            rows = [self._pad(row, target) for row in rows]
        return BatchEncoding(_as_arrays(rows, batched or return_tensors == "np"))

    def _encode_pair(self, first, second, truncation, budget, add_special_tokens):
        """One text (and its pair) -> (input_ids, token_type_ids, attention_mask) lists: tokenized,
        cut to ``budget`` ids by the ``truncation`` strategy (None: no limit), special tokens added."""
        if not isinstance(first, str):
            raise InvalidType(f"each text must be a str, got {type(first).__name__}")
        if second is not None and not isinstance(second, str):
            raise InvalidType(f"each text_pair must be a str, got {type(second).__name__}")
        ids_a = self.convert_tokens_to_ids(self.tokenize(first))
        ids_b = None if second is None else self.convert_tokens_to_ids(self.tokenize(second))
        if budget is not None:
            ids_a, ids_b = truncate_pair(ids_a, ids_b, budget, truncation)
        return self._with_special_tokens(ids_a, ids_b, add_special_tokens)

    def _with_special_tokens(self, ids_a, ids_b, add_special_tokens):
        if add_special_tokens:
            input_ids = [self.cls_token_id] + ids_a + [self.sep_token_id]
        else:
            input_ids = list(ids_a)
        token_type_ids = [0] * len(input_ids)
        if ids_b is not None:
            second = ids_b + [self.sep_token_id] if add_special_tokens else list(ids_b)
            input_ids += second
            token_type_ids += [1] * len(second)
        return input_ids, token_type_ids, [1] * len(input_ids)

    def _pad(self, row, length):
        input_ids, token_type_ids, attention_mask = row
        n = length - len(input_ids)
        if n <= 0:
            return row
        return (input_ids + [self.pad_token_id] * n, token_type_ids + [0] * n, attention_mask + [0] * n)


class BatchEncoding(dict):
    """What the tokenizer's call returns, as transformers' BatchEncoding: a dict of arrays
    (``model(**enc)``, ``enc["input_ids"]``) whose keys also read as attributes (``enc.input_ids``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no {name!r}; it holds {sorted(self)}") from None


def _strategies(padding, truncation, max_length, pad_to_multiple_of, model_max_length):
    """The call's options as HF reads them -> (padding strategy, truncation strategy, max_length):
    max_length defaults to ``model_max_length`` wherever a limit is needed, and must be an int."""
    padding_strategy = _padding_strategy(padding)
    truncation_strategy = _truncation_strategy(truncation, max_length, padding_strategy)
    if max_length is None and (truncation_strategy != "do_not_truncate" or padding_strategy == "max_length"):
        max_length = model_max_length
    if max_length is not None and (not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool)):
        raise InvalidType(f"max_length must be an int or None, got {type(max_length).__name__}")
    if (truncation_strategy != "do_not_truncate" and padding_strategy != "do_not_pad" and pad_to_multiple_of
            and max_length % pad_to_multiple_of != 0):
        # Padding up to the multiple would undo the truncation; HF refuses this too.
        raise InvalidValue(f"max_length={max_length} must be a multiple of pad_to_multiple_of={pad_to_multiple_of} "
                           "when both truncation and padding are on")
    return padding_strategy, truncation_strategy, max_length


def _as_batch(text, text_pair):
    """-> (texts, pairs, batched): one str becomes a batch of one; a list of texts needs a list of as
    many pairs (or None)."""
    if isinstance(text, (list, tuple)):
        texts = list(text)
        if text_pair is None:
            return texts, [None] * len(texts), True
        if isinstance(text_pair, (list, tuple)) and len(text_pair) == len(texts):
            return texts, list(text_pair), True
        raise InvalidValue(f"text_pair must be a list of {len(texts)} str to go with a list of "
                           f"{len(texts)} texts, got {_describe(text_pair)}")
    if not isinstance(text, str):
        raise InvalidType(f"text must be a str or a list of str, got {type(text).__name__}")
    if text_pair is not None and not isinstance(text_pair, str):
        raise InvalidType(f"text_pair must be a str (or None) when text is a str, got {type(text_pair).__name__}")
    return [text], [text_pair], False


def _as_arrays(rows, batched):
    """Encoded rows -> {"input_ids", "token_type_ids", "attention_mask"}: int64 arrays [T] for one
    text, [B, T] for a batch (whose rows must then have one length: pad them)."""
    names = ("input_ids", "token_type_ids", "attention_mask")
    if not batched:
        return {name: np.array(rows[0][k], dtype=np.int64) for k, name in enumerate(names)}
    lengths = sorted({len(r[0]) for r in rows})
    if len(lengths) > 1:
        raise InvalidValue(f"the {len(rows)} encoded texts have different lengths {lengths[0]}..{lengths[-1]}, "
                           "so they cannot form one [B, T] array; pass padding=True (or 'max_length')")
    t = lengths[0] if lengths else 0
    return {name: np.array([r[k] for r in rows], dtype=np.int64).reshape(len(rows), t)
            for k, name in enumerate(names)}


def truncate_pair(ids_a, ids_b, budget, strategy):
    """Cut ids_a (and ids_b) so that together they hold at most ``budget`` ids (special tokens excluded).

    "longest_first": both segments keep min(own length, fair share), the longer one taking what the
        shorter leaves: with n_a <= n_b, n_b = max(n_a, budget - n_a); if n_a + n_b still exceeds the
        budget, they get budget // 2 each and the longer the odd one (this is HF tokenizers' rule).
    "only_first" / "only_second": cut that segment alone; ValueError if cutting it is not enough.
    A budget of 0 (max_length equal to the number of special tokens) empties both, whatever the
    strategy, as HF tokenizers does.
    """
    n_a = len(ids_a)
    n_b = 0 if ids_b is None else len(ids_b)
    if n_a + n_b <= budget:
        return ids_a, ids_b
    if budget == 0:
        return [], (None if ids_b is None else [])
    if strategy == "longest_first":
        if ids_b is None:
            return ids_a[:budget], None
        short, long_ = (n_a, n_b) if n_a <= n_b else (n_b, n_a)
        if short > budget:
            long_ = short
        else:
            long_ = max(short, budget - short)
        if short + long_ > budget:
            short = budget // 2
            long_ = short + budget % 2
        keep_a, keep_b = (short, long_) if n_a <= n_b else (long_, short)
        return ids_a[:keep_a], ids_b[:keep_b]
    if strategy == "only_second" and ids_b is None:
        raise InvalidValue("truncation='only_second' needs a text_pair; there is no second sequence to cut")
    if strategy == "only_first":
        if n_b >= budget:
            raise InvalidValue(f"truncation='only_first' cannot fit max_length: the second sequence alone has "
                             f"{n_b} tokens and the budget after special tokens is {budget}")
        return ids_a[:budget - n_b], ids_b
    if n_a >= budget:
        raise InvalidValue(f"truncation='only_second' cannot fit max_length: the first sequence alone has "
                         f"{n_a} tokens and the budget after special tokens is {budget}")
    return ids_a, ids_b[:budget - n_a]


def _padding_strategy(padding):
    if padding is True:
        return "longest"
    if padding is False or padding is None:
        return "do_not_pad"
    if padding in _PADDING_STRATEGIES:
        return padding
    raise InvalidValue(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def _truncation_strategy(truncation, max_length, padding_strategy):
    if truncation is None:
        # HF: a max_length with neither truncation nor padding asked for means "longest_first".
        return "longest_first" if max_length is not None and padding_strategy == "do_not_pad" else "do_not_truncate"
    if truncation is True:
        return "longest_first"
    if truncation is False:
        return "do_not_truncate"
    if truncation in _TRUNCATION_STRATEGIES:
        return truncation
    raise InvalidValue(f"truncation must be False, True, 'longest_first', 'only_first', 'only_second' or "
                     f"'do_not_truncate', got {truncation!r}")


def _describe(value):
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _cleanup(token):
    """HF tokenizers' WordPiece decoder cleanup, applied to one token (with its leading space)."""
    return (token.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" do not", " don't")
            .replace(" 's", "'s").replace(" 've", "'ve").replace(" 're", "'re"))


# ---------------------------------------------------------------------------------------------
# Unicode tables: where HF tokenizers (Unicode 8.0 tables) and Python's unicodedata differ
# ---------------------------------------------------------------------------------------------
# Measured over every code point against tokenizers 0.23 with Python 3.11 (Unicode 14.0);
# tests/test_tokenizer.py::test_every_code_point checks them again. Ranges are inclusive.

# The CJK blocks, as the Rust library lists them (note U+2B920, where the Python original has U+2B820).
_CJK_RANGES = (
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0x2F800, 0x2FA1F),
)

# Format characters (Cf) assigned after Unicode 8.0: the Rust tables see them as unassigned, and keep them.
_CONTROL_ADDED_AFTER_UNICODE_8 = (
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x110CD, 0x110CD), (0x13430, 0x13438),
)

# Punctuation (P*) assigned after Unicode 8.0: not split off by the Rust pre-tokenizer.
_PUNCTUATION_ADDED_AFTER_UNICODE_8 = (
    (0x061D, 0x061D), (0x09FD, 0x09FD), (0x0A76, 0x0A76), (0x0C77, 0x0C77), (0x0C84, 0x0C84), (0x1B7D, 0x1B7E),
    (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), (0x10EAD, 0x10EAD), (0x10F55, 0x10F59), (0x10F86, 0x10F89),
    (0x1144B, 0x1144F), (0x1145A, 0x1145B), (0x1145D, 0x1145D), (0x11660, 0x1166C), (0x116B9, 0x116B9),
    (0x1183B, 0x1183B), (0x11944, 0x11946), (0x119E2, 0x119E2), (0x11A3F, 0x11A46), (0x11A9A, 0x11A9C),
    (0x11A9E, 0x11AA2), (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11EF7, 0x11EF8), (0x11FFF, 0x11FFF),
    (0x12FF1, 0x12FF2), (0x16E97, 0x16E9A), (0x16FE2, 0x16FE2), (0x1E95E, 0x1E95F),
)

# Punctuation in Unicode 8.0 that later became a symbol or a mark (U+166D, U+111C9).
_PUNCTUATION_IN_UNICODE_8_ONLY = ((0x166D, 0x166D), (0x111C9, 0x111C9))

# Non-spacing marks (Mn) assigned after Unicode 8.0, or that were another category then: kept.
_NONSPACING_MARK_ADDED_AFTER_UNICODE_8 = (
    (0x07FD, 0x07FD), (0x0898, 0x089F), (0x08CA, 0x08E1), (0x09FE, 0x09FE), (0x0AFA, 0x0AFF), (0x0B55, 0x0B55),
    (0x0C04, 0x0C04), (0x0C3C, 0x0C3C), (0x0D00, 0x0D00), (0x0D3B, 0x0D3C), (0x0D81, 0x0D81), (0x0EBA, 0x0EBA),
    (0x180F, 0x180F), (0x1885, 0x1886), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFB), (0xA82C, 0xA82C), (0xA8C5, 0xA8C5),
    (0xA8FF, 0xA8FF), (0xA9BD, 0xA9BD), (0x10D24, 0x10D27), (0x10EAB, 0x10EAC), (0x10F46, 0x10F50),
    (0x10F82, 0x10F85), (0x11070, 0x11070), (0x11073, 0x11074), (0x110C2, 0x110C2), (0x111C9, 0x111C9),
    (0x111CF, 0x111CF), (0x1123E, 0x1123E), (0x1133B, 0x1133B), (0x11438, 0x1143F), (0x11442, 0x11444),
    (0x11446, 0x11446), (0x1145E, 0x1145E), (0x1182F, 0x11837), (0x11839, 0x1183A), (0x1193B, 0x1193C),
    (0x1193E, 0x1193E), (0x11943, 0x11943), (0x119D4, 0x119D7), (0x119DA, 0x119DB), (0x119E0, 0x119E0),
    (0x11A01, 0x11A0A), (0x11A33, 0x11A38), (0x11A3B, 0x11A3E), (0x11A47, 0x11A47), (0x11A51, 0x11A56),
    (0x11A59, 0x11A5B), (0x11A8A, 0x11A96), (0x11A98, 0x11A99), (0x11C30, 0x11C36), (0x11C38, 0x11C3D),
    (0x11C3F, 0x11C3F), (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3), (0x11CB5, 0x11CB6),
    (0x11D31, 0x11D36), (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), (0x11D47, 0x11D47),
    (0x11D90, 0x11D91), (0x11D95, 0x11D95), (0x11D97, 0x11D97), (0x11EF3, 0x11EF4), (0x16F4F, 0x16F4F),
    (0x16FE4, 0x16FE4), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1E000, 0x1E006), (0x1E008, 0x1E018),
    (0x1E01B, 0x1E021), (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF), (0x1E944, 0x1E94A),
)

# A non-spacing mark in Unicode 8.0 that is now a spacing mark (Mc): U+1734 HANUNOO SIGN PAMUDPOD.
_NONSPACING_MARK_IN_UNICODE_8_ONLY = ((0x1734, 0x1734),)

# Characters whose canonical decomposition (NFD) came after Unicode 8.0: left whole.
_NFD_ADDED_AFTER_UNICODE_8 = (0x11938,)
# Capital letters that Python 3.11's Unicode 14.0 does not know yet, while Rust's char::to_lowercase
# (Unicode 16) lower-cases them: (first, last, offset) means chr(cp) -> chr(cp + offset).
_LOWERCASE_ADDED_AFTER_UNICODE_14 = (
    (0x1C89, 0x1C89, 0x1), (0xA7CB, 0xA7CB, 0x0264 - 0xA7CB), (0xA7CC, 0xA7CC, 0x1), (0xA7CE, 0xA7CE, 0x1),
    (0xA7D2, 0xA7D2, 0x1), (0xA7D4, 0xA7D4, 0x1), (0xA7DA, 0xA7DA, 0x1), (0xA7DC, 0xA7DC, 0x019B - 0xA7DC),
    (0x10D50, 0x10D65, 0x20), (0x16EA0, 0x16EB8, 0x1B),
)
_NFD_KEEP_WHOLE = re.compile("(" + "|".join(chr(cp) for cp in _NFD_ADDED_AFTER_UNICODE_8) + ")")
