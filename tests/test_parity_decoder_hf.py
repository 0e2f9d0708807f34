"""The decoder against HF transformers on PyTorch, in float64: BertLMHeadModel with causal
self-attention and cross-attention (logits, next-token loss, every parameter gradient, the gradient
of encoder_hidden_states), its checkpoint both ways, and greedy decoding token for token.

transformers' own ``labels=`` loss casts the logits to float32 (``ForCausalLMLoss`` calls
``logits.float()``), which would cap the comparison at ~1e-7: the reference loss here is that
function's formula (labels shifted by one, mean cross-entropy over the counted positions) on the
float64 logits, and HF's float32 loss is checked against ours to float32 precision besides.
"""
import numpy as np
import torch
import transformers

import tinybert
from tests.conftest import padded_batch, tiny_config
from tests.test_parity_hf import TOL, _grad_pairs, _hf_model, _worst_table


def decoder_config(**kw):
    return tiny_config(is_decoder=True, add_cross_attention=True, **kw)


def _hf_next_token_loss(logits, labels):
    """transformers' ForCausalLMLoss without its float32 cast."""
    labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100)


def test_lm_head_model_with_cross_attention_parity(tmp_path):
    config = decoder_config()
    ours = tinybert.BertLMHeadModel(config, seed=5, dtype=np.float64, attention_backend="numpy").eval()
    ours.save_pretrained(tmp_path)
    theirs = _hf_model("BertLMHeadModel", tmp_path)
    assert theirs.config.is_decoder and theirs.config.add_cross_attention

    ids, types, mask = padded_batch(config)                    # right padding, two segments
    labels = np.where(mask == 1, ids, -100)
    rng = np.random.default_rng(2)
    memory = rng.standard_normal((ids.shape[0], 7, config.hidden_size))
    memory_mask = np.ones((ids.shape[0], 7), dtype=np.int64)
    memory_mask[1, 5:] = 0
    memory_mask[2, 3:] = 0

    logits = ours.forward(ids, types, mask, memory, memory_mask)
    loss, dlogits = tinybert.next_token_loss(logits, labels)
    ours.zero_grad()
    dmemory = ours.backward(dlogits)

    t_memory = torch.tensor(memory, requires_grad=True)
    out = theirs(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                 attention_mask=torch.tensor(mask), encoder_hidden_states=t_memory,
                 encoder_attention_mask=torch.tensor(memory_mask), labels=torch.tensor(labels), use_cache=False)
    t_loss = _hf_next_token_loss(out.logits, torch.tensor(labels))
    t_loss.backward()

    print("\nBertLMHeadModel (causal + cross-attention) vs transformers (relative error)")
    worst = _worst_table([("logits", logits, out.logits.detach().numpy()),
                          ("next-token loss", np.array(loss), t_loss.detach().numpy()),
                          ("d encoder_hidden_states", dmemory, t_memory.grad.numpy())]
                         + _grad_pairs(ours, theirs))
    assert max(worst.values()) <= TOL
    assert abs(loss - float(out.loss.detach())) <= 1e-6 * loss          # HF's own loss, computed in float32


def test_causal_lm_without_cross_attention_parity(tmp_path):
    config = tiny_config(is_decoder=True)
    ours = tinybert.BertLMHeadModel(config, seed=6, dtype=np.float64, attention_backend="numba").eval()
    ours.save_pretrained(tmp_path)
    theirs = _hf_model("BertLMHeadModel", tmp_path)
    ids, types, mask = padded_batch(config, b=2)
    labels = np.where(mask == 1, ids, -100)
    logits = ours.forward(ids, types, mask)
    loss, dlogits = tinybert.next_token_loss(logits, labels)
    ours.zero_grad()
    assert ours.backward(dlogits) is None
    out = theirs(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                 attention_mask=torch.tensor(mask), use_cache=False)
    t_loss = _hf_next_token_loss(out.logits, torch.tensor(labels))
    t_loss.backward()
    worst = _worst_table([("logits", logits, out.logits.detach().numpy()),
                          ("next-token loss", np.array(loss), t_loss.detach().numpy())]
                         + _grad_pairs(ours, theirs))
    assert max(worst.values()) <= TOL


def test_hf_checkpoint_loads_into_ours(tmp_path):
    """transformers writes, we read: the same logits (and every tensor the same)."""
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**{k: v for k, v in decoder_config().to_dict().items()
                                           if k not in ("id2label", "label2id")})
    theirs = transformers.BertLMHeadModel(hf_config).double().eval()
    theirs.save_pretrained(tmp_path)
    ours, info = tinybert.BertLMHeadModel.from_pretrained(tmp_path, dtype=np.float64, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = np.random.default_rng(0).integers(1, 60, (2, 6))
    memory = np.random.default_rng(1).standard_normal((2, 4, 16))
    logits = ours.eval().forward(ids, encoder_hidden_states=memory)
    ref = theirs(input_ids=torch.tensor(ids), encoder_hidden_states=torch.tensor(memory), use_cache=False).logits
    assert tinybert.rel_error(logits, ref.detach().numpy()) <= TOL


def _hf_greedy(model, ids, memory, n):
    """Greedy decoding in transformers by full recomputation (its generate() with cross-attention and
    a cache raises in DynamicCache in transformers 5): argmax of the last position, appended."""
    ids = torch.tensor(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, encoder_hidden_states=torch.tensor(memory), use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids.numpy()


def test_greedy_generation_is_token_identical_to_hf(tmp_path):
    config = decoder_config(initializer_range=0.2)            # not near-uniform: the argmax is decided
    ours = tinybert.BertLMHeadModel(config, seed=7, dtype=np.float64)
    ours.save_pretrained(tmp_path)
    theirs = _hf_model("BertLMHeadModel", tmp_path)
    ids = np.random.default_rng(3).integers(1, 60, (3, 4))
    memory = np.random.default_rng(4).standard_normal((3, 5, 16))
    ref = _hf_greedy(theirs, ids, memory, 16)
    for use_cache in (True, False):
        got = ours.generate(ids, 16, encoder_hidden_states=memory, use_cache=use_cache)
        assert np.array_equal(got, ref), (use_cache, got, ref)
    assert len(set(ref[:, 4:].ravel())) > 3                    # not one token repeated


def test_encoder_decoder_parity_both_ways(tmp_path):
    """bert2bert: ours saved, transformers' EncoderDecoderModel loads it; loss, logits and every gradient
    (through the decoder's cross-attention into the encoder) agree; its checkpoint loads back into ours."""
    enc = tiny_config()
    dec = decoder_config()
    ours = tinybert.EncoderDecoderModel(enc, dec, seed=8, dtype=np.float64, attention_backend="numpy").eval()
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "ours", dtype=torch.float64,
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    theirs.eval()
    src, types, src_mask = padded_batch(enc, b=3, t=7)
    tgt, _, tgt_mask = padded_batch(dec, b=3, t=5, seed=1)
    labels = np.where(tgt_mask == 1, np.random.default_rng(2).integers(1, 60, tgt.shape), -100)

    logits = ours.forward(src, tgt, src_mask, tgt_mask)
    loss, dlogits = tinybert.cross_entropy(logits, labels)
    ours.zero_grad()
    ours.backward(dlogits)
    out = theirs(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask),
                 decoder_input_ids=torch.tensor(tgt), decoder_attention_mask=torch.tensor(tgt_mask),
                 labels=torch.tensor(labels), use_cache=False)
    out.loss.backward()

    theirs_grads = dict(theirs.named_parameters())
    pairs = []
    for name, p in ours.named_parameters():
        key = tinybert.io.checkpoint.encoder_decoder_key(name)
        g = theirs_grads.pop(key).grad
        if g is None:                                       # the encoder's pooler: unused by both
            assert "pooler" in key and not np.any(p.grad), key
            continue
        pairs.append((key, p.grad, g.numpy()))
    assert not theirs_grads, sorted(theirs_grads)
    print("\nEncoderDecoderModel vs transformers (relative error)")
    worst = _worst_table([("logits", logits, out.logits.detach().numpy()),
                          ("loss", np.array(loss), out.loss.detach().numpy())] + pairs)
    assert max(worst.values()) <= TOL

    theirs.save_pretrained(tmp_path / "theirs")
    back = tinybert.EncoderDecoderModel.from_pretrained(tmp_path / "theirs", dtype=np.float64,
                                                        attention_backend="numpy")
    assert tinybert.rel_error(back.eval().forward(src, tgt, src_mask, tgt_mask), logits) <= TOL


def test_decoder_only_greedy_equals_hf_generate_with_its_cache(tmp_path):
    """Without cross-attention transformers' own generate() (with its DynamicCache) runs: our greedy
    tokens, cached and not, equal its."""
    config = tiny_config(is_decoder=True, initializer_range=0.2)
    ours = tinybert.BertLMHeadModel(config, seed=9, dtype=np.float64)
    ours.save_pretrained(tmp_path)
    theirs = _hf_model("BertLMHeadModel", tmp_path)
    ids = np.random.default_rng(5).integers(1, 60, (2, 3))
    with torch.no_grad():
        ref = theirs.generate(torch.tensor(ids), max_new_tokens=15, min_new_tokens=15, do_sample=False,
                              use_cache=True, pad_token_id=0).numpy()
    for use_cache in (True, False):
        assert np.array_equal(ours.generate(ids, 15, use_cache=use_cache), ref)
