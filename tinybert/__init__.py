"""tinybert: a BERT you can read, in plain NumPy.

    import tinybert
    config = tinybert.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=256)
    model = tinybert.BertForMaskedLM(config, seed=0)
    logits = model.forward(input_ids)                   # [B, T, V]   the teaching path: arrays
    loss, dlogits = tinybert.cross_entropy(logits, labels)
    model.backward(dlogits)                             # fills p.grad for every parameter

As in transformers (a ModelOutput with their field names; the same computation as forward):

    tokenizer = tinybert.AutoTokenizer.from_pretrained("all-MiniLM-L6-v2")
    model = tinybert.AutoModel.from_pretrained("all-MiniLM-L6-v2")        # in eval mode
    inputs = tokenizer(["Hello world"], padding=True, return_tensors="np")
    model(**inputs).last_hidden_state                   # [B, T, H]

    tinybert.view(model, tokenizer, "the cat sat").save("page.html")   # attention, in a browser
"""
from tinybert_kernels.dispatch import attention_backward, attention_forward
from tinybert.config import BertConfig
from tinybert.gradcheck import check_gradients, check_layer, numerical_gradient, rel_error
from tinybert.losses import cross_entropy, next_token_loss
from tinybert.models import (BertForMaskedLM, BertForSequenceClassification, BertLMHeadModel, BertModel,
                             EncoderDecoderModel)
from tinybert.optim import (SGD, Adam, AdamW, LinearWarmupDecay, bert_param_groups, clip_grad_norm,
                            get_linear_schedule_with_warmup)
from tinybert.pipelines.sentence import SentenceEncoder
from tinybert.text.tokenizer import BertTokenizer
from tinybert.text.wordpiece_trainer import train_wordpiece
from tinybert.viz import view
from tinybert.auto import (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                           AutoTokenizer)

__version__ = "0.1.0"
