"""Optimizers, learning-rate schedule and gradient clipping — the training half of the article.

    SGD (momentum μ, L2 λ):   g ← g + λθ;   b ← μb + g;   θ ← θ − η b
    Adam (L2 λ):              g ← g + λθ;   m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
                              θ ← θ − η · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
    AdamW (decoupled λ):      θ ← θ(1 − ηλ), then the Adam step on the raw gradient

L2 in the gradient (Adam) and decoupled decay (AdamW) differ: with Adam the decay term is rescaled by
1/√v like every gradient; AdamW shrinks weights at a fixed rate (Loshchilov & Hutter, 2019). BERT
trains with AdamW and does not decay biases or LayerNorm weights (``bert_param_groups``).

``params`` is a list of ``Parameter`` or of groups ``{"params": [...], "weight_decay": ..., "lr": ...}``
as in PyTorch. Parameters with ``requires_grad=False`` (a frozen encoder) are skipped.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from tinybert_kernels import dispatch
from tinybert.errors import InvalidType, InvalidValue
from tinybert.nn.module import Parameter
from tinybert.xp import get_array_module, to_numpy

_KERNEL = dispatch.fused("optim")     # one-pass Adam and Σg² (None without Numba)


def bert_param_groups(model, weight_decay: float = 0.01):
    """Two groups: decay everything but biases and LayerNorm weights (BERT's convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm" in name.split(".")[-2].lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------
# hyper-parameter validation: a NaN or negative rate would train without a word and give garbage
# ------------------------------------------------------------------------------------------------

def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
                 high_open: bool = True) -> None:
    """Raise ValueError naming ``name`` and ``value`` unless it is a finite real number in the interval
    from ``low`` to ``high`` (each end closed unless marked open)."""
    ok = _is_real(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not ok:
        interval = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
        raise InvalidValue(f"{name}={value!r}: expected a finite number in {interval}")


def check_step_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidValue(f"{name}={value!r}: expected a whole number of steps >= 0")


def _check_sgd_group(g: dict) -> None:
    check_number("lr", g["lr"], 0.0)
    check_number("momentum", g["momentum"], 0.0, 1.0)
    check_number("weight_decay", g["weight_decay"], 0.0)


def _check_adam_group(g: dict) -> None:
    check_number("lr", g["lr"], 0.0)
    betas = g["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise InvalidValue(f"betas={betas!r}: expected a pair (beta1, beta2)")
    check_number("betas[0]", betas[0], 0.0, 1.0)
    check_number("betas[1]", betas[1], 0.0, 1.0)
    check_number("eps", g["eps"], 0.0, low_open=True)       # eps = 0 divides 0 by 0 where v is 0
    check_number("weight_decay", g["weight_decay"], 0.0)


class Optimizer:
    def __init__(self, params, defaults: dict):
        if hasattr(params, "parameters") and callable(params.parameters):
            raise InvalidType(f"params must be Parameters or param groups, got a {type(params).__name__}: "
                              "pass model.parameters()")
        params = list(params)
        if not params:
            raise InvalidValue("the optimizer got an empty parameter list")
        if isinstance(params[0], Parameter):
            params = [{"params": params}]
        self.param_groups = []
        seen: dict[int, int] = {}                # id(param) -> its group: each parameter stepped once
        for gi, g in enumerate(params):
            if not isinstance(g, dict) or "params" not in g:
                raise InvalidType("params must be Parameters or dicts with a 'params' list")
            unknown = sorted(set(g) - set(defaults) - {"params"})
            if unknown:                          # a misspelt "lrr" would otherwise be ignored silently
                raise InvalidValue(f"param group {gi} has unknown key(s) {unknown}; a group may set "
                                   f"{sorted(defaults)} (and holds 'params')")
            group = dict(defaults, **g)
            group["params"] = list(group["params"])
            for pi, p in enumerate(group["params"]):
                if not isinstance(p, Parameter):
                    raise InvalidType(f"expected tinybert Parameter objects, got {type(p).__name__}")
                if id(p) in seen:
                    raise InvalidValue(f"parameter {pi} of param group {gi} {tuple(p.shape)} is also in group "
                                       f"{seen[id(p)]}: it would be updated twice a step; give each parameter once")
                seen[id(p)] = gi
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}   # id(param) -> buffers
        self.step_count = 0

    def _params(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    if p.grad.shape != p.data.shape:
                        raise InvalidValue(f"a parameter of shape {tuple(p.data.shape)} has a gradient of shape "
                                           f"{tuple(p.grad.shape)}: a backward must add dL/dp of p's own shape")
                    yield group, p

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad[...] = 0

    def state_dict(self) -> dict:
        """{'step': int, 'lr': [per group], 'buffers': {'<group>.<index>.<name>': ndarray}} (NumPy)."""
        buffers = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                for name, arr in self.state.get(id(p), {}).items():
                    buffers[f"{gi}.{pi}.{name}"] = to_numpy(arr)
        return {"step": self.step_count, "lr": [g["lr"] for g in self.param_groups], "buffers": buffers}

    def load_state_dict(self, state: dict):
        self.step_count = int(state["step"])
        for g, lr in zip(self.param_groups, state["lr"]):
            g["lr"] = lr
        self.state = {}
        for key, arr in state["buffers"].items():
            gi, pi, name = key.split(".")
            p = self.param_groups[int(gi)]["params"][int(pi)]
            xp = get_array_module(p.data)
            self.state.setdefault(id(p), {})[name] = xp.asarray(arr, dtype=p.data.dtype)


class SGD(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        for group in self.param_groups:          # the defaults and every group's own overrides
            _check_sgd_group(group)

    def step(self):
        self.step_count += 1
        for group, p in self._params():
            g = p.grad
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.data
            if group["momentum"]:
                st = self.state.setdefault(id(p), {})
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = g.copy()
                else:
                    st["momentum_buffer"] *= group["momentum"]
                    st["momentum_buffer"] += g
                g = st["momentum_buffer"]
            p.data -= group["lr"] * g


class Adam(Optimizer):
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        _check_adam_group(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:          # every group's own overrides
            _check_adam_group(group)

    def step(self):
        """One update of every parameter: the fused one-pass kernel for NumPy arrays
        (``kernels/optim.py``, bit for bit ``adam_update``), else ``adam_update`` itself."""
        self.step_count += 1
        t = self.step_count
        for group, p in self._params():
            xp = get_array_module(p.data)
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            st = self.state.setdefault(id(p), {})
            if "exp_avg" not in st:
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            if _KERNEL is not None and _KERNEL.supports(p.data, p.grad, m, v):
                _KERNEL.adam_step(p.data, p.grad, m, v, lr, b1, b2, eps, wd, self.decoupled, t)
            else:
                adam_update(p.data, p.grad, m, v, lr, b1, b2, eps, wd, self.decoupled, t)


def adam_update(param, grad, m, v, lr, b1, b2, eps, wd, decoupled, t):
    """The Adam/AdamW update of one parameter at step t, in place on param, m and v (the formula,
    and the oracle of the fused kernel).  param, grad, m, v: arrays of one shape."""
    xp = get_array_module(param)
    g = grad
    if wd and decoupled:
        param *= 1.0 - lr * wd                           # AdamW: θ ← θ(1 − ηλ)
    elif wd:
        g = g + wd * param                               # Adam: L2 enters the gradient
    m *= b1
    m += (1.0 - b1) * g                                  # m ← β₁m + (1−β₁)g
    v *= b2
    v += (1.0 - b2) * (g * g)                            # v ← β₂v + (1−β₂)g²
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    denom = xp.sqrt(v) * (1.0 / math.sqrt(bc2))
    denom += eps                                         # √v̂ + ε
    param -= (lr / bc1) * (m / denom)                    # θ ← θ − η m̂ / (√v̂ + ε)


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as in PyTorch and BERT)."""
    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


class LinearWarmupDecay:
    """Learning rate: linear warm-up from 0 to the base rate over ``warmup_steps``, then linear decay
    to 0 at ``total_steps`` (BERT's schedule; HF's ``get_linear_schedule_with_warmup``).

        factor(s) = s / warmup                       for s < warmup
                  = (total − s) / (total − warmup)   after, never below 0

    Call ``step()`` after each ``optimizer.step()``.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int):
        if not isinstance(optimizer, Optimizer):
            raise InvalidType(f"optimizer must be a tinybert Optimizer, got {type(optimizer).__name__}")
        check_step_count("warmup_steps", warmup_steps)
        check_step_count("total_steps", total_steps)
        if total_steps <= 0 or warmup_steps > total_steps:
            raise InvalidValue(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) "
                             "and total_steps > 0")
        self.optimizer, self.warmup, self.total = optimizer, warmup_steps, total_steps
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, s: int) -> float:
        if s < self.warmup:
            return s / max(1, self.warmup)
        return max(0.0, (self.total - s) / max(1, self.total - self.warmup))

    def _apply(self):
        f = self.factor(self.last_step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self):
        self.last_step += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.last_step, self.base_lrs = int(state["last_step"]), list(state["base_lrs"])
        self._apply()


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int):
    """HF's name for ``LinearWarmupDecay``."""
    return LinearWarmupDecay(optimizer, num_warmup_steps, num_training_steps)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm/‖g‖) where ‖g‖ is the global L2 norm over every
    parameter; return ‖g‖ before clipping (as ``torch.nn.utils.clip_grad_norm_``).

    max_norm must be a finite number > 0: a negative one would flip every gradient's sign.
    """
    check_number("max_norm", max_norm, 0.0, low_open=True)
    params = [p for p in params if p.requires_grad]
    total = math.sqrt(sum(_sum_of_squares(p.grad) for p in params))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            p.grad *= coef
    return total


def _sum_of_squares(g) -> float:
    """Σ g² in float64: one fused pass for a NumPy array, the formula otherwise."""
    if _KERNEL is not None and _KERNEL.supports(g):
        return _KERNEL.sum_of_squares(g)
    return float((g.astype(np.float64) ** 2).sum())
