"""The BERT models: the bare encoder and its two task heads, with HF transformers' class names.

    BertModel                      ids -> embeddings -> encoder -> (sequence_output, pooled_output)
    BertForMaskedLM                BertModel -> transform (Linear, GELU, LayerNorm) -> tied decoder
    BertForSequenceClassification  BertModel -> pooled [CLS] -> Dropout -> Linear -> logits

Every model has ``forward(input_ids, token_type_ids=None, attention_mask=None)`` and
``backward(dout)``, plus the ``Module`` API (``parameters()``, ``named_parameters()``, ``train()``,
``eval()``, ``zero_grad()``) and HF checkpoint I/O (``from_pretrained`` / ``save_pretrained``).

Randomness: ``seed`` fixes the initial weights and the dropout masks; the dropout generator is
``model.rng`` (its state is saved with a training checkpoint, so a resumed run reproduces).
"""
from __future__ import annotations

import numbers

import numpy as np

from tinybert.config import BertConfig
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.bert_embeddings import BertEmbeddings
from tinybert.nn.dropout import Dropout
from tinybert.nn.encoder import Encoder
from tinybert.nn.gelu import activation
from tinybert.nn.layernorm import LayerNorm
from tinybert.nn.linear import Linear
from tinybert.nn.module import Module, Parameter
from tinybert.nn.pooler import Pooler
from tinybert.xp import get_array_module, to_numpy

_FLOAT_DTYPES = (np.float32, np.float64)


class DeviceUnavailable(RuntimeError):
    """``model.to("cuda")`` on a machine without CuPy or an NVIDIA GPU."""


def _check_ids(name, a, limit, limit_name, xp):
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions [batch, seq_len], got shape {tuple(a.shape)} "
                         f"(wrap a single sequence as [ids])")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= limit:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains {bad}, outside [0, {limit_name}={limit})")
    return xp.asarray(a)


def check_inputs(config: BertConfig, input_ids, token_type_ids=None, attention_mask=None, xp=np):
    """Validate BERT's three inputs and return them as arrays (token types 0 and mask 1 by default).

    input_ids, token_type_ids: [B, T] integers (B, T >= 1); attention_mask: [B, T] of 1 (attend) and
    0 (padding), as bool, int or float — HF's additive form (0 / -10000) is refused, not guessed.
    Raises ValueError/TypeError that name the argument, the value and what was expected.
    """
    input_ids = _check_ids("input_ids", input_ids, config.vocab_size, "vocab_size", xp)
    b, t = input_ids.shape
    if b == 0 or t == 0:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: expected at least one sequence "
                         "of at least one token ([batch >= 1, seq_len >= 1])")
    if t > config.max_position_embeddings:
        raise ValueError(f"sequence length {t} exceeds max_position_embeddings="
                         f"{config.max_position_embeddings}; truncate the input")
    if token_type_ids is None:
        token_type_ids = xp.zeros((b, t), dtype=np.int64)
    else:
        token_type_ids = _check_ids("token_type_ids", token_type_ids, config.type_vocab_size,
                                    "type_vocab_size", xp)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected "
                             f"input_ids' shape {tuple(input_ids.shape)}")
    keep = None
    if attention_mask is not None:
        m = attention_mask if hasattr(attention_mask, "shape") else np.asarray(attention_mask)
        if m.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(m.shape)}, expected input_ids' shape "
                             f"{tuple(input_ids.shape)}")
        if m.dtype.kind not in "biuf":
            raise TypeError(f"attention_mask must hold 0/1 (or bool), got dtype {m.dtype}")
        m = xp.asarray(m)
        if m.dtype.kind != "b":
            _check_zero_one_mask(m)
        keep = m != 0
    return input_ids, token_type_ids, keep


def _check_zero_one_mask(m):
    """attention_mask holds 1 (attend to this token) and 0 (padding), nothing else.

    HF's models turn that mask into an *additive* one internally (0 where kept, a large negative
    number where masked). Passing the additive form here would be read the wrong way round (-10000
    is not 0, so "keep"; 0 is "padding"), hence the error rather than a guess.
    """
    ok = (m == 0) | (m == 1)
    if not bool(ok.all()):
        bad = to_numpy(m[~ok]).ravel()[0].item()
        raise ValueError(
            f"attention_mask must hold 1 (attend) and 0 (padding) only, got {bad!r}. An HF-style "
            "additive mask (0 to keep, -10000 or finfo.min to mask) is the other convention: convert "
            "it with attention_mask = (additive_mask == 0)")


def _check_gradient_shape(name, grad, expected, model):
    """A backward's upstream gradient must have the shape of the forward's output: a dlogits of
    another shape would be reshaped into misaligned rows, not refused, by the array code below."""
    if expected is None:
        raise RuntimeError(f"{type(model).__name__}.backward() was called before forward(): run "
                           "forward first (it caches what backward needs)")
    shape = getattr(grad, "shape", None)
    if shape is None or tuple(shape) != tuple(expected):
        got = "no array" if shape is None else f"shape {tuple(shape)}"
        raise ValueError(f"{type(model).__name__}.backward: {name} has {got}, expected the shape of "
                         f"the last forward's output {tuple(expected)}")


# ------------------------------------------------------------------------------------------------
# where did a NaN or inf first appear? (called by the trainer when a loss or gradient goes bad)
# ------------------------------------------------------------------------------------------------

def _nonfinite(value) -> bool:
    """True when ``value`` (an array, or a tuple/list of arrays and None) holds NaN or ±inf."""
    if isinstance(value, (tuple, list)):
        return any(_nonfinite(v) for v in value)
    if getattr(value, "dtype", None) is None or value.dtype.kind not in "fc":
        return False
    return not bool(get_array_module(value).isfinite(value).all())


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters whose values hold NaN or ±inf."""
    return [n for n, p in model.named_parameters() if _nonfinite(p.data)]


def trace_nonfinite(model, run):
    """Call ``run()`` (a forward, or a forward then a backward of ``model``) with every module's
    ``forward`` and ``backward`` watched; -> where the first NaN/inf appeared, or None.

    The first watched call (in the order calls *finish*, so an inner layer before the block around
    it) whose output, or whose own parameters' gradients after a backward, holds a non-finite value
    is described as ``"the forward of encoder.layers.1.ffn.fc1 (Linear)"``. The watching wraps the
    methods on the instances for the duration of the call only; it costs a scan of every output, so
    it runs on the failure path, not on every step.
    """
    found = []

    def watch(name, module, method):
        original = getattr(module, method)

        def watched(*args, **kwargs):
            out = original(*args, **kwargs)
            if not found:
                own_grads = [p.grad for _, p in module._children() if isinstance(p, Parameter)]
                if _nonfinite(out) or (method == "backward" and _nonfinite(own_grads)):
                    label = name or "the model"
                    found.append(f"the {method} of {label} ({type(module).__name__})")
            return out

        setattr(module, method, watched)

    modules = list(model.named_modules())
    for name, module in modules:
        for method in ("forward", "backward"):
            if callable(getattr(module, method, None)):
                watch(name, module, method)
    try:
        run()
    finally:
        for _, module in modules:
            for method in ("forward", "backward"):
                module.__dict__.pop(method, None)
    return found[0] if found else None


class BertPreTrainedModel(Module):
    """What all three models share: config, dtype, seeding, attention backend, device, checkpoints."""

    def _setup(self, config, seed, dtype):
        """Validate the common arguments; return generators (encoder init, dropout, head init)."""
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a tinybert.BertConfig, got {type(config).__name__}")
        if np.dtype(dtype) not in _FLOAT_DTYPES:
            raise ValueError(f"dtype={np.dtype(dtype)}: expected float32 or float64")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        self.config = config
        return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)]

    def set_attention_backend(self, backend: str) -> "BertPreTrainedModel":
        """Choose the attention kernel ("auto", "numpy", "numba", "cuda") for every layer."""
        import tinybert_kernels

        tinybert_kernels.resolve_backend(backend)
        for m in self.modules():
            if isinstance(m, MultiHeadSelfAttention):
                m.backend = backend
        return self

    def to(self, device: str) -> "BertPreTrainedModel":
        """Move every parameter to ``"cuda"`` (CuPy arrays) or back to ``"cpu"`` (NumPy)."""
        if device == "cpu":
            move = to_numpy
        elif device in ("cuda", "gpu"):
            try:
                import cupy
                cupy.cuda.runtime.getDeviceCount()
            except Exception as e:
                raise DeviceUnavailable(
                    "model.to('cuda') needs CuPy and an NVIDIA GPU: pip install 'tinybert[gpu]' "
                    f"(cupy-cuda12x and numba-cuda). Underlying error: {e}") from None
            move = cupy.asarray
        else:
            raise ValueError(f"device={device!r}: expected 'cpu' or 'cuda'")
        for p in self.parameters():
            p.data, p.grad = move(p.data), move(p.grad)
        return self

    @property
    def xp(self):
        return get_array_module(next(self.named_parameters())[1].data)   # the first one: no full walk

    # checkpoint I/O lives in checkpoint.py (one table maps our names to HF's)
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, **kwargs):
        from tinybert.checkpoint import load_pretrained
        return load_pretrained(cls, path, dtype=dtype, **kwargs)

    def save_pretrained(self, path, tokenizer=None):
        from tinybert.checkpoint import save_pretrained
        save_pretrained(self, path, tokenizer=tokenizer)


class BertModel(BertPreTrainedModel):
    """The BERT encoder.

    forward(input_ids [B,T], token_type_ids [B,T] = 0, attention_mask [B,T] = 1)
        -> (sequence_output [B, T, H], pooled_output [B, H] or None without a pooler)
    backward(dsequence [B,T,H], dpooled [B,H] or None) -> None
    """

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32,
                 attention_backend: str = "auto", add_pooling_layer: bool = True):
        init_rng, self.rng, _ = self._setup(config, seed, dtype)   # self.rng: every Dropout's
        self.embeddings = BertEmbeddings(config, self.rng, init_rng, dtype)
        self.encoder = Encoder(config, self.rng, init_rng, dtype, attention_backend)
        self.pooler = (Pooler(config.hidden_size, init_rng, config.initializer_range, dtype)
                       if add_pooling_layer else None)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        xp = self.xp
        input_ids, token_type_ids, keep = check_inputs(self.config, input_ids, token_type_ids,
                                                       attention_mask, xp)
        h = self.encoder(self.embeddings(input_ids, token_type_ids), keep)
        pooled = self.pooler(h) if self.pooler is not None else None
        self._output_shape = tuple(h.shape)
        return h, pooled

    def backward(self, dsequence=None, dpooled=None):
        if dsequence is None and dpooled is None:
            raise ValueError("backward needs dsequence [B,T,H] and/or dpooled [B,H]")
        shape = getattr(self, "_output_shape", None)
        if dsequence is not None:
            _check_gradient_shape("dsequence", dsequence, shape, self)
        d = dsequence
        if dpooled is not None:
            if self.pooler is None:
                raise ValueError("dpooled given but this BertModel has no pooler (add_pooling_layer=False)")
            _check_gradient_shape("dpooled", dpooled, None if shape is None else (shape[0], shape[2]), self)
            dp = self.pooler.backward(dpooled)
            d = dp if d is None else d + dp
        self.embeddings.backward(self.encoder.backward(d))
        return None


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

    forward(input_ids, token_type_ids=None, attention_mask=None) -> logits [B, T, vocab_size]
    backward(dlogits [B, T, V]) -> None
    """

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, attention_backend: str = "auto"):
        _, _, head_rng = self._setup(config, seed, dtype)
        self.bert = BertModel(config, seed, dtype, attention_backend, add_pooling_layer=False)  # as HF
        self.rng = self.bert.rng
        self.cls = MaskedLMHead(config, self.bert.embeddings.word_embeddings.weight, head_rng, dtype)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        h, _ = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.cls(h)
        self._output_shape = tuple(logits.shape)
        return logits

    def backward(self, dlogits):
        _check_gradient_shape("dlogits", dlogits, getattr(self, "_output_shape", None), self)
        self.bert.backward(self.cls.backward(dlogits))


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with a classifier on the pooled [CLS] vector (fine-tuning).

        logits = Dropout(pooled) W_Cᵀ + b_C       pooled: [B, H] -> logits: [B, num_labels]

    forward(input_ids, token_type_ids=None, attention_mask=None) -> logits [B, num_labels]
    backward(dlogits [B, num_labels]) -> None
    """

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, attention_backend: str = "auto"):
        _, _, head_rng = self._setup(config, seed, dtype)
        self.bert = BertModel(config, seed, dtype, attention_backend)
        self.rng = self.bert.rng
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p, self.rng)
        self.classifier = Linear(config.hidden_size, config.num_labels, head_rng,
                                 config.initializer_range, dtype)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        self._output_shape = tuple(logits.shape)
        return logits

    def backward(self, dlogits):
        _check_gradient_shape("dlogits", dlogits, getattr(self, "_output_shape", None), self)
        self.bert.backward(None, self.dropout.backward(self.classifier.backward(dlogits)))
