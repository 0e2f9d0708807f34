"""What every BERT model shares: its config, dtype and generators, the attention backend, the
device, freezing the encoder, and HF checkpoint I/O (``from_pretrained`` / ``save_pretrained``).

Randomness belongs to the model. One integer ``seed`` spawns a generator for each purpose
(``ModelGenerators``): the initial weights of the encoder, of the pooler and of the task head, and the
dropout masks (``model.rng``, whose state a training checkpoint saves, so a resumed run reproduces).
Loading a checkpoint marks the parts it fills ``uninitialized``: nothing is drawn for weights that
are about to be overwritten, while a missing head is drawn exactly as in a fresh model.
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from tinybert.config import BertConfig, check_parameter_memory
from tinybert.errors import BackendUnavailable, DeviceUnavailable, InvalidType, InvalidValue
from tinybert.io import checkpoint
from tinybert.models.attention_maps import model_attentions
from tinybert.nn.attention import MultiHeadSelfAttention
from tinybert.nn.cross_attention import CrossAttention
from tinybert.nn.module import Module
from tinybert.xp import get_array_module, to_numpy

FLOAT_DTYPES = (np.float32, np.float64)
PARTS = ("encoder", "pooler", "head")       # what a checkpoint may fill, each with its own generator


class Uninitialized:
    """Stands in for a generator where a checkpoint is about to provide the weights: ``normal``
    returns an uninitialised array of the requested shape (``np.empty``), so no random number is
    drawn, and no float64 array filled, for a weight that will be overwritten."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.empty(size, dtype=self.dtype)


class ModelGenerators:
    """The generators of one model, named after what they draw, spawned once from one seed.

        encoder   initial weights of the embeddings and of every encoder layer
        dropout   every Dropout mask while training (``model.rng``)
        head      initial weights of the task head (the MLM transform and bias, or the classifier)
        pooler    initial weights of the pooler (its own generator: a fresh pooler is the same whether
                  the encoder under it was drawn or loaded)

    ``uninitialized``: the parts (of ``PARTS``) a checkpoint is about to fill; their generator is an
    ``Uninitialized``. The first three are the children 0, 1, 2 of ``SeedSequence(seed)``, as they
    have always been, so a seed gives the weights it gave before.
    """

    def __init__(self, seed: int = 0, dtype=np.float32, uninitialized=()):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise InvalidType(f"seed must be an integer, got {type(seed).__name__}")
        if seed < 0:
            raise InvalidValue(f"seed={seed}: expected an integer >= 0 (NumPy's SeedSequence takes no negative seed)")
        unknown = sorted(set(uninitialized) - set(PARTS))
        if unknown:
            raise InvalidValue(f"uninitialized={tuple(uninitialized)!r}: {unknown} are not parts of a model {PARTS}")
        encoder, dropout, head, pooler = (np.random.default_rng(s)
                                          for s in np.random.SeedSequence(int(seed)).spawn(4))
        skip = Uninitialized(dtype)
        self.encoder = skip if "encoder" in uninitialized else encoder
        self.dropout = dropout
        self.head = skip if "head" in uninitialized else head
        self.pooler = skip if "pooler" in uninitialized else pooler


def check_attention_backend(backend: str) -> None:
    """Refuse an unknown attention backend (InvalidValue) or one that cannot run here
    (BackendUnavailable, saying what to install) before any layer is built."""
    from tinybert_kernels import dispatch

    try:
        dispatch.resolve_backend(backend)
    except ValueError as e:
        raise InvalidValue(str(e)) from None
    except ImportError as e:
        raise BackendUnavailable(str(e)) from None


class BertPreTrainedModel(Module):
    """What all three models share: config, dtype, generators, attention backend, device, freezing,
    checkpoints."""

    encoder_frozen = False

    def _setup(self, config, seed, dtype, attention_backend, uninitialized=()) -> ModelGenerators:
        """Validate the common arguments; -> the model's generators. ``seed`` is an integer, or the
        ModelGenerators of the model this one is the body of (spawned once, by the outer model)."""
        if not isinstance(config, BertConfig):
            raise InvalidType(f"config must be a tinybert.BertConfig, got {type(config).__name__}")
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise InvalidValue(f"dtype={np.dtype(dtype)}: expected float32 or float64")
        check_attention_backend(attention_backend)
        check_parameter_memory(config, np.dtype(dtype).itemsize)     # float64 takes twice float32's
        self.config = config
        return seed if isinstance(seed, ModelGenerators) else ModelGenerators(seed, dtype, uninitialized)

    def set_attention_backend(self, backend: str) -> "BertPreTrainedModel":
        """Choose the attention kernel (one of ``tinybert_kernels.dispatch.BACKENDS``: "auto",
        "numpy", "numba", "cuda", "cuda_simple") for every layer."""
        check_attention_backend(backend)
        for m in self.modules():
            if isinstance(m, (MultiHeadSelfAttention, CrossAttention)):
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
            raise InvalidValue(f"device={device!r}: expected 'cpu' or 'cuda'")
        for p in self.parameters():
            p.data, p.grad = move(p.data), move(p.grad)
        return self

    @property
    def xp(self):
        return get_array_module(next(self.named_parameters())[1].data)   # the first one: no full walk

    # -- training the head alone ---------------------------------------------------------------
    def freeze_encoder(self, frozen: bool = True) -> "BertPreTrainedModel":
        """Train the task head alone: the BERT body under it (embeddings, encoder, pooler) stops
        learning and runs as a fixed feature extractor, in eval mode (no dropout) even while the model
        trains, and ``backward`` stops at the head. ``frozen=False`` undoes it."""
        body = getattr(self, "bert", None)
        if body is None:
            raise InvalidValue(f"freeze_encoder: a {type(self).__name__} has no task head to train alone; "
                               "freeze parameters with requires_grad_(False)")
        body.requires_grad_(not frozen)
        self.encoder_frozen = bool(frozen)
        return self.train(self.training)

    @contextlib.contextmanager
    def evaluating(self):
        """``with model.evaluating():`` the model in eval mode (no dropout) inside the block, and back
        in the mode it was in after it (a caller's training model stays a training model)."""
        was_training = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(was_training)

    def train(self, mode: bool = True) -> "BertPreTrainedModel":
        super().train(mode)
        if self.encoder_frozen:
            self.bert.eval()                    # a frozen encoder is a fixed feature extractor: no dropout
        return self

    # -- transformers' call: model(**inputs) -> a ModelOutput (models/outputs.py) -----------------
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                 labels=None, output_attentions=False, output_hidden_states=False, return_dict=True, **kwargs):
        """``model(**tokenizer(texts, return_tensors="np"))``, as in transformers: the keyword
        arguments (and the positional order: input_ids, attention_mask, token_type_ids) of HF's
        ``forward``, and its output object.

        This is ``forward`` (which it calls: the same computation, the same caches, so ``backward``
        may follow) dressed for transformers users: the fields come with HF's names (models/outputs.py),
        ``labels=`` adds the loss, ``output_hidden_states=True`` the L + 1 hidden states [B, T, H] and
        ``output_attentions=True`` the L attention maps [B, A, T, T] (recomputed from each layer's
        q, k and lse: see models/attention_maps.py). ``return_dict=False`` gives ``to_tuple()``.
        """
        for name, flag in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states),
                           ("return_dict", return_dict)):
            if not isinstance(flag, bool):
                raise InvalidType(f"{name} must be True or False, got {flag!r}")
        fields = self._output_fields(input_ids, attention_mask, token_type_ids, inputs_embeds, labels, **kwargs)
        body = getattr(self, "bert", self)
        if output_hidden_states:
            fields["hidden_states"] = tuple(body.encoder.hidden_states)
        if output_attentions:
            fields["attentions"] = model_attentions(body)
        out = self.output_class(**fields)
        return out if return_dict else out.to_tuple()

    def _output_fields(self, input_ids, attention_mask, token_type_ids, inputs_embeds, labels, **kwargs) -> dict:
        """Run ``forward`` and name what it returned (each model says how)."""
        raise NotImplementedError(f"{type(self).__name__} has no transformers-shaped call; use its forward(...)")

    # -- checkpoints: tinybert/io/checkpoint.py (one table maps our names to HF's) ----------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, **kwargs):
        """Load an HF checkpoint folder (or ``"all-MiniLM-L6-v2"``, or a name in the local Hugging Face
        cache); see ``io.checkpoint.load_pretrained``. Config fields may be overridden
        (``num_labels=3``). The model comes back in eval mode, as in transformers (no dropout: the
        same input gives the same output); call ``model.train()`` to train it."""
        loaded = checkpoint.load_pretrained(cls, path, dtype=dtype, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.eval()
        return loaded

    def save_pretrained(self, path, tokenizer=None):
        """Write an HF checkpoint folder; see ``io.checkpoint.save_pretrained``."""
        checkpoint.save_pretrained(self, path, tokenizer=tokenizer)


def linear_shapes(name: str, n_in: int, n_out: int):
    """The parameters of ``Linear(n_in, n_out)`` called ``name``: weight [out, in], bias [out]."""
    yield f"{name}.weight", (n_out, n_in)
    yield f"{name}.bias", (n_out,)


def norm_shapes(name: str, n: int):
    """The parameters of ``LayerNorm(n)`` called ``name``: weight [n], bias [n]."""
    yield f"{name}.weight", (n,)
    yield f"{name}.bias", (n,)
