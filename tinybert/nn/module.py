"""Parameter and Module: the two classes every layer is built from.

A ``Parameter`` is an array with a gradient beside it. A ``Module`` finds its parameters and its
sub-modules by looking at its own attributes, so a model is just layers stored in attributes and
``named_parameters()`` gives dotted names such as ``encoder.layer.0.attention.query.weight`` — the
same names PyTorch would print for the same structure.

Every layer follows one signature::

    out = layer.forward(x, ...)   # computes, and caches in self what backward needs
    dx  = layer.backward(dout)    # returns dL/dx; ADDS dL/dp into p.grad for each parameter p

Gradients are accumulated (``+=``) rather than assigned, exactly like PyTorch's ``.grad``: a weight
used twice (BERT's tied word embedding / MLM decoder) receives the sum of both contributions, and
``zero_grad()`` clears them before the next step.
"""
from __future__ import annotations

from typing import Iterator

from tinybert.xp import get_array_module


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        data: the value, any shape, float32 or float64 (NumPy or CuPy).
        grad: dL/d(data), same shape and dtype as ``data``; zeros after ``zero_grad()``.
        requires_grad: when False the optimizers skip it and layers do not accumulate into it
            (used to freeze the encoder for head-only fine-tuning).
    """

    def __init__(self, data):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)
        self.requires_grad = True

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate(self, g):
        """Add ``g`` into ``self.grad`` (skipped for frozen parameters)."""
        if self.requires_grad:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Sub-modules and parameters are found by attribute; a ``list`` attribute of modules (the encoder's
    layers) is numbered ``name.0``, ``name.1``, ... The ``training`` flag switches dropout on and off
    through ``train()`` / ``eval()``.
    """

    training: bool = True

    # --- traversal -------------------------------------------------------------------------------
    def _children(self):
        for name, value in vars(self).items():
            if isinstance(value, (Module, Parameter)):
                yield name, value
            elif isinstance(value, list) and value and all(isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._children():
            if isinstance(child, Module):
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted_name, Parameter)``, each parameter once (a tied weight under its first name)."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, child in mod._children():
                if isinstance(child, Parameter) and id(child) not in seen:
                    seen.add(id(child))
                    yield (f"{mod_name}.{name}" if mod_name else name), child

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> list["Module"]:
        return [m for _, m in self.named_modules()]

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # --- modes and gradients ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    def requires_grad_(self, flag: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter of this module."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{dotted_name: array}`` for every parameter (tied weights appear once)."""
        return {name: p.data for name, p in self.named_parameters()}

    def astype(self, dtype) -> "Module":
        """Cast every parameter (and its gradient) to ``dtype`` in place, e.g. ``np.float64``."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        return self

    @property
    def dtype(self):
        return next(self.named_parameters())[1].data.dtype      # the first parameter's

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _require_cache(self, *names):
        """Raise a clear error when ``backward`` is called before ``forward``."""
        for n in names:
            if getattr(self, n, None) is None:
                raise RuntimeError(
                    f"{type(self).__name__}.backward() was called before forward(): "
                    "run forward first (it caches what backward needs)"
                )


__all__ = ["Parameter", "Module"]
