"""Why did the model say that? Per-token attributions of one prediction (``tinybert explain``).

Three answers, each a number per token of the text:

    gradient × input       a_t = Σ_h x_th ∂f/∂x_th                      one forward and backward
    integrated gradients   a_t = Σ_h (x_th − x'_th) ∫₀¹ ∂f/∂x_th(x' + α(x − x')) dα
                           (Sundararajan et al., 2017), the integral by the trapezoid rule on N steps,
                           refined where it is worst until complete to 1% (integrated_gradients)
    attention rollout      R = Â_L ⋯ Â_1,  Â_l = ½ mean_heads(P_l) + ½ I   (Abnar & Zuidema, 2020);
                           the row of the token the prediction is read from

x: [T, H] are the text's word vectors (the rows of the word-embedding table that the tokens look up;
positions and segments are left as they are), f is the probability the model gives the explained
class (or the logit, ``output="logit"``), and the gradient ∂f/∂x is one more backward call: every
model's ``backward`` returns dL/d(word vectors) (``models/bert.py``), and ``forward`` takes the
vectors as ``inputs_embeds``. The baseline x' replaces every token's vector by the [PAD] vector
(``baseline="pad"``) or by zeros (``"zero"``); [CLS], [SEP] and [MASK] keep theirs (they frame the
question rather than answer it), so their integrated gradient is exactly 0.

Integrated gradients are *complete*: Σ_t a_t = f(x) − f(x'), up to the error of the quadrature
(O(1/N²) for the trapezoid rule, but with a large constant where the model switches class abruptly
along the path), which every explanation measures and reports (``completeness_error``). Gradient × input has no such property; attention rollout says where
information flowed, not which way it pushed the decision (it is never negative) — where the three
disagree is worth a look (``lessons/12_explain.py``).

Two kinds of prediction: a classifier's label (``BertForSequenceClassification``, read from [CLS]),
or a masked-language model's word at the first [MASK] of the text (``BertForMaskedLM``).

    explain(model, tokenizer, text, target=None, steps=50, baseline="pad") -> Explanation
    load_explainable(path, texts)                  the model to explain ``texts`` with, from a checkpoint
    integrated_gradients, attention_rollout        the pieces, for arrays
    format_explanation(e, color), plot_explanation(e, path)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tinybert.config import activation_bytes, check_memory
from tinybert.errors import CheckpointError, InvalidType, InvalidValue
from tinybert.io.figures import pyplot, save_figure
from tinybert.models.attention_maps import attention_maps
from tinybert.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel
from tinybert.nn.softmax import softmax
from tinybert.pipelines.predict import checkpoint_heads, load_masked_lm
from tinybert.text.tokenizer import BertTokenizer
from tinybert.text.truncation import full_length, logger
from tinybert.xp import to_numpy

MAX_IG_STEPS = 100_000      # integrated gradients' intervals (steps, max_steps): each a forward and a backward

BASELINES = ("pad", "zero")
OUTPUTS = ("probability", "logit")
METHODS = ("integrated_gradients", "gradient_x_input", "attention_rollout")


@dataclass
class Explanation:
    """One explained prediction. Arrays are per token, [T] (``tokens`` as the model read them)."""
    text: str
    tokens: list
    mode: str                       # "classifier" or "fill-mask"
    target: str                     # the label, or the predicted word
    target_index: int               # its class index, or its vocabulary id
    position: int                   # the token the prediction is read from ([CLS], or the [MASK])
    output: str                     # what f is: "probability" or "logit"
    score: float                    # f(x)
    baseline_score: float           # f(x')
    baseline: str
    steps: int                      # the trapezoid rule's intervals, after refinement
    integrated_gradients: np.ndarray
    gradient_x_input: np.ndarray
    attention_rollout: np.ndarray
    n_tokens_full: int              # the text's length in tokens before truncation
    notes: list = field(default_factory=list)

    @property
    def completeness_error(self) -> float:
        """|Σ_t IG_t − (f(x) − f(x'))| / |f(x) − f(x')|: how far the quadrature is from exact."""
        delta = self.score - self.baseline_score
        gap = abs(float(self.integrated_gradients.sum()) - delta)
        return gap / abs(delta) if delta != 0 else (0.0 if gap == 0 else float("inf"))

    @property
    def truncated(self) -> bool:
        return self.n_tokens_full > len(self.tokens)

    def to_dict(self) -> dict:
        """Plain JSON types (``tinybert explain --json``)."""
        d = asdict(self)
        for k in METHODS:
            d[k] = [float(v) for v in d[k]]
        d["completeness_error"] = self.completeness_error
        d["truncated"] = self.truncated
        return d


# --------------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------------

def model_kind(model):
    """"classifier", "fill-mask", "encoder" (a bare BertModel), or None for anything else."""
    if isinstance(model, BertForSequenceClassification):
        return "classifier"
    if isinstance(model, BertForMaskedLM):
        return "fill-mask"
    if isinstance(model, BertModel):
        return "encoder"
    return None


def _check_model(model):
    kind = model_kind(model)
    if kind in ("classifier", "fill-mask"):
        return kind
    raise InvalidType(f"explain needs a BertForSequenceClassification (a fine-tuned classifier) or a "
                      f"BertForMaskedLM (a [MASK] to fill), got {type(model).__name__}")


def score_and_gradient(model, embeds, token_type_ids, target: int, position: int, output: str = "probability"):
    """f and ∂f/∂x for a batch of word-vector inputs, through the model's own backward.

    embeds: [B, T, H] word vectors; token_type_ids: [B, T]; target: the class (classifier) or
    vocabulary id (masked LM); position: the [MASK] token (masked LM; ignored by a classifier).
    -> f [B] (float64), ∂f/∂x [B, T, H] (float64).

    f = p_k = softmax(z)_k has ∂f/∂z = p_k (e_k − p); f = z_k has ∂f/∂z = e_k. The model runs in
    eval mode (no dropout) and its parameter gradients are left at zero; a frozen encoder
    (``freeze_encoder``) is passed through all the same, and stays frozen.
    """
    mode = _check_model(model)
    with model.evaluating():
        logits = model.forward(inputs_embeds=embeds, token_type_ids=token_type_ids)
        z = to_numpy(logits).astype(np.float64)
        z_at = z if mode == "classifier" else z[:, position, :]                     # [B, K] or [B, V]
        p = softmax(z_at)
        onehot = np.zeros_like(z_at)
        onehot[:, target] = 1.0
        if output == "probability":
            f = p[:, target]
            dz = f[:, None] * (onehot - p)
        else:
            f = z_at[:, target]
            dz = onehot
        dlogits = np.zeros_like(z)
        if mode == "classifier":
            dlogits = dz
        else:
            dlogits[:, position, :] = dz
        model.zero_grad()
        frozen = model.encoder_frozen
        model.encoder_frozen = False          # a head-only model still has a gradient with respect to its words
        try:
            grad = model.backward(model.xp.asarray(dlogits.astype(to_numpy(logits).dtype)))
        finally:
            model.encoder_frozen = frozen
        model.zero_grad()
    return f, to_numpy(grad).astype(np.float64)


def integrated_gradients(model, x, baseline, token_type_ids, target: int, position: int, steps: int = 50,
                         output: str = "probability", batch_size: int = 16, tolerance: float = 0.0,
                         max_steps: int = 2000):
    """Integrated gradients of one text by the trapezoid rule, on ``steps`` equal intervals and then,
    while the completeness error exceeds ``tolerance``, on intervals split where the rule is worst.

    x, baseline: [T, H] word vectors; token_type_ids: [T].
    -> (attributions [T], gradient at x [T, H], f(x), f(x'), the number of intervals), with

        a_t = Σ_i (α_{i+1} − α_i) · ½ (c_t(α_i) + c_t(α_{i+1})),   c_t(α) = Σ_h (x − x')_th ∂f/∂x_th(x' + α(x − x'))

    Why refine: on each interval the exact integral of Σ_t c_t is f(α_{i+1}) − f(α_i) (the gradient
    theorem), so |Σ_t (interval's share) − (f(α_{i+1}) − f(α_i))| is the rule's error there, known
    for free. A trained classifier can switch from one class to the other within a few percent of
    the path (the demo's model does), and equal steps then need hundreds of points; splitting the
    worst intervals (``batch_size`` of them per model call, up to ``max_steps`` intervals) puts the
    points where f changes. ``tolerance=0``: the equal steps only (the textbook rule).
    """
    # long because: argument checks, a batching helper, then the trapezoid rule and the refinement of
    # its worst intervals, which share the path's arrays
    for name, v, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("max_steps", max_steps, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            hint = " (50 is usual; more steps, smaller completeness error)" if name == "steps" else ""
            raise InvalidValue(f"{name}={v!r}: integrated gradients need an integer {name} >= {low}{hint}")
        if name != "batch_size" and v > MAX_IG_STEPS:          # each step is a forward and a backward
            raise InvalidValue(f"{name}={v} (--{name.replace('_', '-')}): expected at most {MAX_IG_STEPS:,} "
                               f"intervals (each costs a forward and a backward of the model; 50 to 2,000 "
                               "reach a 1% completeness error)")
    points = max(steps, max_steps) + 1                     # f, c [points, T] and the path's alphas, float64
    check_memory(8 * points * (np.shape(x)[0] + 4) + batch_size * activation_bytes(
        model.config, 1, np.shape(x)[0], model.bert.embeddings.word_embeddings.weight.data.dtype.itemsize),
        f"integrated gradients on {points - 1:,} intervals of a {np.shape(x)[0]}-token text", "steps", steps)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise InvalidValue(f"tolerance={tolerance!r}: expected a completeness error in [0, 1) (0.01 = 1%; "
                           "0: equal steps only)")
    x, baseline = np.asarray(x, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    dtype = model.bert.embeddings.word_embeddings.weight.data.dtype
    tt = np.asarray(token_type_ids)

    def at(alphas):
        """f [n] and c [n, T] at the points x' + α(x − x'); the gradient at the last point [T, H]."""
        fs, cs, g = [], [], None
        for start in range(0, len(alphas), batch_size):
            a = alphas[start:start + batch_size]
            points = baseline[None] + a[:, None, None] * (x - baseline)[None]        # [b, T, H]
            f, g = score_and_gradient(model, points.astype(dtype), np.broadcast_to(tt[None], (len(a), len(tt))),
                                      target, position, output)
            fs.append(f)
            cs.append(((x - baseline)[None] * g).sum(axis=-1))
        return np.concatenate(fs), np.concatenate(cs), g[-1]

    alphas = np.arange(steps + 1) / steps
    f, c, grad_at_x = at(alphas)                                  # α = 1 comes last: the gradient at x
    atol = 1e-6 * max(1.0, abs(f[-1]), abs(f[0]))                # rounding of f itself
    while True:
        shares = np.diff(alphas)[:, None] * 0.5 * (c[:-1] + c[1:])                   # [n, T]
        err = np.abs(shares.sum(axis=1) - np.diff(f))                                # [n]
        room = max_steps - len(shares)
        if tolerance == 0 or err.sum() <= tolerance * abs(f[-1] - f[0]) + atol or room <= 0:
            break
        worst = np.argsort(-err)[:min(batch_size, room)]
        worst = worst[err[worst] > atol / len(err)]
        mids = 0.5 * (alphas[worst] + alphas[worst + 1])
        fm, cm, _ = at(mids)
        order = np.argsort(np.concatenate([alphas, mids]), kind="stable")
        alphas, f, c = np.concatenate([alphas, mids])[order], np.concatenate([f, fm])[order], np.concatenate([c, cm])[order]
    return shares.sum(axis=0), grad_at_x, float(f[-1]), float(f[0]), len(shares)


def attention_rollout(maps) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token's information reaches each
    position through the layers, counting the residual path.

    maps: [L, A, T, T] attention weights (rows sum to 1) -> R [T, T], rows summing to 1, with
        Â_l = ½ mean_heads(P_l) + ½ I (rows renormalised),  R = Â_L Â_{L−1} ⋯ Â_1
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[-1] != maps.shape[-2]:
        raise InvalidValue(f"maps has shape {maps.shape}, expected [layers, heads, T, T]")
    t = maps.shape[-1]
    rollout = np.eye(t)
    for p in maps:
        a = 0.5 * p.mean(axis=0) + 0.5 * np.eye(t)
        a /= a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


# --------------------------------------------------------------------------------------------------
# one text
# --------------------------------------------------------------------------------------------------

def _target_index(model, mode, tokenizer, target, predicted: int) -> int:
    if target is None:
        return predicted
    if mode == "classifier":
        labels = {v: int(k) for k, v in model.config.id2label.items()}
        if isinstance(target, str) and target in labels:
            return labels[target]
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < model.config.num_labels:
            return int(target)
        raise InvalidValue(f"target={target!r}: expected one of the model's labels {sorted(labels)} or a class "
                           f"index in [0, {model.config.num_labels})")
    ids = tokenizer.convert_tokens_to_ids([target]) if isinstance(target, str) else [target]
    if isinstance(target, str) and (target not in tokenizer.vocab):
        raise InvalidValue(f"target={target!r} is not a token of the vocabulary: a fill-mask explanation "
                           "explains one token at the [MASK]")
    if isinstance(ids[0], bool) or not isinstance(ids[0], (int, np.integer)) or not 0 <= ids[0] < model.config.vocab_size:
        raise InvalidValue(f"target={target!r}: expected a vocabulary token or an id in [0, {model.config.vocab_size})")
    return int(ids[0])


# explain runs ~70 lines: its docstring and argument checks are a third of it, and the three methods it
# calls are functions of their own above; what stays here is the order in which a reader meets them.
def explain(model, tokenizer, text: str, target=None, steps: int = 50, baseline: str = "pad",
            output: str = "probability", max_length: int | None = None, batch_size: int = 16,
            tolerance: float = 0.01, max_steps: int = 2000) -> Explanation:
    """Explain the model's prediction on ``text`` by the three methods (module docstring).

    model: BertForSequenceClassification (explains a label; ``target``: a label name or index,
    default the predicted one) or BertForMaskedLM (explains the word at the first [MASK];
    ``target``: a token, default the likeliest). steps: the equal intervals the integrated-gradient
    quadrature starts with (>= 1); tolerance, max_steps: intervals are then split until the
    completeness error is at most ``tolerance`` (0.01 = 1%; 0: never) or there are ``max_steps``
    (``integrated_gradients``). baseline: "pad" or "zero". output: "probability" or "logit".
    max_length: truncate the text to this many tokens (default and most: the model's positions);
    a truncated text is explained as read, and the Explanation and the tinybert logger say so.
    """
    # long because: three methods side by side, each a few lines, on one prepared input
    mode = _check_model(model)
    if not isinstance(text, str) or not text.strip():
        raise InvalidValue(f"text={text!r}: expected a non-empty string to explain")
    if baseline not in BASELINES:
        raise InvalidValue(f"baseline={baseline!r}: expected one of {BASELINES}")
    if output not in OUTPUTS:
        raise InvalidValue(f"output={output!r}: expected one of {OUTPUTS}")
    positions = model.config.max_position_embeddings
    limit = positions if max_length is None else int(max_length)
    if limit < 2 or limit > positions:
        raise InvalidValue(f"max_length={max_length!r}: expected an integer in [2, {positions}] (the model's positions)")
    enc = tokenizer(text, truncation=True, max_length=limit)
    ids = np.asarray(enc["input_ids"])
    n_full = full_length(tokenizer, text) if len(ids) >= limit else len(ids)
    notes = []
    if n_full > len(ids):
        notes.append(f"the text has {n_full} tokens; only the first {len(ids)} were read and explained")
        logger.warning("explain: %s", notes[-1])
    if mode == "classifier":
        position = 0                                                            # the pooler reads [CLS]
    else:
        where = np.flatnonzero(ids == tokenizer.mask_token_id)
        if where.size == 0:
            raise InvalidValue(f"fill-mask explanations need a {tokenizer.mask_token} in the text" +
                               (" within the tokens the model reads (shorten the text)"
                                if tokenizer.mask_token in text else ""))
        position = int(where[0])
        if where.size > 1:
            notes.append(f"{where.size} [MASK] tokens: the first (token {position}) is explained")
    token_type_ids = np.zeros_like(ids)
    table = to_numpy(model.bert.embeddings.word_embeddings.weight.data).astype(np.float64)
    x = table[ids]                                                               # [T, H]
    keep = np.isin(ids, [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id])
    base_row = table[tokenizer.pad_token_id] if baseline == "pad" else np.zeros(x.shape[1])
    x_base = np.where(keep[:, None], x, base_row[None, :])

    with model.evaluating():
        z = to_numpy(model.forward(ids[None, :])).astype(np.float64)[0]
    z_at = z if mode == "classifier" else z[position]
    k = _target_index(model, mode, tokenizer, target, int(np.argmax(z_at)))
    label = model.config.id2label[k] if mode == "classifier" else tokenizer.convert_ids_to_tokens(k)

    ig, grad_x, f_x, f_base, n = integrated_gradients(model, x, x_base, token_type_ids, k, position, steps,
                                                      output, batch_size, tolerance, max_steps)
    if abs(f_x - f_base) < 0.05 * max(abs(f_x), abs(f_base), 1e-12):
        notes.append(f"the baseline alone already scores {f_base:.4g} (the text {f_x:.4g}): integrated gradients "
                     "have little to share out; what the model says here it says without the words. Try "
                     "--target with another label, or --baseline zero")
    rollout = attention_rollout(attention_maps(model, ids))[position]
    return Explanation(text=text, tokens=tokenizer.convert_ids_to_tokens(ids), mode=mode, target=str(label),
                       target_index=k, position=position, output=output, score=f_x, baseline_score=f_base,
                       baseline=baseline, steps=n, integrated_gradients=ig,
                       gradient_x_input=(x * grad_x).sum(axis=-1), attention_rollout=rollout,
                       n_tokens_full=int(n_full), notes=notes)


def load_explainable(path, texts, **kwargs):
    """-> (model, tokenizer) to explain ``texts`` with, from the checkpoint at ``path``: its classifier
    when it has one; else, when every text holds a [MASK], its masked-language model (fill-mask mode);
    else a CheckpointError that says what to pass instead."""
    heads = checkpoint_heads(path)
    tokenizer = BertTokenizer.from_pretrained(path)
    if "classifier" in heads:
        return BertForSequenceClassification.from_pretrained(path, **kwargs), tokenizer
    masked = [t for t in texts if tokenizer.mask_token in t]
    if "masked_lm" in heads and len(masked) == len(texts):
        return load_masked_lm(path, **kwargs), tokenizer
    if "masked_lm" in heads:
        raise CheckpointError(f"the checkpoint at {path} has no classifier head (it is a masked-language model): "
                              "explain a fine-tuned classifier (`tinybert finetune` writes RUN/best), or put "
                              f"{tokenizer.mask_token} in every text to explain the word the model fills in there")
    raise CheckpointError(f"the checkpoint at {path} has neither a classifier head nor a masked-language-model "
                          "head (a bare encoder such as all-MiniLM-L6-v2): there is no prediction to explain. "
                          "Explain a fine-tuned classifier (`tinybert finetune` writes RUN/best) or a "
                          "`tinybert pretrain` checkpoint with a [MASK] in the text")


# --------------------------------------------------------------------------------------------------
# showing it
# --------------------------------------------------------------------------------------------------

def _scaled(values) -> np.ndarray:
    """values / max |values| (all zeros stay zeros)."""
    v = np.asarray(values, dtype=np.float64)
    top = np.abs(v).max() if v.size else 0.0
    return v / top if top > 0 else v


def _number(v: float) -> str:
    """+0.1234, or +1.2e-06 where four decimals would show only zeros."""
    return f"{v:+.4f}" if v == 0 or abs(v) >= 5e-5 else f"{v:+.1e}"


def _colour(token: str, s: float) -> str:
    """``token`` on a background from red (s = −1, against) through white to green (s = +1, for)."""
    strength = int(round(abs(s) * 155))
    r, g, b = (255, 255 - strength, 255 - strength) if s < 0 else (255 - strength, 255, 255 - strength)
    return f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{token}\x1b[0m"


def format_explanation(e: Explanation, color: bool = False) -> str:
    """The explanation as text: a headline, the text with each token coloured by its integrated
    gradient (``color``: ANSI 24-bit colours for a terminal; otherwise ``token[+0.12]``), and a table
    of the three attributions per token."""
    what = "label" if e.mode == "classifier" else f"[MASK] at token {e.position} ->"
    head = (f"{what} {e.target!r}: {e.output} {e.score:.4f} (baseline {e.baseline}: {e.baseline_score:.4f}); "
            f"integrated gradients sum to {e.integrated_gradients.sum():+.4f} of f(x) - f(x') = "
            f"{e.score - e.baseline_score:+.4f} (completeness error {100 * e.completeness_error:.2f}% at "
            f"{e.steps} steps)")
    scaled = _scaled(e.integrated_gradients)
    if color:
        line = " ".join(_colour(t, s) for t, s in zip(e.tokens, scaled))
        legend = "  (green: pushes toward it, red: against; integrated gradients)"
    else:
        line = " ".join(f"{t}[{a:+.3f}]" for t, a in zip(e.tokens, e.integrated_gradients))
        legend = "  (token[integrated gradient])"
    width = max(len(t) for t in e.tokens)
    rows = [f"  {'token':<{width}}  {'integ.grad':>10}  {'grad*input':>10}  {'rollout':>8}"]
    rows += [f"  {t:<{width}}  {_number(a):>10}  {_number(g):>10}  {r:>8.4f}"
             for t, a, g, r in zip(e.tokens, e.integrated_gradients, e.gradient_x_input, e.attention_rollout)]
    notes = [f"note: {n}" for n in e.notes]
    return "\n".join([head] + notes + [line + legend] + rows)


def plot_explanation(e: Explanation, path: str) -> str:
    """A PNG of the three attributions as rows over the tokens (each row scaled to its largest
    magnitude; red against, blue for; rollout is never negative). -> path."""
    plt = pyplot()
    rows = np.stack([_scaled(e.integrated_gradients), _scaled(e.gradient_x_input), _scaled(e.attention_rollout)])
    raw = np.stack([e.integrated_gradients, e.gradient_x_input, e.attention_rollout])
    t = len(e.tokens)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.62 * t + 2.2), 2.6))
    ax.imshow(rows, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(t), e.tokens, rotation=60 if t > 12 else 0, ha="right" if t > 12 else "center", fontsize=9)
    ax.set_yticks(range(3), ["integrated\ngradients", "gradient\n× input", "attention\nrollout"], fontsize=8)
    if t <= 40:
        for i in range(3):
            for j in range(t):
                v = raw[i, j]
                ax.text(j, i, f"{v:.2f}" if v == 0 or abs(v) >= 0.005 else f"{v:.0e}", ha="center", va="center", fontsize=6,
                        color="white" if abs(rows[i, j]) > 0.6 else "black")
    what = "label" if e.mode == "classifier" else "[MASK] ="
    ax.set_title(f"{what} {e.target!r} ({e.output} {e.score:.3f}; baseline {e.baseline_score:.3f})"
                 + (f" — first {t} of {e.n_tokens_full} tokens" if e.truncated else ""), fontsize=10)
    return save_figure(fig, path)
