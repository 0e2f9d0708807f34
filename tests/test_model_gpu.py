"""The whole model on a GPU: parameters on CuPy, forward, backward and an AdamW step with the CUDA
attention kernel, equal to the same step on the CPU. Runs where a GPU is present (bench/gpu_check.sh
runs it there); elsewhere the GPU test skips with the reason, and ``model.to("cuda")`` must say what
to install."""
import numpy as np
import pytest

import tinybert
from tests.conftest import padded_batch, tiny_config
from tinybert.xp import to_numpy


def _gpu_reason():
    """None when CuPy and a CUDA GPU are usable, else why not."""
    try:
        import cupy
    except ImportError:
        return "no GPU: CuPy is not installed (pip install 'tinybert[gpu]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no GPU: CuPy sees no CUDA device"
    except Exception as e:  # no driver
        return f"no GPU: {e}"
    return None


NO_GPU = _gpu_reason()


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present, so model.to('cuda') succeeds")
def test_to_cuda_without_a_gpu_says_what_to_install():
    model = tinybert.BertModel(tiny_config())
    with pytest.raises(RuntimeError, match=r"needs CuPy and an NVIDIA GPU: pip install 'tinybert\[gpu\]'"):
        model.to("cuda")
    with pytest.raises(ValueError, match=r"device='tpu': expected 'cpu' or 'cuda'"):
        model.to("tpu")


@pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))
def test_training_step_on_gpu_equals_cpu():
    import cupy

    config = tiny_config(num_hidden_layers=2)
    ids, types, mask = padded_batch(config)
    labels = np.where(np.random.default_rng(0).random(ids.shape) < 0.5, ids, -100)
    labels[:, 0] = ids[:, 0]

    def step(model):
        opt = tinybert.AdamW(tinybert.bert_param_groups(model, 0.01), lr=1e-2)
        logits = model.forward(ids, types, mask)
        loss, dlogits = tinybert.cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)
        grads = {n: to_numpy(p.grad).copy() for n, p in model.named_parameters()}
        opt.step()
        return to_numpy(logits), loss, grads

    cpu = tinybert.BertForMaskedLM(config, seed=0, dtype=np.float64, attention_backend="numpy")
    gpu = tinybert.BertForMaskedLM(config, seed=0, dtype=np.float64, attention_backend="auto").to("cuda")
    assert isinstance(gpu.parameters()[0].data, cupy.ndarray)
    logits_c, loss_c, grads_c = step(cpu)
    logits_g, loss_g, grads_g = step(gpu)
    assert tinybert.rel_error(logits_g, logits_c) < 1e-10
    assert abs(loss_g - loss_c) < 1e-10 * abs(loss_c)
    for name in grads_c:
        assert tinybert.rel_error(grads_g[name], grads_c[name]) < 1e-9, name
    gpu.to("cpu")
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert isinstance(q.data, np.ndarray)
        assert tinybert.rel_error(q.data, p.data) < 1e-10, name


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present, so --device cuda works")
def test_cli_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    from tinybert.cli import main
    code = main(["pretrain", "--out", str(tmp_path / "run"), "--device", "cuda", "--epochs", "1",
                 "--corpus-size", "50", "--no-progress"])
    assert code == 2
    assert "needs CuPy and an NVIDIA GPU" in capsys.readouterr().err


@pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))
def test_pretrain_and_finetune_run_on_gpu(tmp_path):
    """The training loop end to end on CuPy: pretraining, checkpoint, fine-tuning, metrics, plots."""
    from tinybert.training import TrainingConfig, finetune, pretrain
    cfg = TrainingConfig(epochs=1, batch_size=16, max_length=24, device="cuda", progress=False)
    pre = pretrain(tmp_path / "pre", cfg, corpus_size=200, vocab_size=200, hidden_size=32)
    assert np.isfinite(pre["metrics"]["loss"])
    ft = finetune(tmp_path / "ft", pre["checkpoint"], TrainingConfig(epochs=1, batch_size=16, max_length=24,
                                                                     device="cuda", progress=False))
    assert 0.0 <= ft["metrics"]["accuracy"] <= 1.0
