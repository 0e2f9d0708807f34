"""BertLMHeadModel: BERT as a causal language model (a decoder), with HF transformers' class name.

    BertModel(is_decoder=True) -> the MLM head's transform (Linear, GELU, LayerNorm) -> tied decoder

The body is a ``BertModel`` whose layers are decoder layers (``nn/decoder.py``): causal
self-attention, and with ``config.add_cross_attention`` a cross-attention sublayer that reads an
encoder's output. The head is BERT's MLM head (HF uses the same ``cls.predictions`` weights), so the
checkpoint keys are HF's: ``bert.encoder.layer.0.crossattention.self.query.weight`` and so on.

    forward(input_ids [B,T], token_type_ids=None, attention_mask=None, encoder_hidden_states [B,S,H]=None,
            encoder_attention_mask [B,S]=None, cache=None) -> logits [B, T, V]
    backward(dlogits [B,T,V]) -> d encoder_hidden_states [B, S, H] (None without cross-attention)
    generate(input_ids, max_new_tokens, ...) -> ids [B, T + new]       (models/generation.py)

Train it with ``tinybert.next_token_loss(logits, labels)``: the logits at t predict the token at t+1.
"""
from __future__ import annotations

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import InvalidValue
from tinybert.models import generation
from tinybert.models.base import BertPreTrainedModel
from tinybert.losses import next_token_loss
from tinybert.models.bert import BertForMaskedLM, BertModel, MaskedLMHead, _cache_for
from tinybert.models.outputs import CausalLMOutput
from tinybert.models.inputs import check_gradient_shape
from tinybert.nn.kv_cache import KVCache


class BertLMHeadModel(BertPreTrainedModel):
    _tied_weights_keys = ("cls.predictions.decoder.weight",)   # as HF: the decoder is the word embeddings

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, attention_backend: str = "auto",
                 uninitialized=()):
        generators = self._setup(config, seed, dtype, attention_backend, uninitialized)
        if not config.is_decoder:
            raise InvalidValue("BertLMHeadModel needs BertConfig(is_decoder=True): a causal LM attends to "
                               "earlier positions only")
        self.bert = BertModel(config, generators, dtype, attention_backend, add_pooling_layer=False)  # as HF
        self.rng = self.bert.rng
        self.cls = MaskedLMHead(config, self.bert.embeddings.word_embeddings.weight, generators.head, dtype)

    @property
    def decoder_config(self) -> BertConfig:
        return self.config

    @staticmethod
    def parameter_shapes(config: BertConfig):
        """``(name, shape)`` of every parameter, from the config alone: BertForMaskedLM's (same body
        and head names; the decoder layers' cross-attention comes from the config)."""
        return BertForMaskedLM.parameter_shapes(config)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, cache=None):
        h, _ = self.bert.forward(input_ids, token_type_ids, attention_mask, encoder_hidden_states=encoder_hidden_states,
                         encoder_attention_mask=encoder_attention_mask, cache=cache)
        logits = self.cls(h)
        self._output_shape = tuple(logits.shape)
        return logits

    output_class = CausalLMOutput

    def _output_fields(self, input_ids, attention_mask, token_type_ids, inputs_embeds, labels,
                       encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                       use_cache=False):
        """-> logits [B, T, V]; with labels [B, T] the next-token loss (logits at t predict labels at
        t + 1, as transformers shifts them); the KVCache as past_key_values when one is used."""
        if inputs_embeds is not None:
            raise InvalidValue("inputs_embeds: a BertLMHeadModel call takes input_ids")
        cache = _cache_for(self, past_key_values, use_cache)
        logits = self.forward(input_ids, token_type_ids, attention_mask, encoder_hidden_states,
                              encoder_attention_mask, cache)
        loss = None if labels is None else next_token_loss(logits, labels)[0]
        return dict(loss=loss, logits=logits, past_key_values=cache)

    def backward(self, dlogits):
        """dlogits: [B, T, V] -> d encoder_hidden_states [B, S, H] or None; a frozen body stops at the head."""
        check_gradient_shape("dlogits", dlogits, getattr(self, "_output_shape", None), self)
        dh = self.cls.backward(dlogits)
        if not self.encoder_frozen:
            return self.bert.backward(dh)
        return None

    def generate(self, input_ids, max_new_tokens, encoder_hidden_states=None, encoder_attention_mask=None,
                 use_cache=True, do_sample=False, temperature=1.0, top_k=None, top_p=None, eos_token_id=None,
                 seed=None):
        """Continue ``input_ids`` [B, T] -> ids [B, T + new]; see ``tinybert.models.generation.generate``."""
        return generation.generate(self, input_ids, max_new_tokens, encoder_hidden_states, encoder_attention_mask,
                                   use_cache, do_sample, temperature, top_k, top_p, eos_token_id, seed)
