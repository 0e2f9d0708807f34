"""Numerical gradient checking — the proof that a hand-written backward is right.

For a function y = f(x) and a *random* upstream gradient G (so every output element matters), the
scalar L = Σ G ∘ f(x) has dL/dx = backward(G). Central differences estimate the same thing:

    2-point:  dL/dx_i ≈ (L(x + h e_i) − L(x − h e_i)) / 2h                        error O(h²)
    5-point:  dL/dx_i ≈ (−L(x+2h e_i) + 8L(x+h e_i) − 8L(x−h e_i) + L(x−2h e_i)) / 12h   error O(h⁴)

We use the 5-point stencil with h = 1e-3 by default. The 2-point one with h = 1e-5 has a floor set by
rounding, about ε·|L|/h ≈ 1e-11 in float64, which is a large *relative* error wherever a gradient is
tiny (GELU' at x = −4.6 is 8e-5); the 5-point one lets h be larger, so both its errors stay ~1e-13.

The analytic and the numerical gradient are compared by relative error, as in CS231n:

    rel_error = max_i |a_i − n_i| / max(|a_i| + |n_i|, 1e-8)

Roughly: < 1e-7 is right; 1e-5 … 1e-2 means a bug (or a kink such as ReLU at 0); > 1e-2 is wrong.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from tinybert.errors import InvalidType, InvalidValue
from tinybert.nn.module import Module


def rel_error(a, b) -> float:
    """max |a − b| / max(|a| + |b|, 1e-8) over all elements."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InvalidValue(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))


def numerical_gradient(loss_fn: Callable[[], float], x: np.ndarray, h: float = 1e-3,
                       indices=None, order: int = 4) -> np.ndarray:
    """d loss_fn() / dx by central differences, perturbing ``x`` in place (restored after).

    Args:
        loss_fn: recomputes the scalar loss from the current value of ``x`` (no arguments).
        x: float64 array (a parameter's data or an input), perturbed one element at a time.
        h: the step. indices: flat indices to check (default: all; unchecked entries stay 0).
        order: 2 (the classic two-point formula) or 4 (the five-point stencil).
    Returns:
        grad: same shape as x.
    """
    if x.dtype != np.float64:
        raise InvalidType(f"gradient checks need float64 arrays, got {x.dtype}")
    if order not in (2, 4):
        raise InvalidValue(f"order={order}: expected 2 or 4")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise InvalidValue("x must be contiguous so that it can be perturbed in place")

    def loss_at(i, old, step):
        flat[i] = old + step
        return loss_fn()

    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        if order == 2:
            gflat[i] = (loss_at(i, old, h) - loss_at(i, old, -h)) / (2 * h)
        else:
            # differences first: where L does not depend on x_i they are exactly 0
            near = loss_at(i, old, h) - loss_at(i, old, -h)
            far = loss_at(i, old, 2 * h) - loss_at(i, old, -2 * h)
            gflat[i] = (8 * near - far) / (12 * h)
        flat[i] = old
    return grad


def check_gradients(forward: Callable[[], np.ndarray], backward: Callable[[np.ndarray], object],
                    tensors: dict, analytic: dict | None = None, seed: int = 0,
                    max_checks: int | None = None, h: float = 1e-3) -> dict:
    """Compare analytic and numerical gradients of ``L = Σ G ∘ forward()`` for each tensor.

    Args:
        forward: computes the output from the current tensors (no arguments).
        backward: takes G (same shape as the output) and returns the input gradient(s); it must also
            fill the parameter gradients named in ``analytic``.
        tensors: ``{name: float64 array}`` to perturb (inputs and parameter data).
        analytic: ``{name: callable(returned value) -> analytic gradient}``.
        max_checks: check at most this many random entries of each tensor (default: all).
    Returns:
        ``{name: relative error}``.
    """
    rng = np.random.default_rng(seed)
    out = forward()
    g = rng.standard_normal(out.shape)
    returned = backward(g)
    results = {}
    for name, x in tensors.items():
        a = np.asarray(analytic[name](returned), dtype=np.float64)
        idx = None
        if max_checks is not None and x.size > max_checks:
            idx = rng.choice(x.size, size=max_checks, replace=False)
        n = numerical_gradient(lambda: float(np.sum(g * forward())), x, h=h, indices=idx)
        if idx is not None:
            a, n = a.reshape(-1)[idx], n.reshape(-1)[idx]
        results[name] = rel_error(a, n)
    return results


def check_layer(layer, *inputs, seed: int = 0, max_checks: int | None = None, input_names=None,
                **forward_kwargs) -> dict:
    """Gradient-check a layer: its float input(s) and every parameter.

    The layer's parameters and the inputs must be float64. Returns ``{name: relative error}`` with
    ``input`` (or ``input_names``) for inputs and the dotted parameter names for parameters.
    """
    names = list(input_names or (["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]))
    float_inputs = {n: x for n, x in zip(names, inputs) if np.asarray(x).dtype.kind == "f"}

    def forward():
        return layer.forward(*inputs, **forward_kwargs)

    def backward(g):
        layer.zero_grad()
        layer.forward(*inputs, **forward_kwargs)
        dx = layer.backward(g)
        grads = {p_name: p.grad.copy() for p_name, p in layer.named_parameters()}
        return dx, grads

    tensors = dict(float_inputs)
    analytic = {}
    for i, n in enumerate(names):
        if n in float_inputs:
            analytic[n] = (lambda r, i=i: r[0] if len(float_inputs) == 1 else r[0][i])
    for p_name, p in layer.named_parameters():
        tensors[p_name] = p.data
        analytic[p_name] = (lambda r, p_name=p_name: r[1][p_name])
    return check_gradients(forward, backward, tensors, analytic, seed=seed, max_checks=max_checks)


def format_table(results: dict, title: str = "gradient check") -> str:
    """A small text table of relative errors, worst marked."""
    width = max([len(k) for k in results] + [len(title)])
    lines = [f"{title:<{width}}  rel. error", "-" * (width + 12)]
    for k, v in results.items():
        lines.append(f"{k:<{width}}  {v:.2e}")
    return "\n".join(lines)


class FixedRandomness(Module):
    """Wrap a layer so that every forward draws the same random numbers (the same dropout masks):
    the generator ``rng`` is rewound to its state at wrapping time before each forward, so the
    function being checked is one fixed function. ``inner`` is the layer (its parameters are
    ``inner.*``)."""

    def __init__(self, layer, rng):
        self.inner, self.rng, self.state = layer, rng, rng.bit_generator.state

    def forward(self, *args, **kwargs):
        self.rng.bit_generator.state = self.state
        return self.inner.forward(*args, **kwargs)

    def backward(self, dout):
        return self.inner.backward(dout)
