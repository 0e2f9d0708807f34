"""BERT and its task heads (HF transformers' class names).

    base.py       BertPreTrainedModel (config, dtype, generators, backend, device, freezing, checkpoints)
    bert.py       BertModel, MaskedLMHead, BertForMaskedLM, BertForSequenceClassification
    lm_head.py    BertLMHeadModel (the causal decoder, with cross-attention when configured)
    encoder_decoder.py  EncoderDecoderModel (bert2bert: a BertModel encoder, a BertLMHeadModel decoder)
    generation.py generate(): greedy and sampled decoding with a KV cache
    inputs.py     the checks of a model's inputs and of its backward's gradient
    nonfinite.py  where a NaN or inf first appeared (for the trainer's divergence report)
    attention_maps.py  every layer's attention weights on a sequence (plots, attention rollout)
"""
from tinybert.models.base import BertPreTrainedModel, ModelGenerators
from tinybert.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel, MaskedLMHead
from tinybert.models.lm_head import BertLMHeadModel
from tinybert.models.encoder_decoder import EncoderDecoderModel

__all__ = ["BertPreTrainedModel", "ModelGenerators", "BertModel", "MaskedLMHead", "BertForMaskedLM",
           "BertForSequenceClassification", "BertLMHeadModel", "EncoderDecoderModel"]
