"""Bad input gets a clear error naming the argument, the value and what was expected."""
import numpy as np
import pytest

import tinybert
from tests.conftest import padded_batch, tiny_config


@pytest.fixture
def model():
    return tinybert.BertForMaskedLM(tiny_config(), seed=0)


def test_token_id_out_of_range(model):
    with pytest.raises(ValueError, match=r"input_ids contains 60, outside \[0, vocab_size=60\)"):
        model.forward(np.array([[1, 60]]))
    with pytest.raises(ValueError, match=r"input_ids contains -1"):
        model.forward(np.array([[-1, 2]]))


def test_token_type_out_of_range(model):
    with pytest.raises(ValueError, match=r"token_type_ids contains 2, outside \[0, type_vocab_size=2\)"):
        model.forward(np.array([[1, 2]]), token_type_ids=np.array([[0, 2]]))


def test_sequence_too_long(model):
    with pytest.raises(ValueError, match=r"sequence length 25 exceeds max_position_embeddings=24"):
        model.forward(np.ones((1, 25), dtype=np.int64))


def test_non_integer_ids(model):
    with pytest.raises(TypeError, match=r"input_ids must be an integer array, got dtype float64"):
        model.forward(np.array([[1.0, 2.0]]))


def test_wrong_number_of_dimensions(model):
    with pytest.raises(ValueError, match=r"input_ids must have 2 dimensions \[batch, seq_len\], got shape \(3,\)"):
        model.forward(np.array([1, 2, 3]))


def test_attention_mask_shape(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\), expected input_ids' shape \(1, 3\)"):
        model.forward(np.array([[1, 2, 3]]), attention_mask=np.array([[1, 1]]))


def test_token_type_shape(model):
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(1, 2\)"):
        model.forward(np.array([[1, 2, 3]]), token_type_ids=np.array([[0, 1]]))


def test_hidden_size_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"hidden_size=10 is not divisible by num_attention_heads=4"):
        tiny_config(hidden_size=10, num_attention_heads=4)


@pytest.mark.parametrize("field,value", [("vocab_size", 0), ("num_hidden_layers", -1), ("hidden_size", 2.5)])
def test_config_fields_validated(field, value):
    with pytest.raises(ValueError, match=f"BertConfig.{field}={value!r}: expected a positive integer"):
        tiny_config(**{field: value})


def test_config_bad_activation_and_dropout():
    with pytest.raises(ValueError, match=r"hidden_act='swish'"):
        tiny_config(hidden_act="swish")
    with pytest.raises(ValueError, match=r"hidden_dropout_prob=1.5: expected a probability"):
        tiny_config(hidden_dropout_prob=1.5)


def test_labels_out_of_range_and_wrong_shape():
    logits = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"labels contains 5, outside \[0, 5\) and not ignore_index=-100"):
        tinybert.cross_entropy(logits, np.array([[0, 1, 5], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"labels has shape \(2,\); expected \(2, 3\)"):
        tinybert.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"labels must be integers"):
        tinybert.cross_entropy(logits, np.zeros((2, 3)))


def test_backward_before_forward(model):
    with pytest.raises(RuntimeError, match=r"backward\(\) was called before forward\(\)"):
        model.backward(np.zeros((1, 2, 60), dtype=np.float32))


def test_unknown_attention_backend():
    with pytest.raises(ValueError, match=r"backend='cudnn' is not one of"):
        tinybert.BertModel(tiny_config(), attention_backend="cudnn")


def test_bad_dtype_and_seed():
    with pytest.raises(ValueError, match=r"dtype=float16: expected float32 or float64"):
        tinybert.BertModel(tiny_config(), dtype=np.float16)
    with pytest.raises(TypeError, match=r"seed must be an integer, got str"):
        tinybert.BertModel(tiny_config(), seed="0")
    # a negative seed: before, NumPy's "expected non-negative integer", naming no argument
    with pytest.raises(ValueError, match=r"seed=-1: expected an integer >= 0"):
        tinybert.BertModel(tiny_config(), seed=-1)
    lm = tinybert.BertLMHeadModel(tiny_config(is_decoder=True))
    with pytest.raises(ValueError, match=r"seed=-1: expected an integer >= 0"):
        lm.generate(np.array([[5, 6]]), 2, do_sample=True, seed=-1)


def test_checkpoint_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        tinybert.BertModel.from_pretrained(missing)


def test_config_json_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        tinybert.BertModel.from_pretrained(tmp_path)


def test_truncated_safetensors(tmp_path):
    model = tinybert.BertModel(tiny_config())
    model.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        tinybert.BertModel.from_pretrained(tmp_path)


def test_wrong_shape_tensor_names_both_shapes(tmp_path):
    tinybert.BertModel(tiny_config()).save_pretrained(tmp_path)
    import json
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"intermediate\.dense\.(weight|bias)'.*has shape \(32,( 16)?\).*expects \(48,( 16)?\)"):
        tinybert.BertModel.from_pretrained(tmp_path)


def test_padded_rows_do_not_change_real_rows():
    """Padding is invisible: a sequence gives the same hidden states alone or padded in a batch."""
    config = tiny_config()
    model = tinybert.BertModel(config, seed=0, dtype=np.float64).eval()
    ids, types, mask = padded_batch(config)
    h, _ = model.forward(ids, types, mask)
    n = int(mask[2].sum())
    alone, _ = model.forward(ids[2:3, :n], types[2:3, :n])
    assert np.allclose(h[2, :n], alone[0], rtol=0, atol=1e-12)


def test_decode_rejects_floats():
    """Hidden states are vectors, not ids: decoding them is an error, not '[PAD] [PAD] ...'."""
    tok = tinybert.BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
    with pytest.raises(TypeError, match=r"decode expects integer token ids, got dtype float64"):
        tok.decode(np.array([0.3, -0.2, 1.7]))


def test_cli_refusals_are_one_line_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """The CLI catches tinybert's own errors (tinybert.errors) and OSError only: a TypeError or a
    ValueError that tinybert did not raise on purpose is a bug, and must show where it happened."""
    from tinybert import cli, errors
    from tinybert.pipelines import sentence

    def refuse(*args, **kwargs):
        raise errors.InvalidValue("refused on purpose")

    monkeypatch.setattr(sentence.SentenceEncoder, "from_pretrained", refuse)
    assert cli.main(["embed", "a text"]) == 2
    assert capsys.readouterr().err.strip() == "tinybert embed: error: refused on purpose"
    for bug in (TypeError("unsupported operand"), ValueError("operands could not be broadcast")):
        def broken(*args, bug=bug, **kwargs):
            raise bug
        monkeypatch.setattr(sentence.SentenceEncoder, "from_pretrained", broken)
        with pytest.raises(type(bug), match=str(bug)):
            cli.main(["embed", "a text"])


def test_every_error_tinybert_raises_on_purpose_is_also_a_builtin_one():
    from tinybert import errors
    assert issubclass(errors.InvalidValue, ValueError) and issubclass(errors.InvalidType, TypeError)
    assert issubclass(errors.MissingFile, FileNotFoundError)
    assert issubclass(errors.BackendUnavailable, ImportError)
    assert issubclass(errors.DeviceUnavailable, RuntimeError)
    for name in ("CheckpointError", "IncompleteCheckpoint", "ResumeMismatch", "RunFolderError", "RunFolderBusy",
                 "TrainingDiverged"):
        assert issubclass(getattr(errors, name), errors.InvalidValue), name


@pytest.mark.parametrize("eps", [-1.0, -1e-12, float("nan"), float("inf"), "1e-12", True])
def test_layernorm_refuses_an_eps_that_is_not_a_number_at_least_0(eps):
    """A negative eps takes the square root of a negative variance on a constant row; NaN poisons
    every output; inf gives 0 everywhere. All were accepted silently. (eps = 0 stays allowed, as in
    PyTorch: tests use it to see the biased variance exactly.)"""
    from tinybert.nn.layernorm import LayerNorm
    with pytest.raises(ValueError, match=r"LayerNorm eps=.*expected a finite number >= 0"):
        LayerNorm(4, eps=eps)
    with pytest.raises(ValueError, match=r"LayerNorm dim=0: expected an integer >= 1"):
        LayerNorm(0)
