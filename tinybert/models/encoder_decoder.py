"""EncoderDecoderModel: the Transformer of the article, from two BERTs (HF's "bert2bert").

    source ids [B, S] ──BertModel (encoder)──▶ m [B, S, H]
    target ids [B, T] ──BertLMHeadModel (decoder: causal self-attention, cross-attention to m)──▶ logits [B, T, V]

    forward(input_ids [B,S], decoder_input_ids [B,T], attention_mask [B,S]=None, decoder_attention_mask [B,T]=None)
        -> logits [B, T, V]          (train with cross_entropy(logits, labels): the decoder's inputs are
                                      the labels shifted right, as transformers' shift_tokens_right)
    backward(dlogits) -> None: the decoder's backward returns dm, the gradient of the encoder's output,
        and the encoder's backward takes it from there (one gradient path through both)
    generate(input_ids, max_new_tokens, ...) encodes once, then decodes with the KV cache

The checkpoint is HF's: ``config.json`` with ``model_type: "encoder-decoder"`` and the two BERT
configs under ``encoder`` / ``decoder``, and the tensors ``encoder.<BertModel key>`` and
``decoder.<BertLMHeadModel key>`` in ``model.safetensors``; transformers' ``EncoderDecoderModel``
loads ours and the other way round. The encoder keeps its pooler, as HF's does (unused here, so it
gets no gradient).
"""
from __future__ import annotations

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import InvalidType, InvalidValue
from tinybert.io import checkpoint
from tinybert.models import generation
from tinybert.models.base import BertPreTrainedModel
from tinybert.models.bert import BertModel
from tinybert.models.lm_head import BertLMHeadModel


class EncoderDecoderModel(BertPreTrainedModel):
    def __init__(self, encoder_config: BertConfig, decoder_config: BertConfig, seed: int = 0, dtype=np.float32,
                 attention_backend: str = "auto", decoder_start_token_id: int | None = None, uninitialized=()):
        self._setup(encoder_config, 0, dtype, attention_backend)
        if not isinstance(decoder_config, BertConfig):
            raise InvalidType(f"decoder_config must be a tinybert.BertConfig, got {type(decoder_config).__name__}")
        if encoder_config.is_decoder:
            raise InvalidValue("encoder_config.is_decoder=True: the encoder attends both ways (is_decoder=False)")
        if not (decoder_config.is_decoder and decoder_config.add_cross_attention):
            raise InvalidValue("decoder_config needs is_decoder=True and add_cross_attention=True: the decoder "
                               "reads the encoder's output through cross-attention")
        if encoder_config.hidden_size != decoder_config.hidden_size:
            raise InvalidValue(f"encoder hidden_size={encoder_config.hidden_size} differs from the decoder's "
                               f"{decoder_config.hidden_size}; cross-attention reads the encoder's vectors as they are")
        enc_seed, dec_seed = (int(s) for s in np.random.SeedSequence(int(seed)).generate_state(2))
        self.encoder = BertModel(encoder_config, enc_seed, dtype, attention_backend, add_pooling_layer=True,
                                 uninitialized=uninitialized)
        self.decoder = BertLMHeadModel(decoder_config, dec_seed, dtype, attention_backend, uninitialized=uninitialized)
        self.encoder_config, self.config = encoder_config, decoder_config
        self.decoder_start_token_id = decoder_start_token_id
        self.memory = None

    @property
    def decoder_config(self) -> BertConfig:
        return self.config

    @staticmethod
    def parameter_shapes(encoder_config: BertConfig, decoder_config: BertConfig):
        """``(name, shape)`` of every parameter, from the two configs alone."""
        yield from BertModel.parameter_shapes(encoder_config, add_pooling_layer=True, prefix="encoder.")
        for name, shape in BertLMHeadModel.parameter_shapes(decoder_config):
            yield f"decoder.{name}", shape

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None,
                token_type_ids=None):
        """-> logits [B, T, V] of the decoder, reading the encoder's output of ``input_ids``."""
        self.memory, _ = self.encoder.forward(input_ids, token_type_ids, attention_mask)           # [B, S, H]
        return self.decoder.forward(decoder_input_ids, None, decoder_attention_mask, encoder_hidden_states=self.memory,
                            encoder_attention_mask=attention_mask)

    def backward(self, dlogits):
        """dlogits: [B, T, V] -> None; the decoder's dm flows into the encoder."""
        dmemory = self.decoder.backward(dlogits)
        self.encoder.backward(dmemory)

    def generate(self, input_ids, max_new_tokens, attention_mask=None, decoder_input_ids=None, use_cache=True,
                 do_sample=False, temperature=1.0, top_k=None, top_p=None, eos_token_id=None, seed=None):
        """Encode ``input_ids`` [B, S] once, then continue ``decoder_input_ids`` (default: one
        ``decoder_start_token_id`` per row) -> decoder ids [B, T + new]; see models/generation.py."""
        if decoder_input_ids is None:
            if self.decoder_start_token_id is None:
                raise InvalidValue("generate needs decoder_input_ids or the model's decoder_start_token_id "
                                   "(the token the decoder starts from, e.g. [CLS])")
            b = np.shape(input_ids)[0] if np.ndim(input_ids) == 2 else 1
            decoder_input_ids = np.full((b, 1), self.decoder_start_token_id, dtype=np.int64)
        with self.evaluating():
            memory, _ = self.encoder.forward(input_ids, None, attention_mask)
        return generation.generate(self.decoder, decoder_input_ids, max_new_tokens, memory, attention_mask,
                                   use_cache, do_sample, temperature, top_k, top_p, eos_token_id, seed)

    # -- HF's EncoderDecoderModel checkpoint (tinybert/io/checkpoint.py reads and writes it) ------
    def save_pretrained(self, path, tokenizer=None):
        """Write ``config.json`` (model_type "encoder-decoder") and ``model.safetensors``, atomically."""
        checkpoint.save_encoder_decoder(self, path, tokenizer)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, seed: int = 0, attention_backend: str = "auto"):
        """Load an HF EncoderDecoderModel folder (both BERTs whole: a missing tensor is an error), in
        eval mode."""
        return checkpoint.load_encoder_decoder(cls, path, dtype, seed, attention_backend)
