"""The BERT models: the bare encoder and its two task heads, with HF transformers' class names.

    BertModel                      ids -> embeddings -> encoder -> (sequence_output, pooled_output)
    BertForMaskedLM                BertModel -> transform (Linear, GELU, LayerNorm) -> tied decoder
    BertForSequenceClassification  BertModel -> pooled [CLS] -> Dropout -> Linear -> logits

Every model has ``forward(input_ids, token_type_ids=None, attention_mask=None, inputs_embeds=None)``
and ``backward(dout)``, which returns dL/d(word vectors) [B, T, H] (the gradient an explanation
needs: ``tinybert.pipelines.explain``), plus the ``Module`` API (``parameters()``, ``named_parameters()``, ``train()``,
``eval()``, ``zero_grad()``), HF checkpoint I/O (``from_pretrained`` / ``save_pretrained``) and
``freeze_encoder()`` (base.py). A head model's ``backward`` is its whole gradient path: with the
encoder frozen it stops at the head, so a training loop only ever calls ``model.backward(dlogits)``.

Randomness: ``seed`` fixes the initial weights and the dropout masks (``base.ModelGenerators``); the
dropout generator is ``model.rng`` (its state is saved with a training checkpoint, so a resumed run
reproduces). ``uninitialized`` names the parts a checkpoint is about to fill (see from_pretrained).
"""
from __future__ import annotations

import numpy as np

from tinybert.config import BertConfig
from tinybert.errors import InvalidType, InvalidValue
from tinybert.losses import cross_entropy
from tinybert.models.base import BertPreTrainedModel, ModelGenerators, linear_shapes, norm_shapes
from tinybert.models.outputs import BaseModelOutputWithPooling, MaskedLMOutput, SequenceClassifierOutput
from tinybert.models.inputs import check_encoder_inputs, check_gradient_shape, check_inputs
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.dropout import Dropout
from tinybert.nn.decoder import Decoder
from tinybert.nn.encoder import Encoder
from tinybert.nn.gelu import activation
from tinybert.nn.kv_cache import KVCache
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module, Parameter
from tinybert.nn.pooler import Pooler
from tinybert.xp import get_array_module


class BertModel(BertPreTrainedModel):
    """The BERT encoder (or, with ``config.is_decoder``, the decoder stack: causal self-attention, and
    cross-attention to ``encoder_hidden_states`` when ``config.add_cross_attention``; see nn/decoder.py).

    forward(input_ids [B,T], token_type_ids [B,T] = 0, attention_mask [B,T] = 1,
            inputs_embeds [B,T,H] = None: word vectors in place of input_ids' lookup, as in HF,
            encoder_hidden_states [B,S,H] = None, encoder_attention_mask [B,S] = 1, cache = None)
        -> (sequence_output [B, T, H], pooled_output [B, H] or None without a pooler)
    backward(dsequence [B,T,H], dpooled [B,H] or None)
        -> an encoder: dL/d(word vectors) [B, T, H];
           a decoder: d encoder_hidden_states [B,S,H] (None without cross-attention), its
           dL/d(word vectors) kept in ``inputs_embeds_grad``
    """

    def __init__(self, config: BertConfig, seed: int | ModelGenerators = 0, dtype=np.float32,
                 attention_backend: str = "auto", add_pooling_layer: bool = True, uninitialized=()):
        generators = self._setup(config, seed, dtype, attention_backend, uninitialized)
        self.rng = generators.dropout                                    # every Dropout's generator
        self.embeddings = BertEmbeddings(config, self.rng, generators.encoder, dtype)
        stack = Decoder if config.is_decoder else Encoder                # HF calls both "encoder"
        self.encoder = stack(config, self.rng, generators.encoder, dtype, attention_backend)
        self.pooler = (Pooler(config.hidden_size, generators.pooler, config.initializer_range, dtype)
                       if add_pooling_layer else None)

    @staticmethod
    def parameter_shapes(config: BertConfig, add_pooling_layer: bool = True, prefix: str = ""):
        """``(name, shape)`` of every parameter a BertModel with this config has, in the order of
        ``named_parameters()``, from the config alone (nothing built, nothing allocated; lazily, so a
        hostile num_hidden_layers costs nothing): what the checkpoint loader compares with a file's
        header before it builds the model. Written out, not derived from the layers, because deriving
        it means building the model; tests/test_checkpoint_safety.py proves it equals the model's."""
        h, i = config.hidden_size, config.intermediate_size
        yield f"{prefix}embeddings.word_embeddings.weight", (config.vocab_size, h)
        yield f"{prefix}embeddings.position_embeddings.weight", (config.max_position_embeddings, h)
        yield f"{prefix}embeddings.token_type_embeddings.weight", (config.type_vocab_size, h)
        yield from norm_shapes(f"{prefix}embeddings.norm", h)
        for layer in range(config.num_hidden_layers):
            p = f"{prefix}encoder.layers.{layer}."
            for name in ("query", "key", "value", "out"):
                yield from linear_shapes(f"{p}attention.{name}", h, h)
            yield from norm_shapes(f"{p}attention_norm", h)
            if config.add_cross_attention:
                for name in ("query", "key", "value", "out"):
                    yield from linear_shapes(f"{p}crossattention.{name}", h, h)
                yield from norm_shapes(f"{p}crossattention_norm", h)
            yield from linear_shapes(f"{p}ffn.fc1", h, i)
            yield from linear_shapes(f"{p}ffn.fc2", i, h)
            yield from norm_shapes(f"{p}ffn_norm", h)
        if add_pooling_layer:
            yield from linear_shapes(f"{prefix}pooler.dense", h, h)

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, inputs_embeds=None,
                encoder_hidden_states=None, encoder_attention_mask=None, cache=None):
        xp = self.xp
        dtype = self.embeddings.word_embeddings.weight.data.dtype
        ids_or_vectors, token_type_ids, keep = check_inputs(self.config, input_ids, token_type_ids,
                                                            attention_mask, xp, inputs_embeds, dtype)
        ids, vectors = (ids_or_vectors, None) if inputs_embeds is None else (None, ids_or_vectors)
        b, t = token_type_ids.shape
        memory, memory_keep = check_encoder_inputs(self.config, encoder_hidden_states,
                                                   encoder_attention_mask, b, xp)
        if not self.config.is_decoder:
            if cache is not None:
                raise InvalidValue("cache (a KVCache) is for a decoder (BertConfig(is_decoder=True)); an "
                                   "encoder attends both ways and recomputes every position")
            h = self.encoder(self.embeddings(ids, token_type_ids, inputs_embeds=vectors), keep)
        else:
            past = 0 if cache is None else cache.length
            if cache is not None and (attention_mask is not None or past + t > self.config.max_position_embeddings):
                raise InvalidValue(f"with a KV cache: attention_mask is not supported and the {past} cached + "
                                   f"{t} new positions must fit max_position_embeddings="
                                   f"{self.config.max_position_embeddings}")
            x = self.embeddings(ids, token_type_ids, inputs_embeds=vectors, past_length=past)
            h = self.encoder(x, keep, memory, memory_keep, cache)
            if cache is not None:
                cache.length += t
        pooled = self.pooler(h) if self.pooler is not None else None
        self._output_shape = tuple(h.shape)
        return h, pooled

    output_class = BaseModelOutputWithPooling

    def _output_fields(self, input_ids, attention_mask, token_type_ids, inputs_embeds, labels,
                       encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                       use_cache=False):
        """-> last_hidden_state, pooler_output; a decoder's cache as past_key_values (``use_cache=True``
        starts one, ``past_key_values=`` continues one)."""
        if labels is not None:
            raise InvalidValue("labels: a BertModel has no head to score them; use BertForMaskedLM, "
                               "BertForSequenceClassification or BertLMHeadModel")
        cache = _cache_for(self, past_key_values, use_cache)
        h, pooled = self.forward(input_ids, token_type_ids, attention_mask, inputs_embeds,
                                 encoder_hidden_states, encoder_attention_mask, cache)
        return dict(last_hidden_state=h, pooler_output=pooled, past_key_values=cache)

    def backward(self, dsequence=None, dpooled=None):
        if dsequence is None and dpooled is None:
            raise InvalidValue("backward needs dsequence [B,T,H] and/or dpooled [B,H]")
        shape = getattr(self, "_output_shape", None)
        if dsequence is not None:
            check_gradient_shape("dsequence", dsequence, shape, self)
        d = dsequence
        if dpooled is not None:
            if self.pooler is None:
                raise InvalidValue("dpooled given but this BertModel has no pooler (add_pooling_layer=False)")
            check_gradient_shape("dpooled", dpooled, None if shape is None else (shape[0], shape[2]), self)
            dp = self.pooler.backward(dpooled)
            d = dp if d is None else d + dp
        if not self.config.is_decoder:
            return self.embeddings.backward(self.encoder.backward(d))     # dL/d(word vectors)
        d, dmemory = self.encoder.backward(d)
        self.inputs_embeds_grad = self.embeddings.backward(d)
        return dmemory


class MaskedLMHead(Module):
    """BERT's MLM head: a transform, then the decoder tied to the word embeddings.

        u = LayerNorm(GELU(h W_Tᵀ + b_T))          h: [B, T, H] -> u: [B, T, H]
        logits = u W_Eᵀ + b                        W_E: [V, H] the word embeddings -> [B, T, V]

    The decoder reuses W_E (weight tying), so W_E's gradient is the sum of the embedding lookup's and
    the decoder's: dW_E += dlogitsᵀ u here, and the lookup adds its own part later.

    Backward touches only the rows of dlogits that are not all zero. In MLM the loss counts ~15% of
    positions, the others have dlogits = 0 exactly and add nothing to dW_E, db or du, so skipping
    them gives the same numbers with ~1/7 of the decoder's backward work (its two V×H products
    are most of a BERT-mini's training step).
    """

    def __init__(self, config, word_embeddings: Parameter, init_rng, dtype=np.float32):
        self.dense = Linear(config.hidden_size, config.hidden_size, init_rng, config.initializer_range, dtype)
        self.act = activation(config.hidden_act)
        self.norm = LayerNorm(config.hidden_size, config.layer_norm_eps, dtype)
        self.decoder_weight = word_embeddings               # tied: the same Parameter object
        self.bias = Parameter(np.zeros(config.vocab_size, dtype=dtype))
        self.u = None

    def forward(self, h):
        self.u = self.norm(self.act(self.dense(h)))
        v, hdim = self.decoder_weight.data.shape
        logits = self.u.reshape(-1, hdim) @ self.decoder_weight.data.T      # one [N,H]x[H,V] product
        logits += self.bias.data
        return logits.reshape(*h.shape[:-1], v)

    def backward(self, dlogits):
        self._require_cache("u")
        xp = get_array_module(dlogits)
        v, hdim = self.decoder_weight.data.shape
        d2 = dlogits.reshape(-1, v)                              # [N, V]
        u2 = self.u.reshape(-1, hdim)                            # [N, H]
        rows = xp.nonzero(d2.any(axis=1))[0]                     # positions that carry a gradient
        d_rows = d2[rows]
        self.decoder_weight.accumulate(xp.matmul(d_rows.T, u2[rows]))   # dW_E += dlogitsᵀ u
        self.bias.accumulate(d_rows.sum(axis=0))                        # db += Σ dlogits
        du = xp.zeros_like(u2)
        du[rows] = d_rows @ self.decoder_weight.data                    # du = dlogits W_E
        du = du.reshape(self.u.shape)
        return self.dense.backward(self.act.backward(self.norm.backward(du)))


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with the masked-language-model head (pretraining).

    forward(input_ids, token_type_ids=None, attention_mask=None, inputs_embeds=None) -> logits [B, T, vocab_size]
    backward(dlogits [B, T, V]) -> dL/d(word vectors) [B, T, H] (None with a frozen encoder)
    """

    _tied_weights_keys = ("cls.predictions.decoder.weight",)   # as HF: the decoder is the word embeddings

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, attention_backend: str = "auto",
                 uninitialized=()):
        generators = self._setup(config, seed, dtype, attention_backend, uninitialized)
        self.bert = BertModel(config, generators, dtype, attention_backend, add_pooling_layer=False)  # as HF
        self.rng = self.bert.rng
        self.cls = MaskedLMHead(config, self.bert.embeddings.word_embeddings.weight, generators.head, dtype)

    @staticmethod
    def parameter_shapes(config: BertConfig):
        """``(name, shape)`` of every parameter, from the config alone (see BertModel's)."""
        h = config.hidden_size
        yield from BertModel.parameter_shapes(config, add_pooling_layer=False, prefix="bert.")
        yield "cls.bias", (config.vocab_size,)              # the decoder weight is the word embeddings
        yield from linear_shapes("cls.dense", h, h)
        yield from norm_shapes("cls.norm", h)

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, inputs_embeds=None):
        h, _ = self.bert.forward(input_ids, token_type_ids, attention_mask, inputs_embeds)
        logits = self.cls(h)
        self._output_shape = tuple(logits.shape)
        return logits

    output_class = MaskedLMOutput

    def _output_fields(self, input_ids, attention_mask, token_type_ids, inputs_embeds, labels):
        """-> logits [B, T, V]; with labels [B, T] (-100 where not scored) the mean cross-entropy."""
        logits = self.forward(input_ids, token_type_ids, attention_mask, inputs_embeds)
        loss = None if labels is None else cross_entropy(logits, labels)[0]
        return dict(loss=loss, logits=logits)

    def backward(self, dlogits):
        """dlogits: [B, T, V] -> dL/d(word vectors) [B, T, H]; with a frozen encoder
        (``freeze_encoder``) it stops at the head and returns None."""
        check_gradient_shape("dlogits", dlogits, getattr(self, "_output_shape", None), self)
        dh = self.cls.backward(dlogits)
        return None if self.encoder_frozen else self.bert.backward(dh)


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with a classifier on the pooled [CLS] vector (fine-tuning).

        logits = Dropout(pooled) W_Cᵀ + b_C       pooled: [B, H] -> logits: [B, num_labels]

    forward(input_ids, token_type_ids=None, attention_mask=None, inputs_embeds=None) -> logits [B, num_labels]
    backward(dlogits [B, num_labels]) -> dL/d(word vectors) [B, T, H] (None with a frozen encoder)
    """

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, attention_backend: str = "auto",
                 uninitialized=()):
        generators = self._setup(config, seed, dtype, attention_backend, uninitialized)
        self.bert = BertModel(config, generators, dtype, attention_backend)
        self.rng = self.bert.rng
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p, self.rng)
        self.classifier = Linear(config.hidden_size, config.num_labels, generators.head,
                                 config.initializer_range, dtype)

    @staticmethod
    def parameter_shapes(config: BertConfig):
        """``(name, shape)`` of every parameter, from the config alone (see BertModel's)."""
        yield from BertModel.parameter_shapes(config, prefix="bert.")
        yield from linear_shapes("classifier", config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, inputs_embeds=None):
        _, pooled = self.bert.forward(input_ids, token_type_ids, attention_mask, inputs_embeds)
        logits = self.classifier(self.dropout(pooled))
        self._output_shape = tuple(logits.shape)
        return logits

    output_class = SequenceClassifierOutput

    def _output_fields(self, input_ids, attention_mask, token_type_ids, inputs_embeds, labels):
        """-> logits [B, num_labels]; with labels [B] the loss as transformers computes it: the mean
        cross-entropy (num_labels > 1, integer class ids), or the mean squared error (num_labels = 1,
        regression)."""
        logits = self.forward(input_ids, token_type_ids, attention_mask, inputs_embeds)
        return dict(loss=None if labels is None else classification_loss(logits, labels), logits=logits)

    def backward(self, dlogits):
        """dlogits: [B, K] -> dL/d(word vectors) [B, T, H]; with a frozen encoder (``freeze_encoder``)
        it stops at the classifier and returns None."""
        check_gradient_shape("dlogits", dlogits, getattr(self, "_output_shape", None), self)
        dpooled = self.dropout.backward(self.classifier.backward(dlogits))
        return None if self.encoder_frozen else self.bert.backward(None, dpooled)


def classification_loss(logits, labels) -> float:
    """transformers' sequence-classification loss: logits [B, K], labels [B] -> a float. K = 1 is
    regression (mean squared error, float labels), K > 1 single-label classification (cross-entropy)."""
    xp = get_array_module(logits)
    labels = xp.asarray(labels)
    if labels.shape != logits.shape[:1]:
        raise InvalidValue(f"labels has shape {tuple(labels.shape)}; expected [batch] = {tuple(logits.shape[:1])}")
    if logits.shape[1] == 1:
        return float(((logits[:, 0] - labels.astype(logits.dtype)) ** 2).mean())
    return cross_entropy(logits, labels)[0]


def _cache_for(model, past_key_values, use_cache):
    """The KVCache a decoder's call continues (``past_key_values``) or starts (``use_cache=True``)."""
    if past_key_values is None and not use_cache:
        return None
    if not model.config.is_decoder:
        raise InvalidValue("past_key_values / use_cache are for a decoder (BertConfig(is_decoder=True))")
    if past_key_values is None:
        return KVCache(model.config.num_hidden_layers)
    if not isinstance(past_key_values, KVCache):
        raise InvalidType(f"past_key_values must be the KVCache a previous call returned, got "
                          f"{type(past_key_values).__name__}")
    return past_key_values
