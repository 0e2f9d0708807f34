"""BERT and its task heads (HF transformers' class names)."""
from tinybert.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel

__all__ = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"]
