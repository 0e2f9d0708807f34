"""Parity with HF transformers on PyTorch: same weights -> same logits, loss and every gradient.

The weights travel through our ``save_pretrained`` and transformers' ``from_pretrained``, so this
also proves the checkpoint format. float64, dropout 0, a padded batch with two segments.

In eval mode our encoder skips the padding (nn/packing.py): its output at a padding position is 0,
where transformers computes a value nobody reads. Each test runs both paths: packed, compared at
the real positions (and the padding's output checked to be exactly 0), and the padded twin
(``skip_padding=False``), compared at every position, padding included.
"""
import numpy as np
import pytest

import tinybert
from tinybert.io.checkpoint import hf_name
from tests.conftest import padded_batch, tiny_config

import torch  # noqa: E402  (test extras: a missing one must fail, not skip)
import transformers  # noqa: E402

TOL = 1e-8


def _worst_table(pairs):
    """Print and return the worst relative error of each named tensor pair (ours, theirs)."""
    worst = {}
    for name, ours, theirs in pairs:
        worst[name] = tinybert.rel_error(ours, theirs)
    width = max(len(n) for n in worst)
    for n, e in worst.items():
        print(f"  {n:<{width}}  {e:.2e}")
    print(f"  worst: {max(worst.values()):.2e}")
    return worst


def _hf_model(cls_name, folder):
    cls = getattr(transformers, cls_name)
    model, info = cls.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager",
                                      output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    return model.eval()


def _grad_pairs(ours, theirs):
    theirs_grads = {n: p.grad for n, p in theirs.named_parameters()}
    pairs = []
    for name, p in ours.named_parameters():
        key = hf_name(name)
        assert key in theirs_grads, f"{key} not in the HF model"
        pairs.append((key, p.grad, theirs_grads[key].numpy()))
    assert len(pairs) == len(theirs_grads), "parameter counts differ"
    return pairs


def _real(a, mask, skip_padding):
    """a's rows at the real tokens when the encoder skipped the padding ([B, T, ...] -> [N, ...]), else a."""
    return a[np.asarray(mask, dtype=bool)] if skip_padding else a


def _check_head_parity(tmp_path, cls_name, config, seed, ids, types, mask, labels, skip_padding=True):
    """Save ours, load it into transformers, run both on one batch; compare logits, loss, gradients."""
    ours = getattr(tinybert, cls_name)(config, seed=seed, dtype=np.float64, attention_backend="numpy")
    ours.eval()
    ours.bert.encoder.skip_padding = skip_padding
    ours.save_pretrained(tmp_path)
    theirs = _hf_model(cls_name, tmp_path)

    logits = ours.forward(ids, types, mask)
    loss, dlogits = tinybert.cross_entropy(logits, labels)
    ours.zero_grad()
    ours.backward(dlogits)

    out = theirs(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                 attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out.loss.backward()

    print(f"\n{cls_name} vs transformers (relative error)")
    token_logits = logits.ndim == 3                  # MLM: [B, T, V], one row per position
    if skip_padding and token_logits:
        assert ours.bert.encoder.packing is not None and np.all(ours.bert.encoder.hidden_states[-1][mask == 0] == 0)
    real = skip_padding and token_logits
    worst = _worst_table([("logits", _real(logits, mask, real), _real(out.logits.detach().numpy(), mask, real)),
                          ("loss", np.array(loss), out.loss.detach().numpy())]
                         + _grad_pairs(ours, theirs))
    assert max(worst.values()) <= TOL


@pytest.mark.parametrize("skip_padding", [True, False], ids=["packed", "padded"])
def test_masked_lm_parity(tmp_path, skip_padding):
    config = tiny_config()
    ids, types, mask = padded_batch(config)
    labels = np.where(np.random.default_rng(1).random(ids.shape) < 0.4, ids, -100)
    labels[mask == 0] = -100
    labels[0, 0] = ids[0, 0]  # at least one target
    _check_head_parity(tmp_path, "BertForMaskedLM", config, 1, ids, types, mask, labels, skip_padding)


@pytest.mark.parametrize("skip_padding", [True, False], ids=["packed", "padded"])
def test_sequence_classification_parity(tmp_path, skip_padding):
    config = tiny_config(num_labels=3)
    ids, types, mask = padded_batch(config, b=4)
    _check_head_parity(tmp_path, "BertForSequenceClassification", config, 2, ids, types, mask,
                       np.array([0, 2, 1, 2]), skip_padding)


@pytest.mark.parametrize("skip_padding", [True, False], ids=["packed", "padded"])
def test_bert_model_hidden_states_parity(tmp_path, skip_padding):
    config = tiny_config()
    ours = tinybert.BertModel(config, seed=3, dtype=np.float64, attention_backend="numpy").eval()
    ours.encoder.skip_padding = skip_padding
    ours.save_pretrained(tmp_path)
    theirs = _hf_model("BertModel", tmp_path)
    ids, types, mask = padded_batch(config)
    assert not mask.all()
    h, pooled = ours.forward(ids, types, mask)
    out = theirs(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                 attention_mask=torch.tensor(mask))
    assert (ours.encoder.packing is not None) == skip_padding
    if skip_padding:
        assert np.all(h[mask == 0] == 0)
    assert tinybert.rel_error(_real(h, mask, skip_padding),
                              _real(out.last_hidden_state.detach().numpy(), mask, skip_padding)) <= TOL
    assert tinybert.rel_error(pooled, out.pooler_output.detach().numpy()) <= TOL


def test_float64_checkpoint_stays_float64(tmp_path):
    config = tiny_config()
    ours = tinybert.BertForMaskedLM(config, seed=4, dtype=np.float64)
    ours.save_pretrained(tmp_path)
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path, dtype="auto")
    assert next(theirs.parameters()).dtype == torch.float64
    back = tinybert.BertForMaskedLM.from_pretrained(tmp_path, dtype=np.float64)
    for (n, p), (_, q) in zip(ours.named_parameters(), back.named_parameters()):
        assert np.array_equal(p.data, q.data), n


def _torch_params(model):
    return [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in model.parameters()]


@pytest.mark.parametrize("name", ["AdamW", "Adam", "SGD"])
def test_optimizers_match_torch(name):
    """Five steps on the same gradients give the same weights as torch.optim."""
    config = tiny_config(num_hidden_layers=1)
    model = tinybert.BertForSequenceClassification(config, seed=5, dtype=np.float64)
    params = model.parameters()
    tparams = _torch_params(model)
    kw = {"AdamW": dict(lr=1e-2, weight_decay=0.1), "Adam": dict(lr=1e-2, weight_decay=0.1),
          "SGD": dict(lr=1e-1, momentum=0.9, weight_decay=0.1)}[name]
    ours = getattr(tinybert, name)(params, **kw)
    theirs = getattr(torch.optim, name)(tparams, **kw)
    rng = np.random.default_rng(0)
    for _ in range(5):
        for p, tp in zip(params, tparams):
            g = rng.standard_normal(p.data.shape)
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    worst = max(tinybert.rel_error(p.data, tp.detach().numpy()) for p, tp in zip(params, tparams))
    print(f"\n{name}: worst relative error after 5 steps {worst:.2e}")
    assert worst <= 1e-10


def test_schedule_and_clipping_match_torch_and_hf():
    config = tiny_config(num_hidden_layers=1)
    model = tinybert.BertForSequenceClassification(config, seed=6, dtype=np.float64)
    params = model.parameters()
    rng = np.random.default_rng(0)
    for p in params:
        p.grad[...] = rng.standard_normal(p.data.shape)
    tparams = _torch_params(model)
    for p, tp in zip(params, tparams):
        tp.grad = torch.tensor(p.grad.copy())
    norm = tinybert.clip_grad_norm(params, 1.0)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 1.0)
    assert abs(norm - float(tnorm)) <= 1e-10 * norm
    for p, tp in zip(params, tparams):
        assert tinybert.rel_error(p.grad, tp.grad.numpy()) <= 1e-10

    opt = tinybert.AdamW(params, lr=1.0)
    sched = tinybert.get_linear_schedule_with_warmup(opt, 3, 10)
    topt = torch.optim.AdamW(tparams, lr=1.0)
    tsched = transformers.get_linear_schedule_with_warmup(topt, 3, 10)
    for _ in range(12):
        assert abs(opt.param_groups[0]["lr"] - topt.param_groups[0]["lr"]) <= 1e-12
        sched.step()
        topt.step()
        tsched.step()
