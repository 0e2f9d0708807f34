"""Where did a NaN or inf first appear? Called by the trainer when a loss or a gradient goes bad.

``trace_nonfinite(model, run)`` re-runs a step with every module's ``forward`` and ``backward``
watched and names the first one whose output (or own parameter gradient) is not finite;
``nonfinite_parameters(model)`` names the parameters that hold NaN or ±inf.
"""
from __future__ import annotations

from tinybert.errors import InvalidValue
from tinybert.nn.module import Parameter
from tinybert.xp import get_array_module


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


def check_finite_outputs(values, what: str) -> None:
    """Refuse (InvalidValue naming ``what`` and the first rows) outputs that hold NaN or ±inf: an
    argmax over NaN logits is class 0 and a NaN probability prints as "nan", both without a word."""
    xp = get_array_module(values)
    bad = ~xp.isfinite(values)
    if not bool(bad.any()):
        return
    rows = [int(i) for i in xp.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[:5]] if values.ndim > 1 else []
    raise InvalidValue(f"{what} hold NaN or infinite values" + (f" (rows {rows}{' ...' if len(rows) == 5 else ''})"
                                                                  if rows else "")
                       + ": the model's weights overflow or are damaged; its answers would be meaningless")
