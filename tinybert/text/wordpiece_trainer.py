"""Learn a WordPiece vocabulary (vocab.txt) from a corpus.

The procedure is WordPiece's merge-by-likelihood, in the form HF's course describes it:

1. Split the corpus into words with ``basic_tokenize`` (the same cleaning, CJK splitting, lower-casing
   and punctuation splitting that ``BertTokenizer`` runs), and count each word.
2. Start from characters: a word "hug" is the symbols ["h", "##u", "##g"]: the first character as
   itself, every later one with the "##" continuation prefix. These are the first vocabulary entries.
3. Repeat until the vocabulary has ``vocab_size`` entries: count every adjacent pair of symbols
   (weighted by word counts) and merge the pair with the highest score

        score(a, b) = freq(ab) / (freq(a) · freq(b))

   into one new symbol ("h" + "##u" -> "hu", "##u" + "##g" -> "##ug").

Why this score and not BPE's plain freq(ab): merging a and b raises the corpus likelihood under a
unigram model by about log(p(ab) / (p(a) p(b))), and this ratio is its monotone stand-in. It prefers
pairs whose parts rarely appear apart ("##q" + "##u") over pairs that are frequent only because their
parts are ("e" + "##s"), so the vocabulary fills with real morphemes instead of common letter pairs.
Pairs seen fewer than ``min_frequency`` times are never merged, which keeps rare noise out.
Words longer than ``max_input_chars_per_word`` (100, as in BERT's tokenizer) are left out: the
tokenizer turns them into [UNK] whole, so learning their pieces would only cost time (a 1 MB "word"
would be rewritten at every merge) and fill the vocabulary with huge entries.

The vocabulary is only the list of tokens; ``BertTokenizer`` then tokenizes greedily, longest match
first, which is how BERT used the vocabularies Google trained this way.

Deterministic: ties in score go to the more frequent pair, then to the pair that sorts first.
"""
import heapq
import os
from collections import Counter

from tinybert.errors import InvalidType, InvalidValue
from tinybert.io.paths import VOCAB_NAME
from tinybert.text.tokenizer import SPECIAL_TOKENS, basic_tokenize, write_vocab

CONTINUATION = "##"


def _merge_symbols(a, b):
    """ "h" + "##u" -> "hu";  "##u" + "##g" -> "##ug". """
    return a + (b[len(CONTINUATION):] if b.startswith(CONTINUATION) else b)


def _word_to_symbols(word):
    return [word[0]] + [CONTINUATION + c for c in word[1:]]


def count_words(texts, lowercase=True):
    """texts (a str, or an iterable of str) -> Counter word -> count, after ``basic_tokenize``."""
    if isinstance(texts, str):
        texts = [texts]
    counts = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidType(f"texts must hold str, but item {i} is {type(text).__name__}")
        counts.update(basic_tokenize(text, do_lower_case=lowercase))
    return counts


def train_wordpiece(texts, vocab_size, min_frequency=2, lowercase=True, special_tokens=SPECIAL_TOKENS,
                    on_merge=None, max_input_chars_per_word=100):
    """Learn a WordPiece vocabulary. -> list of tokens; the id of a token is its index.

    Args:
        texts: a str or an iterable of str (a list, a file object, a generator).
        vocab_size: how many tokens to return at most, special tokens included.
        min_frequency: a pair must occur at least this many times (word counts included) to be merged.
        lowercase: lower-case and strip accents first (an "uncased" vocabulary); the tokenizer that
            uses the vocabulary must be made with the same ``do_lower_case``.
        special_tokens: placed first, in this order (ids 0, 1, ...). The default gives
            [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
        on_merge: optional ``callback(step, left, right, merged, score, pair_count)``, called after each
            merge (step counts from 1): a lesson can watch the vocabulary grow.
        max_input_chars_per_word: longer words are skipped (the tokenizer makes them [UNK]); use the
            tokenizer's own value.
    Returns:
        list[str]: special tokens, then the alphabet (the most frequent characters first, if it does
        not all fit), then the merged symbols in the order they were learned.
    """
    special_tokens = _checked_arguments(vocab_size, min_frequency, special_tokens, max_input_chars_per_word)
    word_counts = count_words(texts, lowercase)
    words = sorted(w for w in word_counts if len(w) <= max_input_chars_per_word)   # longer: [UNK]
    counts = [word_counts[w] for w in words]
    symbols = [_word_to_symbols(w) for w in words]   # symbols[i] is word i as a list of symbols
    vocab, symbol_freq = _alphabet(symbols, counts, special_tokens, vocab_size)
    in_vocab = set(vocab)

    # Pair statistics: how often each adjacent pair occurs, and in which words.
    pair_freq, pair_words, pairs_of_symbol = Counter(), {}, {}
    for i, (syms, n) in enumerate(zip(symbols, counts)):
        _add_word_pairs(i, syms, n, pair_freq, pair_words, pairs_of_symbol)

    # A max-heap of (score, pair) with lazy deletion: when counts change, the changed pairs are pushed
    # again with their new score, and an entry whose score is no longer the current one is skipped.
    heap = []
    for pair in pair_freq:
        _push(heap, pair, pair_freq, symbol_freq, min_frequency)

    step = 0
    while len(vocab) < vocab_size and heap:
        neg_score, neg_freq, a, b = heapq.heappop(heap)
        pair = (a, b)
        n_ab = pair_freq.get(pair, 0)
        if n_ab < min_frequency or (-neg_score, -neg_freq) != _score(pair, pair_freq, symbol_freq):
            continue  # stale entry
        merged = _merge_symbols(a, b)
        touched = _apply_merge(pair, merged, symbols, counts, pair_freq, pair_words, pairs_of_symbol, symbol_freq)
        # freq(a), freq(b) and freq(merged) changed, so every pair holding them has a new score.
        for s in (a, b, merged):
            touched.update(pairs_of_symbol.get(s, ()))
        for p in touched:
            _push(heap, p, pair_freq, symbol_freq, min_frequency)
        if merged not in in_vocab:
            vocab.append(merged)
            in_vocab.add(merged)
        step += 1
        if on_merge is not None:
            on_merge(step, a, b, merged, -neg_score, n_ab)
    return vocab


def _checked_arguments(vocab_size, min_frequency, special_tokens, max_input_chars_per_word) -> list:
    """Refuse arguments train_wordpiece cannot honour; -> the special tokens as a list."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise InvalidType(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise InvalidValue(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise InvalidValue(f"special_tokens has repeats: {special_tokens}")
    if vocab_size < len(special_tokens):
        raise InvalidValue(f"vocab_size={vocab_size} cannot hold the {len(special_tokens)} special tokens "
                           f"{special_tokens}; use vocab_size >= {len(special_tokens)}")
    if isinstance(max_input_chars_per_word, bool) or not isinstance(max_input_chars_per_word, int) \
            or max_input_chars_per_word < 1:
        raise InvalidValue(f"max_input_chars_per_word must be an int >= 1, got {max_input_chars_per_word!r}")
    return special_tokens


def _alphabet(symbols, counts, special_tokens, vocab_size):
    """The first vocabulary: the special tokens, then every symbol that starts the game, most frequent
    first (as many as fit). -> (vocab list, Counter symbol -> weighted frequency)."""
    symbol_freq = Counter()
    for syms, n in zip(symbols, counts):
        for s in syms:
            symbol_freq[s] += n
    vocab = list(special_tokens)
    in_vocab = set(vocab)
    for s in sorted(symbol_freq, key=lambda s: (-symbol_freq[s], s)):
        if len(vocab) >= vocab_size:
            break
        if s not in in_vocab:
            vocab.append(s)
            in_vocab.add(s)
    return vocab, symbol_freq


def _score(pair, pair_freq, symbol_freq):
    a, b = pair
    n_ab = pair_freq[pair]
    return n_ab / (symbol_freq[a] * symbol_freq[b]), n_ab


def _push(heap, pair, pair_freq, symbol_freq, min_frequency):
    if pair_freq.get(pair, 0) >= min_frequency:
        score, n_ab = _score(pair, pair_freq, symbol_freq)
        heapq.heappush(heap, (-score, -n_ab, pair[0], pair[1]))


def _add_word_pairs(i, syms, n, pair_freq, pair_words, pairs_of_symbol):
    for pair in zip(syms, syms[1:]):
        pair_freq[pair] += n
        pair_words.setdefault(pair, set()).add(i)
        pairs_of_symbol.setdefault(pair[0], set()).add(pair)
        pairs_of_symbol.setdefault(pair[1], set()).add(pair)


def _remove_word_pairs(i, syms, n, pair_freq, pair_words):
    for pair in zip(syms, syms[1:]):
        pair_freq[pair] -= n
        if pair_freq[pair] <= 0:
            del pair_freq[pair]
        words = pair_words.get(pair)
        if words is not None:
            words.discard(i)


def _apply_merge(pair, merged, symbols, counts, pair_freq, pair_words, pairs_of_symbol, symbol_freq):
    """Rewrite every word that holds ``pair``; update all counts. -> set of pairs whose count changed."""
    a, b = pair
    touched = set()
    for i in sorted(pair_words.get(pair, ())):
        old, n = symbols[i], counts[i]
        new = []
        j = 0
        while j < len(old):
            if j + 1 < len(old) and old[j] == a and old[j + 1] == b:
                new.append(merged)
                symbol_freq[a] -= n
                symbol_freq[b] -= n
                symbol_freq[merged] += n
                j += 2
            else:
                new.append(old[j])
                j += 1
        touched.update(zip(old, old[1:]))
        _remove_word_pairs(i, old, n, pair_freq, pair_words)
        _add_word_pairs(i, new, n, pair_freq, pair_words, pairs_of_symbol)
        touched.update(zip(new, new[1:]))
        symbols[i] = new
    pair_words.pop(pair, None)
    return touched


def save_wordpiece_vocab(tokens, path):
    """Write the tokens as vocab.txt (one a line) atomically. ``path`` is a file, or a folder to hold
    vocab.txt. -> the file's path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, VOCAB_NAME)
    return write_vocab(tokens, path)
