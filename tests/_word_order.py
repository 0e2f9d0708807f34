"""A sequence-to-sequence example a reader sees at once: put a shuffled sentence's words back in order.

An example with its own training loop (tests/test_decoder.py runs it small), not a part of the library:
``python -m tests._word_order [steps]`` runs it full size.

    source  "dog the school sleeps in the"      (the words of a corpus sentence, shuffled)
    target  "the dog sleeps in the school"

The sentences are the embedded corpus's (``generate_corpus``), cut at their full stops, 4 to 8
words, on a word-level vocabulary. An ``EncoderDecoderModel`` (bert2bert) reads the shuffled words
(the encoder sees a bag with no order to rely on: the positions of the source are random) and
the decoder writes the sentence, trained with teacher forcing (decoder input = [BOS] + target,
labels = target + [EOS]) and evaluated by greedy generation with the KV cache.

The trivial baseline copies the shuffled source: its exact-match rate is the share of shuffles
that happened to leave the sentence as it was, its word accuracy the share of words already in
place. ``run_word_order`` returns both beside the model's.
"""
from __future__ import annotations

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import InvalidValue
from tinybert.losses import cross_entropy
from tinybert.models.encoder_decoder import EncoderDecoderModel
from tinybert.optim import AdamW, clip_grad_norm
from tinybert.training.corpus import generate_corpus

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["[PAD]", "[BOS]", "[EOS]"]


def word_order_data(n_train=3000, n_test=300, seed=0, min_words=4, max_words=8):
    """-> (vocab [words], train pairs, test pairs); a pair is (shuffled ids, ordered ids), two lists.

    Test sentences never occur among the training sentences (as a sentence, in any shuffle)."""
    sentences = []
    for text in generate_corpus(4 * (n_train + n_test), seed=seed):
        for s in text.split(" . "):
            words = s.strip(" .").split()
            if min_words <= len(words) <= max_words:
                sentences.append(tuple(words))
    unique = list(dict.fromkeys(sentences))
    rng = np.random.default_rng([seed, 2])
    rng.shuffle(unique)
    if len(unique) < n_test + 10:
        raise InvalidValue(f"the corpus gave {len(unique)} distinct sentences; need more than n_test={n_test}")
    test_set = unique[:n_test]
    held = set(test_set)
    train_set = [s for s in sentences if s not in held][:n_train]
    vocab = SPECIALS + sorted({w for s in sentences for w in s})
    index = {w: i for i, w in enumerate(vocab)}

    def pairs(sents):
        out = []
        for s in sents:
            ids = [index[w] for w in s]
            out.append(([ids[i] for i in rng.permutation(len(ids))], ids))
        return out

    return vocab, pairs(train_set), pairs(test_set)


def _pad(rows, width):
    return np.array([r + [PAD] * (width - len(r)) for r in rows], dtype=np.int64)


def make_batch(pairs):
    """pairs -> (src [B, S], src_mask, dec_in [B, T] = BOS + target, dec_mask, labels [B, T] = target + EOS / -100)."""
    width = max(len(t) for _, t in pairs) + 1
    src = _pad([s for s, _ in pairs], width - 1)
    dec_in = _pad([[BOS] + t for _, t in pairs], width)
    labels = _pad([t + [EOS] for _, t in pairs], width)
    lengths = np.array([len(t) + 1 for _, t in pairs])
    dec_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    labels[dec_mask == 0] = -100
    return src, (src != PAD).astype(np.int64), dec_in, dec_mask, labels


def word_order_model(vocab_size, hidden=64, layers=2, heads=4, max_positions=16, seed=0):
    shape = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=2 * hidden, max_position_embeddings=max_positions, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, pad_token_id=PAD)
    enc = BertConfig(**shape)
    dec = BertConfig(**shape, is_decoder=True, add_cross_attention=True)
    return EncoderDecoderModel(enc, dec, seed=seed, decoder_start_token_id=BOS)


def evaluate(model, pairs, batch_size=100):
    """Greedy decoding (KV cache) -> {"exact_match", "word_accuracy"} and the copy baseline's."""
    exact = words = total = base_exact = base_words = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        src, src_mask, *_ = make_batch(chunk)
        n = max(len(t) for _, t in chunk)
        out = model.generate(src, n + 1, attention_mask=src_mask, eos_token_id=EOS)[:, 1:]
        for (s, t), row in zip(chunk, out.tolist()):
            guess = (row + [PAD] * len(t))[:len(t)]
            hit = [g == w for g, w in zip(guess, t)]
            exact += all(hit) and (len(row) == len(t) or row[len(t)] == EOS)
            words += sum(hit)
            base_exact += s == t
            base_words += sum(a == b for a, b in zip(s, t))
            total += len(t)
    n = len(pairs)
    return {"exact_match": exact / n, "word_accuracy": words / total,
            "copy_exact_match": base_exact / n, "copy_word_accuracy": base_words / total}


def run_word_order(steps=600, batch_size=32, lr=2e-3, n_train=3000, n_test=300, seed=0, hidden=64, layers=2,
                   log=None):
    """Train the encoder-decoder on the task and score it on held-out sentences -> metrics dict
    (+ "losses": the training loss of every step)."""
    vocab, train, test = word_order_data(n_train, n_test, seed)
    model = word_order_model(len(vocab), hidden, layers, seed=seed)
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 3])
    losses = []
    for step in range(1, steps + 1):
        batch = [train[i] for i in rng.integers(0, len(train), batch_size)]
        batch = [(list(np.array(t)[rng.permutation(len(t))]), t) for _, t in batch]   # a fresh shuffle each time
        src, src_mask, dec_in, dec_mask, labels = make_batch(batch)
        logits = model.forward(src, dec_in, src_mask, dec_mask)
        loss, dlogits = cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(loss)
        if log is not None and step % max(1, steps // 10) == 0:
            log(f"step {step:>5}  loss {loss:.3f}")
    metrics = evaluate(model, test)
    metrics.update(losses=losses, vocab_size=len(vocab), n_train=len(train), n_test=len(test))
    return metrics


if __name__ == "__main__":          # python -m tests._word_order [steps]
    import sys
    m = run_word_order(steps=int(sys.argv[1]) if len(sys.argv) > 1 else 600, log=print)
    print({k: v for k, v in m.items() if k != "losses"})
