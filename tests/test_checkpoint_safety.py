"""Hostile or broken checkpoints are refused before anything is allocated, and loading draws no random
number for a weight it is about to overwrite.

Each hostile case is timed (refused within a second) and measured with tracemalloc (NumPy reports
its array memory to it): the loader may not allocate more than the checkpoint file's own size.
"""
import json
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest

import tinybert
from tests.conftest import tiny_config
from tinybert.errors import CheckpointError
from tinybert.io.safetensors import read_header

CLASSES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")


# ------------------------------------------------------------------------------------------------
# the shapes a config implies, without building the model
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name", CLASSES)
@pytest.mark.parametrize("overrides", [{}, {"num_hidden_layers": 3, "intermediate_size": 20, "num_labels": 5},
                                       {"vocab_size": 7, "max_position_embeddings": 3, "type_vocab_size": 1}])
def test_parameter_shapes_are_the_models_own(cls_name, overrides):
    config = tiny_config(**overrides)
    cls = getattr(tinybert, cls_name)
    model = cls(config)
    assert list(cls.parameter_shapes(config)) == [(n, tuple(p.data.shape)) for n, p in model.named_parameters()]
    if cls is tinybert.BertModel:
        bare = cls(config, add_pooling_layer=False)
        assert list(cls.parameter_shapes(config, add_pooling_layer=False)) == \
            [(n, tuple(p.data.shape)) for n, p in bare.named_parameters()]


# One structure, two spellings: the loader's shape plan (``parameter_shapes``, from the config) and
# the HF name map (``checkpoint.HF_NAMES``) are written apart from the layers. This proves, for every
# model class (encoder, decoder, encoder–decoder), that the plan is the built model's parameters and
# that the map sends them onto exactly the tensors of transformers' model of the same config.
STRUCTURES = {
    "BertModel": lambda: (tinybert.BertModel, (tiny_config(),), {}),
    "BertModel-no-pooler": lambda: (tinybert.BertModel, (tiny_config(),), {"add_pooling_layer": False}),
    "BertForMaskedLM": lambda: (tinybert.BertForMaskedLM, (tiny_config(),), {}),
    "BertForSequenceClassification": lambda: (tinybert.BertForSequenceClassification,
                                              (tiny_config(num_labels=3),), {}),
    "BertModel-decoder": lambda: (tinybert.BertModel, (_decoder_config(),), {}),
    "BertLMHeadModel": lambda: (tinybert.BertLMHeadModel, (_decoder_config(),), {}),
    "EncoderDecoderModel": lambda: (tinybert.EncoderDecoderModel, (tiny_config(), _decoder_config()), {}),
}


def _decoder_config():
    return tiny_config(is_decoder=True, add_cross_attention=True)


def _hf_model(transformers, cls, configs, kwargs):
    """transformers' model of the same class and config(s), randomly initialised."""
    def hf_config(config):
        return transformers.BertConfig(**{k: v for k, v in config.to_dict().items()
                                          if k not in ("id2label", "label2id")}, num_labels=config.num_labels)
    if cls is tinybert.EncoderDecoderModel:
        return transformers.EncoderDecoderModel(encoder=transformers.BertModel(hf_config(configs[0])),
                                                decoder=transformers.BertLMHeadModel(hf_config(configs[1])))
    return getattr(transformers, cls.__name__)(hf_config(configs[0]), **kwargs)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_shape_plan_and_hf_names_are_the_structure_of_every_model_class(structure):
    from tinybert.io import checkpoint

    cls, configs, kwargs = STRUCTURES[structure]()
    model = cls(*configs, **kwargs)
    built = [(n, tuple(p.data.shape)) for n, p in model.named_parameters()]
    assert list(cls.parameter_shapes(*configs, **kwargs)) == built
    transformers = pytest.importorskip("transformers")
    theirs = _hf_model(transformers, cls, configs, kwargs)
    key = checkpoint.encoder_decoder_key if cls is tinybert.EncoderDecoderModel else checkpoint.hf_name
    ignored = checkpoint._IGNORED_HF_KEYS
    hf_shapes = {k: tuple(t.shape) for k, t in theirs.state_dict().items()
                 if not ignored.search(k.split("coder.", 1)[-1] if cls is tinybert.EncoderDecoderModel else k)}
    assert {key(n): shape for n, shape in built} == hf_shapes


# ------------------------------------------------------------------------------------------------
# hostile checkpoints
# ------------------------------------------------------------------------------------------------

def _refused_cheaply(folder, match, cls=tinybert.BertModel, bound_memory=True, **kwargs):
    """Load ``folder``; assert a CheckpointError matching ``match``, raised within a second, with at
    most the weights file's size allocated on the way (``bound_memory``)."""
    file_size = os.path.getsize(folder / "model.safetensors")
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=match):
            cls.from_pretrained(folder, **kwargs)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 1.0, f"refused after {seconds:.2f} s"
    if bound_memory:
        assert peak <= file_size, f"allocated {peak:,} bytes on the way, the file has {file_size:,}"


V, H = 4000, 16          # a file of ~300 KB: far above what reading a header costs in Python objects


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "ckpt"
    tinybert.BertModel(tiny_config(vocab_size=V), seed=1).save_pretrained(folder)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_config_of_a_million_layers_is_refused(saved, monkeypatch):
    monkeypatch.setenv("TINYBERT_MEMORY_LIMIT", "1TB")      # past the memory bound (12 GB): the header check
    _edit_config(saved, num_hidden_layers=1_000_000)
    _refused_cheaply(saved, r"lacks the tensor 'encoder\.layer\.2\..*num_hidden_layers=1000000")


def test_a_vocabulary_of_ten_billion_is_refused(saved, monkeypatch):
    """Refused by config.json alone (its parameters would not fit in memory), before the header is read."""
    monkeypatch.setenv("TINYBERT_MEMORY_LIMIT", "4GB")      # the same on every machine
    _edit_config(saved, vocab_size=10_000_000_000)
    _refused_cheaply(saved, r"config\.json: BertConfig\.vocab_size=10000000000 .*: its 170,000,005,472 parameters "
                            r"\(32-bit\) would take about 680 GB, more than the limit of 4 GB")


def test_a_hidden_size_far_from_the_tensors_is_refused(saved):
    _edit_config(saved, hidden_size=4096, num_attention_heads=4)
    _refused_cheaply(saved, r"has shape \(16,\), but the model \(config\.json\) expects \(4096,\)")


def test_new_heads_larger_than_the_checkpoint_are_refused(saved):
    """num_labels sizes a head the checkpoint lacks: refused when it would outweigh the checkpoint.
    (Not bounded by the file's size: the config's own label table, id2label, costs memory first.)"""
    _refused_cheaply(saved, r"asks for 85,000 numbers in tensors the checkpoint .* lacks \(classifier\.weight, "
                            r"classifier\.bias\), more than the 69,168 it holds",
                     cls=tinybert.BertForSequenceClassification, bound_memory=False, num_labels=5000)


def _write_safetensors(path, entries, data: bytes, header_length=None):
    """A safetensors file written by hand: ``entries`` is the header dict, ``data`` the bytes after it."""
    header = json.dumps(entries).encode()
    n = len(header) if header_length is None else header_length
    path.write_bytes(struct.pack("<Q", n) + header + data)


def _tensors_as_header(folder):
    """The checkpoint's tensors as (header dict, data bytes), to be tampered with."""
    from tinybert.io.safetensors import read_safetensors
    tensors = read_safetensors(folder / "model.safetensors")
    entries, chunks, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        entries[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    return entries, b"".join(chunks)


def test_a_tensor_of_the_wrong_shape_is_refused_before_the_model_is_built(saved):
    entries, data = _tensors_as_header(saved)
    key = "encoder.layer.1.attention.self.key.weight"          # [16, 16] stored, declared [16, 15] + 16 floats
    begin, end = entries[key]["data_offsets"]
    entries[key]["shape"] = [16, 15]
    entries[key]["data_offsets"] = [begin, end - 64]
    _write_safetensors(saved / "model.safetensors", entries, data)
    _refused_cheaply(saved, r"'encoder\.layer\.1\.attention\.self\.key\.weight'.*\(16, 15\).*expects \(16, 16\)")


@pytest.mark.parametrize("dtype,match", [("I32", r"has dtype int32; expected a float tensor"),
                                         ("BF16", r"bfloat16, which NumPy cannot hold")])
def test_a_tensor_of_the_wrong_dtype_is_refused(saved, dtype, match):
    entries, data = _tensors_as_header(saved)
    key = "encoder.layer.0.output.dense.weight"                 # [16, 32] float32
    if dtype == "BF16":                                          # half the bytes: keep the span honest
        begin, _ = entries[key]["data_offsets"]
        entries[key]["data_offsets"][1] = begin + 16 * 32 * 2
    entries[key]["dtype"] = dtype
    _write_safetensors(saved / "model.safetensors", entries, data)
    _refused_cheaply(saved, match)


def test_a_header_longer_than_the_file_is_refused(saved):
    entries, data = _tensors_as_header(saved)
    _write_safetensors(saved / "model.safetensors", entries, data, header_length=10 ** 15)
    _refused_cheaply(saved, r"promises a header of 1,000,000,000,000,000 bytes, but the file has")


def test_a_tensor_past_the_end_of_the_file_is_refused(saved):
    entries, data = _tensors_as_header(saved)
    key = "embeddings.word_embeddings.weight"
    entries[key]["shape"] = [10 ** 9, 16]                        # 64 GB promised by a file of a few KB
    begin = entries[key]["data_offsets"][0]
    entries[key]["data_offsets"][1] = begin + 10 ** 9 * 16 * 4
    _write_safetensors(saved / "model.safetensors", entries, data)
    _refused_cheaply(saved, r"'embeddings\.word_embeddings\.weight' lies at bytes .* holds only")


def test_offsets_that_disagree_with_shape_or_overlap_are_refused(saved):
    entries, data = _tensors_as_header(saved)
    good = json.loads(json.dumps(entries))
    key = "pooler.dense.bias"
    entries[key]["data_offsets"][1] += 4
    _write_safetensors(saved / "model.safetensors", entries, data + b"\0" * 4)
    _refused_cheaply(saved, r"'pooler\.dense\.bias' of shape \(16,\) and dtype F32 needs 64 bytes, but its "
                            r"data_offsets span 68")
    entries = good
    a, b = "embeddings.LayerNorm.bias", "embeddings.LayerNorm.weight"
    entries[b]["data_offsets"] = list(entries[a]["data_offsets"])
    _write_safetensors(saved / "model.safetensors", entries, data)
    _refused_cheaply(saved, r"overlap")


def test_the_header_is_read_without_the_data(saved):
    header = read_header(saved / "model.safetensors")
    info = header["embeddings.word_embeddings.weight"]
    assert (info.dtype, info.shape, info.nbytes) == ("F32", (V, H), V * H * 4)


def test_huge_num_labels_in_a_config_is_refused_before_the_label_table_is_built(saved):
    _edit_config(saved, num_labels=10 ** 12)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="num_labels=1000000000000"):
        tinybert.BertModel.from_pretrained(saved)
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------------------
# no random draw for what the checkpoint provides
# ------------------------------------------------------------------------------------------------

class CountingGenerator:
    """A NumPy Generator that counts how many normal numbers were drawn through it."""
    drawn = 0

    def __init__(self, generator):
        self._generator = generator

    def normal(self, loc=0.0, scale=1.0, size=None):
        CountingGenerator.drawn += int(np.prod(size))
        return self._generator.normal(loc, scale, size)

    def __getattr__(self, name):
        return getattr(self._generator, name)


@pytest.fixture
def counted_draws(monkeypatch):
    real = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda *a, **k: CountingGenerator(real(*a, **k)))
    CountingGenerator.drawn = 0
    return CountingGenerator


def test_loading_draws_only_what_the_checkpoint_lacks(tmp_path, counted_draws):
    config = tiny_config()
    tinybert.BertForMaskedLM(config, seed=2).save_pretrained(tmp_path)
    counted_draws.drawn = 0
    tinybert.BertForMaskedLM.from_pretrained(tmp_path)
    assert counted_draws.drawn == 0                              # everything came from the file
    classifier = tinybert.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3,
                                                                        log_loading_info=False)
    h = config.hidden_size
    assert counted_draws.drawn == h * h + 3 * h                  # the new pooler and classifier weights
    fresh = tinybert.BertForSequenceClassification(tiny_config(num_labels=3), seed=0)
    for name in ("bert.pooler.dense.weight", "classifier.weight"):    # drawn as a fresh model draws them
        np.testing.assert_array_equal(dict(classifier.named_parameters())[name].data,
                                      dict(fresh.named_parameters())[name].data)


# ------------------------------------------------------------------------------------------------
# a folder swap cut short
# ------------------------------------------------------------------------------------------------

def test_a_swap_cut_between_its_two_renames_is_finished_by_the_next_write(tmp_path):
    """write_folder_atomic renames the old folder aside, then the new one in: a crash between the two
    leaves only .<name>.previous. The next write (or a resume) puts it back first; a leftover beside a
    complete folder is the old version, and goes."""
    folder = tmp_path / "ckpt"
    old = tinybert.BertModel(tiny_config(), seed=3)
    old.save_pretrained(folder)
    os.rename(folder, tmp_path / ".ckpt.previous")                      # the crash, between the renames
    from tinybert.io.files import restore_previous
    restore_previous(folder)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    np.testing.assert_array_equal(tinybert.BertModel.from_pretrained(folder).pooler.dense.weight.data,
                                  old.pooler.dense.weight.data)
    os.mkdir(tmp_path / ".ckpt.previous")                                 # a leftover after a finished swap
    new = tinybert.BertModel(tiny_config(), seed=4)
    new.save_pretrained(folder)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    np.testing.assert_array_equal(tinybert.BertModel.from_pretrained(folder).pooler.dense.weight.data,
                                  new.pooler.dense.weight.data)


def test_every_config_field_of_a_wrong_kind_is_refused_as_tinyberts_own_error(tmp_path):
    """A config.json whose fields hold strings, lists, None, negatives or huge numbers is refused by
    BertConfig or by the loader (InvalidValue/InvalidType/CheckpointError: one line from the CLI),
    never by a TypeError from deep inside, and never by building the model it describes."""
    from tinybert.errors import TinyBertError
    folder = tmp_path / "ckpt"
    tinybert.BertForSequenceClassification(tiny_config(), seed=1).save_pretrained(folder)
    good = json.loads((folder / "config.json").read_text())
    for field in good:
        for value in ("x", [], {}, None, True, -1, 0, 1e30, 2 ** 62):
            (folder / "config.json").write_text(json.dumps({**good, field: value}))
            try:                                   # some values are fine (a problem_type of "x")
                tinybert.BertForSequenceClassification.from_pretrained(folder, log_loading_info=False)
            except TinyBertError:
                pass                               # anything else fails the test


def test_every_tokenizer_config_field_of_a_wrong_kind_is_refused_as_tinyberts_own_error(tmp_path):
    from tinybert.errors import TinyBertError
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    for field in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length"):
        for value in ("x", [], {}, None, -1, 0, 1e30, 2 ** 62, float("nan")):
            (tmp_path / "tokenizer_config.json").write_text(json.dumps({field: value}))
            try:
                tinybert.BertTokenizer.from_pretrained(tmp_path)(["hello world"], truncation=True, padding=True)
            except TinyBertError:
                pass                               # anything else fails the test
