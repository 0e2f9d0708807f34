"""Shared fixtures: a tiny BERT config and a padded batch with two segments."""
import os

# Nothing reaches the network: transformers and huggingface_hub read only the local folders we give.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import pytest

import tinybert


def tiny_config(**overrides):
    kw = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=32, max_position_embeddings=24, type_vocab_size=2,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    return tinybert.BertConfig(**kw)


@pytest.fixture
def config():
    return tiny_config()


def padded_batch(config, b=3, t=9, seed=0, pad_id=None):
    """input_ids, token_type_ids, attention_mask [b, t]: row i has i*2 padding tokens at the end.

    Padded positions hold ``pad_id`` (default: the config's pad_token_id)."""
    pad_id = config.pad_token_id if pad_id is None else pad_id
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (b, t))
    types = np.zeros((b, t), dtype=np.int64)
    types[:, t // 2:] = 1
    mask = np.ones((b, t), dtype=np.int64)
    for i in range(b):
        n_pad = min(2 * i, t - 1)
        if n_pad:
            mask[i, t - n_pad:] = 0
            ids[i, t - n_pad:] = pad_id
            types[i, t - n_pad:] = 0
    return ids, types, mask


@pytest.fixture
def batch(config):
    return padded_batch(config)
