"""Pictures of a model that a learner can touch: ``view`` writes one self-contained HTML page.

    view(model, tokenizer, text, pair=None) -> AttentionView      .html, .save(path), _repr_html_
"""
from tinybert.viz.view import AttentionView, view

__all__ = ["AttentionView", "view"]
