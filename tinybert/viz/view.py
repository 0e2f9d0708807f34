"""An interactive view of one text going through a BERT: tokens, attention by layer and head,
attention rollout and, for a model with a head, its prediction and why (``tinybert view``).

    view(model, tokenizer, text, pair=None) -> AttentionView
    AttentionView.html          the whole page: one file, its CSS and JavaScript inline, no network
    AttentionView.save(path)    writes it (open it from disk in any browser)
    AttentionView._repr_html_   the same view inside a Jupyter output cell

What the page shows, and where each number comes from (nothing is computed a second way):

    P[l, h, i, j]   model(..., output_attentions=True).attentions: layer l, head h, how much token i
                    attends to token j (models/attention_maps.py: the weights the forward used)
    R [T, T]        attention rollout, R = Â_L ⋯ Â_1 with Â_l = ½ mean_h P_l + ½ I
                    (pipelines/explain.py: attention_rollout)
    a_t [T]         integrated gradients and gradient × input of the prediction
                    (pipelines/explain.py: explain), for a classifier or a masked LM with a [MASK]

The page's head view draws a line from token i (left) to token j (right) whose opacity is P[l, h, i, j];
a grid of thumbnails, one per layer and head, picks (l, h). Weights travel in the page as integers
round(P · 10⁶) (``SCALE``): at most 5·10⁻⁷ from the model's, and about 7 characters each, so
all-MiniLM-L6-v2 on a 20-token sentence (6 layers × 12 heads × 22² weights) makes a page of
about 210 KB. The page grows as L·A·T² (and the head view draws T² lines): a 128-token text on the
same model makes about 5 MB. The JavaScript and CSS are package files (``view.js``, ``view.css`` beside
this one).
"""
from __future__ import annotations

import html
import json
import os
import uuid
from importlib import resources

import numpy as np

from tinybert.errors import InvalidType, InvalidValue
from tinybert.io.files import write_text_atomic
from tinybert.nn.softmax import softmax
from tinybert.pipelines.explain import attention_rollout, explain, model_kind
from tinybert.text.tokenizer import BertTokenizer
from tinybert.xp import to_numpy

SCALE = 1_000_000       # weights are written as round(P · SCALE)
TOP_K = 5               # the predictions listed


class AttentionView:
    """The page for one text. ``data`` is what the page's JavaScript draws (plain JSON types);
    ``html`` the whole page, ``fragment`` the part a notebook shows (unique element ids, so that
    several views live in one notebook)."""

    def __init__(self, data: dict):
        self.data = data
        self.element_id = f"tbv-{uuid.uuid4().hex[:12]}"

    @property
    def fragment(self) -> str:
        """The view as an HTML fragment: its element, its data, its CSS and its script."""
        payload = json.dumps(self.data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
        return (f'<div class="tbv" id="{self.element_id}"></div>\n'
                f'<style>{_package_text("view.css")}</style>\n'
                f'<script type="application/json" id="{self.element_id}-data">{payload}</script>\n'
                f'<script>{_package_text("view.js")}\n'
                f'tinybertView(document.getElementById("{self.element_id}"), '
                f'JSON.parse(document.getElementById("{self.element_id}-data").textContent));</script>\n')

    @property
    def html(self) -> str:
        """The page: one HTML document that needs nothing but itself."""
        title = html.escape(f"tinybert view: {self.data['text'][:60]}")
        return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
                f'</head>\n<body style="margin:0">\n{self.fragment}</body>\n</html>\n')

    def _repr_html_(self) -> str:
        return self.fragment

    def save(self, path) -> str:
        """Write the page to ``path`` (replaced atomically). -> the path."""
        path = os.fspath(path)
        write_text_atomic(path, self.html)
        return path


def _package_text(name: str) -> str:
    return resources.files("tinybert.viz").joinpath(name).read_text(encoding="utf-8")


def _kind(model) -> str:
    kind = model_kind(model)
    if kind is None:
        raise InvalidType(f"model: expected a BertModel, BertForMaskedLM or BertForSequenceClassification, "
                          f"got {type(model).__name__}")
    return kind


def _check_text(name: str, value):
    if not isinstance(value, str):
        raise InvalidType(f"{name}: expected a str, got {type(value).__name__}")
    if not value.strip():
        raise InvalidValue(f"{name}={value!r}: expected a non-empty text")


def _weights(p) -> list:
    """Weights in [0, 1] as the integers round(p · SCALE), flattened row by row."""
    return np.rint(np.asarray(p, dtype=np.float64) * SCALE).astype(np.int64).ravel().tolist()


def _prediction(model, kind: str, tokenizer, logits, ids) -> dict | None:
    """The model's answer: a classifier's labels, or the words at the first [MASK] (None without one)."""
    z = to_numpy(logits).astype(np.float64)[0]
    if kind == "classifier":
        position, names = 0, lambda k: model.config.id2label[int(k)]
    else:
        where = np.flatnonzero(ids == tokenizer.mask_token_id)
        if kind != "fill-mask" or where.size == 0:
            return None
        position, names = int(where[0]), lambda k: tokenizer.convert_ids_to_tokens(int(k))
        z = z[position]
    p = softmax(z)
    top = np.argsort(-p)[:TOP_K]
    return {"mode": kind, "position": position, "label": str(names(top[0])), "probability": float(p[top[0]]),
            "top": [[str(names(k)), float(p[k])] for k in top]}


def view(model, tokenizer, text: str, pair: str | None = None, steps: int = 50) -> AttentionView:
    """The interactive page for ``text`` (and ``pair``, a second segment) read by ``model``.

    model: a BertModel, BertForMaskedLM or BertForSequenceClassification; tokenizer: its
    BertTokenizer. The text is not truncated: one longer than the model's positions is refused.
    For a classifier (a single text) or a masked LM (a text with a [MASK]), the page also shows the
    prediction and explain's integrated gradients with ``steps`` equal intervals to start from.
    -> AttentionView (``.save(path)``, ``.html``; shown inline by Jupyter).
    """
    kind = _kind(model)
    if not isinstance(tokenizer, BertTokenizer):
        raise InvalidType(f"tokenizer: expected a BertTokenizer, got {type(tokenizer).__name__}")
    _check_text("text", text)
    if pair is not None:
        _check_text("pair", pair)
    enc = tokenizer(text, pair, truncation=False)
    ids, segments = np.asarray(enc["input_ids"]), np.asarray(enc["token_type_ids"])
    limit = model.config.max_position_embeddings
    if len(ids) > limit:
        what = "text and pair make" if pair is not None else "text makes"
        raise InvalidValue(f"{what} {len(ids)} tokens with [CLS] and [SEP]; the model reads at most {limit} "
                           f"(max_position_embeddings): shorten the text")
    with model.evaluating():
        out = model(input_ids=ids[None], token_type_ids=segments[None], output_attentions=True)
    maps = np.stack([to_numpy(p)[0] for p in out.attentions])                   # [L, A, T, T]
    rollout = attention_rollout(maps)                                          # [T, T]
    prediction = None if kind == "encoder" else _prediction(model, kind, tokenizer, out.logits, ids)
    attributions, notes = None, []
    if prediction is not None and pair is None:
        e = explain(model, tokenizer, text, steps=steps)
        attributions = {"integrated_gradients": e.integrated_gradients.tolist(),
                        "gradient_x_input": e.gradient_x_input.tolist(),
                        "score": e.score, "baseline_score": e.baseline_score, "output": e.output,
                        "completeness_error": e.completeness_error, "steps": e.steps}
        notes += e.notes
    elif prediction is not None:
        notes.append("integrated gradients are not shown for a pair of texts: explain reads one text")
    elif kind == "fill-mask":
        notes.append(f"no {tokenizer.mask_token} in the text: put one in to see the model's guess and why")
    cfg = model.config
    data = {"text": text, "pair": pair, "model": type(model).__name__, "layers": int(maps.shape[0]),
            "heads": int(maps.shape[1]), "hidden": int(cfg.hidden_size),
            "tokens": tokenizer.convert_ids_to_tokens(ids.tolist()), "segments": segments.tolist(),
            "scale": SCALE, "attentions": [[_weights(head) for head in layer] for layer in maps],
            "rollout": _weights(rollout), "prediction": prediction, "attributions": attributions,
            "notes": notes}
    return AttentionView(data)
