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

Loading checks before it allocates (``load_pretrained``):

    1. config.json -> BertConfig (+ overrides)
    2. the safetensors header(s): every tensor's name, dtype and shape, each checked against the size of
       its file (``tinybert.io.safetensors``); no tensor data is read
    3. the config against the header: each tensor the class needs for this config
       (``cls.parameter_shapes(config)``) is looked up and its shape and dtype compared. A config.json
       that says a million layers or a vocabulary of 10¹⁰ beside ordinary tensors is refused here,
       naming the first tensor that disagrees, and so is one whose new tensors (the heads the
       checkpoint lacks) would outweigh the checkpoint itself
    4. the model is built with the parts the checkpoint fills left uninitialised (no random draw that
       would be overwritten); the missing heads are initialised from their own generators
    5. the tensors are read one at a time, straight into the parameters

Resuming a training run reloads its weights through the same checks (``load_weights``). Saving
(``save_pretrained``) writes through ``tinybert.io.files.write_folder_atomic``.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from tinybert.config import BertConfig, MemoryLimitExceeded
from tinybert.errors import CheckpointError, InvalidType, InvalidValue, MissingFile
from tinybert.io.files import write_folder_atomic
from tinybert.io.paths import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, checkpoint_folder
from tinybert.io.safetensors import TensorInfo, read_header, read_tensor, write_safetensors
from tinybert.xp import get_array_module, to_numpy

logger = logging.getLogger("tinybert")

# our name (regex, {i} = layer index)            HF name
HF_NAMES = [
    (r"embeddings\.norm\.",                       "embeddings.LayerNorm."),
    (r"encoder\.layers\.(\d+)\.attention\.query\.", r"encoder.layer.\1.attention.self.query."),
    (r"encoder\.layers\.(\d+)\.attention\.key\.",   r"encoder.layer.\1.attention.self.key."),
    (r"encoder\.layers\.(\d+)\.attention\.value\.", r"encoder.layer.\1.attention.self.value."),
    (r"encoder\.layers\.(\d+)\.attention\.out\.",   r"encoder.layer.\1.attention.output.dense."),
    (r"encoder\.layers\.(\d+)\.attention_norm\.",   r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"encoder\.layers\.(\d+)\.crossattention\.query\.", r"encoder.layer.\1.crossattention.self.query."),
    (r"encoder\.layers\.(\d+)\.crossattention\.key\.",   r"encoder.layer.\1.crossattention.self.key."),
    (r"encoder\.layers\.(\d+)\.crossattention\.value\.", r"encoder.layer.\1.crossattention.self.value."),
    (r"encoder\.layers\.(\d+)\.crossattention\.out\.",   r"encoder.layer.\1.crossattention.output.dense."),
    (r"encoder\.layers\.(\d+)\.crossattention_norm\.",   r"encoder.layer.\1.crossattention.output.LayerNorm."),
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


def checkpoint_part(key: str) -> str:
    """The part of a model an HF key (in our model's spelling) belongs to: ``"pooler"``, ``"head"``
    (``cls.*``, ``classifier.*``) or ``"encoder"`` (embeddings and layers). A checkpoint may lack the
    pooler or the head (they are then newly initialised), never the encoder. The names are those of
    the model's generators (``tinybert.models.ModelGenerators``)."""
    if key.startswith(("pooler.", "bert.pooler.")):
        return "pooler"
    if key.startswith(("cls.", "classifier.")):
        return "head"
    return "encoder"


def _short_list(keys, n=8):
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


# --------------------------------------------------------------------------------------------------
# reading: the config, the header, and the one against the other
# --------------------------------------------------------------------------------------------------

def read_config(folder: str, config_overrides: dict | None = None) -> BertConfig:
    """config.json (+ overrides) -> BertConfig, every error naming the file."""
    file = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(file):
        raise MissingFile(f"config file not found: {file} (an HF checkpoint folder holds "
                          f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = BertConfig.from_json_file(file)
    except MemoryLimitExceeded as e:              # a hostile size: the checkpoint's fault, not the caller's
        raise CheckpointError(f"{file}: {e}") from None
    except (InvalidValue, InvalidType) as e:
        if file in str(e):
            raise
        raise type(e)(f"{file}: {e}") from None
    return config.with_overrides(config_overrides, file)


# what a checkpoint holds, from config.json's architectures (and is_decoder)
KINDS = {"BertForMaskedLM": "masked-lm", "BertForPreTraining": "masked-lm", "BertLMHeadModel": "causal-lm",
         "BertForSequenceClassification": "classifier", "BertModel": "encoder",
         "EncoderDecoderModel": "encoder-decoder"}


def read_config_json(path) -> tuple[str, dict]:
    """-> (the checkpoint folder, its config.json as a dict); errors name the file."""
    folder = checkpoint_folder(path)
    file = os.path.join(folder, CONFIG_NAME)
    try:
        with open(file, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file} holds a JSON {type(d).__name__}, expected an object")
    return folder, d


def checkpoint_kind(path) -> str:
    """"masked-lm", "causal-lm", "classifier", "encoder" or "encoder-decoder": what the checkpoint at
    ``path`` was saved as (config.json's architectures; a BERT without them is a plain "encoder",
    or "causal-lm" with is_decoder)."""
    _, d = read_config_json(path)
    if d.get("model_type") == "encoder-decoder":
        return "encoder-decoder"
    architectures = d.get("architectures") or []
    for name in architectures:
        if name in KINDS:
            return KINDS[name]
    return "causal-lm" if d.get("is_decoder") else "encoder"


def read_checkpoint_header(folder: str) -> dict[str, TensorInfo]:
    """``{HF key: TensorInfo}`` for every tensor of the checkpoint in ``folder`` (``model.safetensors``,
    or the shards that ``model.safetensors.index.json`` lists); no tensor data is read."""
    single = os.path.join(folder, WEIGHTS_NAME)
    index = os.path.join(folder, WEIGHTS_INDEX_NAME)
    if os.path.isfile(single) or not os.path.isfile(index):
        return read_header(single)
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a valid safetensors index (a JSON object with a "
                              f"'weight_map' of key -> shard file): {e}") from None
    header = {}
    for shard in shards:
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise CheckpointError(f"{index} names the shard {shard!r}; expected a file name in {folder}")
        header.update(read_header(os.path.join(folder, shard)))
    lost = sorted(k for k in weight_map if k not in header)
    if lost:
        raise CheckpointError(f"{index} lists tensors that its shards lack: {_short_list(lost, 5)}")
    return header


@dataclass
class LoadPlan:
    """What loading will do, decided from the config and the header alone (nothing allocated yet).

    found: {our HF key: TensorInfo} to copy into the model; source: {our HF key: the key as the
    checkpoint spells it}; missing / mismatched: keys the model has and the checkpoint lacks / holds
    in another shape (these keep their fresh initialisation); unexpected: checkpoint keys the model
    has no place for; provided: the parts ("encoder", "pooler", "head") the checkpoint fills whole.
    """
    source: dict
    found: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    provided: tuple = ()

    def loading_info(self) -> dict:
        return {"missing_keys": list(self.missing), "unexpected_keys": list(self.unexpected),
                "mismatched_keys": [k for k, _, _ in self.mismatched]}


def plan_loading(expected, header: dict, folder: str, what: str, ignore_mismatched_sizes: bool = False,
                 max_missing: int = 8) -> LoadPlan:
    """Match the tensors a model needs with a checkpoint's header; -> LoadPlan.

    ``expected``: ``(our parameter name, shape)`` pairs, e.g. ``cls.parameter_shapes(config)`` (read
    lazily: the search stops at the ``max_missing``-th missing encoder tensor, so a config with a
    million layers is refused at once). ``what`` names the model in messages. Raises CheckpointError,
    naming the tensor and both shapes, when config and tensors disagree (see the module docstring).
    """
    expected = iter(expected)
    first = next(expected, None)             # its name says whether the model's keys carry "bert."
    if first is None:
        raise InvalidValue("the model has no parameters to load")
    plan = LoadPlan(source={})
    found = _match_keys(header, folder, plan, wants_prefix=first[0].startswith("bert."))
    pairs, new_shapes, body_missing = {}, {}, []        # found / to initialise afresh / encoder lacking
    for name, shape in itertools.chain([first], expected):
        key = hf_name(name)
        info = found.pop(key, None) or _tied_decoder_bias(key, header, plan)
        if info is not None:
            pairs[key] = (info, tuple(shape))
            continue
        plan.missing.append(key)
        new_shapes[key] = tuple(shape)
        if checkpoint_part(key) == "encoder":
            body_missing.append(key)
            if len(body_missing) == max_missing:
                break
    if body_missing:
        raise CheckpointError(
            f"the checkpoint at {folder} lacks the tensor {body_missing[0]!r}"
            + (f" and others ({_short_list(body_missing[1:])}{' ...' if len(body_missing) == max_missing else ''})"
               if len(body_missing) > 1 else "")
            + f"; {what} needs every encoder tensor. Is it a BERT checkpoint, and does config.json match it?")
    position = {k: i for i, k in enumerate(header)}           # check in the file's order, as it reads
    for key, (info, shape) in sorted(pairs.items(), key=lambda kv: position.get(kv[1][0].name, -1)):
        if _fits(info, shape, key, plan, folder, ignore_mismatched_sizes):
            plan.found[key] = info
        else:
            plan.mismatched.append((key, info.shape, shape))
            new_shapes[key] = shape
    _check_new_tensors(plan, new_shapes, folder)
    plan.unexpected += [plan.source[k] for k in found]
    plan.provided = tuple(part for part in ("encoder", "pooler", "head")
                          if not any(checkpoint_part(k) == part for k in new_shapes))
    return plan


def _match_keys(header: dict, folder: str, plan: LoadPlan, wants_prefix: bool) -> dict:
    """The header's keys in our model's spelling -> ``{key: TensorInfo}`` (buffers and tied copies
    left out); ``plan.source`` remembers each key's own spelling. A key present twice is an error."""
    found = {}
    for key, info in header.items():
        k = normalise_hf_key(key, wants_prefix)
        if _IGNORED_HF_KEYS.search(k):
            continue
        if k in found:
            raise CheckpointError(f"the checkpoint at {folder} holds {k!r} twice, as {plan.source[k]!r} and "
                                  f"{key!r} (with and without the 'bert.' prefix, or as gamma/beta and "
                                  "weight/bias); remove one")
        found[k], plan.source[k] = info, key
    return found


def _tied_decoder_bias(key, header, plan):
    """Some checkpoints keep the MLM bias only as its tied copy ``cls.predictions.decoder.bias``."""
    if key == "cls.predictions.bias" and "cls.predictions.decoder.bias" in header:
        plan.source[key] = "cls.predictions.decoder.bias"
        return header["cls.predictions.decoder.bias"]
    return None


def _fits(info: TensorInfo, shape: tuple, key: str, plan: LoadPlan, folder: str, ignore_mismatched_sizes) -> bool:
    """True when the checkpoint's tensor has the model's shape and a float dtype; False for a shape
    that differs under ``ignore_mismatched_sizes``; else CheckpointError naming both shapes."""
    if info.shape != shape:
        if ignore_mismatched_sizes:
            return False
        raise CheckpointError(
            f"tensor {plan.source[key]!r} in {folder} has shape {info.shape}, but the model (config.json) expects "
            f"{shape} for {key!r}"
            + ("; pass ignore_mismatched_sizes=True to re-initialise it" if checkpoint_part(key) != "encoder" else ""))
    if info.dtype == "BF16":
        read_tensor(info)                                   # raises, saying how to convert
    if info.numpy_dtype.kind != "f":
        raise CheckpointError(f"tensor {plan.source[key]!r} in {folder} has dtype {info.numpy_dtype}; "
                              "expected a float tensor (F16, F32 or F64)")
    return True


def _check_new_tensors(plan: LoadPlan, new_shapes: dict, folder: str) -> None:
    """The tensors a checkpoint lacks (``new_shapes``: {key: shape}) are initialised afresh; refuse a
    config that makes them larger than everything the checkpoint holds (a hostile num_labels would
    otherwise be allocated here). A new head (a classifier, a pooler, an MLM head on a bare encoder)
    is always far smaller than the encoder it sits on."""
    new = sum(math.prod(shape) for shape in new_shapes.values())
    own = sum(math.prod(info.shape) for info in plan.found.values())
    if new > own:
        raise CheckpointError(
            f"config.json asks for {new:,} numbers in tensors the checkpoint at {folder} lacks "
            f"({_short_list(new_shapes, 4)}), more than the {own:,} it holds: do config.json's "
            "sizes (num_labels, vocab_size ...) belong to these tensors?")


def fill_parameters(model, plan: LoadPlan, key=hf_name) -> None:
    """Read each tensor of ``plan.found`` into the model's parameter (cast to its dtype; CuPy arrays
    too), one tensor in memory at a time. ``key``: our parameter name -> the checkpoint's key."""
    params = {key(n): p for n, p in model.named_parameters()}
    for key, info in plan.found.items():
        p = params[key]
        values = read_tensor(info)
        if not np.isfinite(values).all():         # a NaN weight would make every output NaN, silently
            bad = ~np.isfinite(values)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise CheckpointError(
                f"tensor {info.name!r} in {info.file} holds {int(np.isnan(values).sum()):,} NaN and {int(np.isinf(values).sum()):,} infinite "
                f"value(s) (the first at index {first}: {values[first]}); a model with them computes NaN. "
                "Was the run that saved it diverging? Use an earlier checkpoint")
        p.data[...] = get_array_module(p.data).asarray(values)


def _log_loading_info(class_name: str, folder: str, plan: LoadPlan) -> None:
    """The missing / mismatched / unexpected keys, worded as transformers words them."""
    if plan.missing:
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s and are "
                       "newly initialized: %s\nYou should probably TRAIN this model on a down-stream task "
                       "to be able to use it for predictions and inference.", class_name, folder, plan.missing)
    if plan.mismatched:
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s and are "
                       "newly initialized because the shapes did not match: %s", class_name, folder,
                       [f"{k}: found {a}, expected {b}" for k, a, b in plan.mismatched])
    if plan.unexpected:
        logger.warning("Some weights of the model checkpoint at %s were not used when initializing %s "
                       "(ignored): %s\n- This IS expected when the checkpoint was saved from another "
                       "architecture (e.g. a BertForPreTraining checkpoint loaded as a BertModel).",
                       folder, class_name, plan.unexpected)


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------

def load_pretrained(cls, path, dtype=np.float32, seed: int = 0, attention_backend: str = "auto",
                    output_loading_info: bool = False, ignore_mismatched_sizes: bool = False,
                    log_loading_info: bool = True, **config_overrides):
    """Build ``cls`` from an HF checkpoint folder; see ``BertPreTrainedModel.from_pretrained``.

    Args:
        cls: BertModel, BertForMaskedLM or BertForSequenceClassification.
        path: a folder with ``config.json`` and ``model.safetensors``, or ``"all-MiniLM-L6-v2"``.
        dtype: np.float32 or np.float64; the checkpoint's tensors are cast to it.
        seed: initialises whatever the checkpoint lacks (a new classifier) and the dropout masks.
        output_loading_info: also return ``{"missing_keys", "unexpected_keys", "mismatched_keys"}``.
        ignore_mismatched_sizes: initialise afresh a tensor whose shape differs (e.g. a 2-label
            classifier loaded as a 3-label one) instead of raising.
        log_loading_info: log the missing and unexpected keys (False: only ``model.loading_info``;
            fine-tuning knows that its classifier is new).
        **config_overrides: BertConfig fields to change (``num_labels=3``, ``hidden_dropout_prob=0``).

    Keys the model has and the checkpoint lacks are initialised afresh when they belong to a task head
    ("missing"); a missing tensor of the encoder body is a CheckpointError naming it. Checkpoint keys
    the model has no place for are ignored ("unexpected").
    """
    folder = checkpoint_folder(path)
    config = read_config(folder, config_overrides)
    header = read_checkpoint_header(folder)                       # shapes and dtypes, no data
    what = f"a {cls.__name__} with this config.json (num_hidden_layers={config.num_hidden_layers})"
    plan = plan_loading(cls.parameter_shapes(config), header, folder, what, ignore_mismatched_sizes)
    model = cls(config, seed=seed, dtype=dtype, attention_backend=attention_backend,
                uninitialized=plan.provided)                       # no draw for what is about to be read
    fill_parameters(model, plan)
    model.loading_info = plan.loading_info()
    if log_loading_info:
        _log_loading_info(cls.__name__, folder, plan)
    return (model, model.loading_info) if output_loading_info else model


def load_weights(model, folder: str) -> None:
    """Copy every parameter of an existing ``model`` from the checkpoint in ``folder`` (resuming a
    run: every tensor must be there, in the model's shape), with the checks of ``load_pretrained``."""
    header = read_checkpoint_header(folder)
    expected = [(n, tuple(p.data.shape)) for n, p in model.named_parameters()]
    plan = plan_loading(expected, header, folder, f"this {type(model).__name__}")
    if plan.missing:
        raise CheckpointError(f"the checkpoint at {folder} lacks {plan.missing[0]!r}: was it written by another "
                              "model?")
    fill_parameters(model, plan)


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------

def _write_files(folder: str, tensors: dict, config: dict, tokenizer=None) -> None:
    """``model.safetensors``, the tokenizer's own files (``tokenizer.save_pretrained``: ours and
    transformers' write vocab.txt and tokenizer_config.json) and ``config.json``, into ``folder``."""
    write_safetensors(tensors, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_pretrained"):
            raise InvalidType(f"tokenizer must have save_pretrained(folder), got {type(tokenizer).__name__}")
        tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_checkpoint_files(model, folder: str, tokenizer=None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (and the tokenizer's files) into ``folder``, in
    HF's format: transformers loads the folder for the same class with no missing weights; float64
    models stay float64. Not atomic by itself: ``save_pretrained`` and the training checkpoints call it
    on a staging folder (``write_folder_atomic``)."""
    tensors = to_hf_state_dict(model)
    dtype = str(next(iter(tensors.values())).dtype)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = dtype
    config["dtype"] = dtype
    if getattr(model, "_tied_weights_keys", ()):            # an MLM head: its decoder is the word embeddings
        config.setdefault("tie_word_embeddings", True)
    _write_files(folder, tensors, config, tokenizer)


def _check_path(path) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidType(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")


def save_pretrained(model, path, tokenizer=None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (and ``vocab.txt`` + ``tokenizer_config.json``
    with a tokenizer) to the folder ``path``, atomically (``tinybert.io.files.write_folder_atomic``):
    a failure while writing (full disk, an exception, Ctrl-C) leaves ``path`` as it was, and files
    of ``path`` that are not rewritten (a README) stay."""
    _check_path(path)
    write_folder_atomic(path, lambda stage: write_checkpoint_files(model, stage, tokenizer), last=(CONFIG_NAME,))


# --------------------------------------------------------------------------------------------------
# HF's EncoderDecoderModel: two BERTs in one folder
# --------------------------------------------------------------------------------------------------

def encoder_decoder_key(name: str) -> str:
    """Our parameter name -> HF's EncoderDecoderModel key: ``encoder.`` / ``decoder.`` + the BERT key."""
    part, rest = name.split(".", 1)
    return f"{part}.{hf_name(rest)}"


def save_encoder_decoder(model, path, tokenizer=None) -> None:
    """Write an EncoderDecoderModel as HF does: ``config.json`` (model_type "encoder-decoder", the two
    BERT configs under "encoder" and "decoder") and ``model.safetensors``, atomically."""
    _check_path(path)
    tensors = {encoder_decoder_key(n): to_numpy(p.data) for n, p in model.named_parameters()}
    dtype = str(next(iter(tensors.values())).dtype)
    config = {"model_type": "encoder-decoder", "is_encoder_decoder": True,
              "architectures": [type(model).__name__], "encoder": model.encoder_config.to_dict(),
              "decoder": dict(model.config.to_dict(), tie_word_embeddings=True),
              "decoder_start_token_id": model.decoder_start_token_id,
              "pad_token_id": model.config.pad_token_id, "dtype": dtype, "torch_dtype": dtype}
    write_folder_atomic(path, lambda stage: _write_files(stage, tensors, config, tokenizer), last=(CONFIG_NAME,))


def load_encoder_decoder(cls, path, dtype=np.float32, seed: int = 0, attention_backend: str = "auto"):
    """Build ``cls`` (EncoderDecoderModel) from an HF EncoderDecoderModel folder, with the checks of
    ``load_pretrained`` (both BERTs whole: a missing tensor is an error), in eval mode."""
    folder, d = read_config_json(path)
    file = os.path.join(folder, CONFIG_NAME)
    if d.get("model_type") != "encoder-decoder" or not all(
            isinstance(d.get(k), dict) for k in ("encoder", "decoder")):
        raise CheckpointError(f"{file} is not an encoder-decoder config (model_type 'encoder-decoder' with "
                              "'encoder' and 'decoder' objects); load a single BERT with its own class")
    enc, dec = BertConfig.from_dict(d["encoder"]), BertConfig.from_dict(d["decoder"])
    expected = ((encoder_decoder_key(n), shape) for n, shape in cls.parameter_shapes(enc, dec))
    plan = plan_loading(expected, read_checkpoint_header(folder), folder, f"an {cls.__name__}")
    if plan.missing:
        raise CheckpointError(f"the checkpoint at {folder} lacks {plan.missing[0]!r}")
    model = cls(enc, dec, seed, dtype, attention_backend, d.get("decoder_start_token_id"),
                uninitialized=("encoder", "pooler", "head"))
    fill_parameters(model, plan, key=encoder_decoder_key)
    return model.eval()                                 # as transformers: no dropout until train()


__all__ = ["KINDS", "checkpoint_kind", "read_config_json", "HF_NAMES", "hf_name", "to_hf_state_dict", "normalise_hf_key", "checkpoint_part", "read_config",
           "read_checkpoint_header", "plan_loading", "load_pretrained", "load_weights", "save_pretrained",
           "write_checkpoint_files", "fill_parameters", "encoder_decoder_key", "save_encoder_decoder",
           "load_encoder_decoder"]
