"""Lesson 09's example texts and model (shared with its exercise solutions)."""
from tinybert import BertModel, BertTokenizer

SENTENCES = ["i like to walk in the rain",
             "walking in the rain is something i enjoy",
             "a stroll under falling rain makes me happy",
             "the stock market fell sharply today",
             "shares dropped at the close of trading",
             "my cat sleeps on the sofa all day"]
RAIN = 3                                  # the first three sentences say the same thing
TEXT_ATT = "the cat sat on the mat because it was tired"


def load():
    """all-MiniLM-L6-v2 as tinybert's BertModel and its tokenizer."""
    return BertModel.from_pretrained("all-MiniLM-L6-v2"), BertTokenizer.from_pretrained("all-MiniLM-L6-v2")


def it_weights(model, tok, text):
    """The attention maps [L, H, T, T] of ``text`` and the weights [L, H] that "it" puts on "cat" and "mat"."""
    import numpy as np
    enc = tok(text)
    maps = np.stack(model(enc["input_ids"][None], output_attentions=True).attentions)[:, 0].astype(np.float64)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    it, cat, mat = toks.index("it"), toks.index("cat"), toks.index("mat")
    return maps, toks, maps[:, :, it, cat], maps[:, :, it, mat]


def rain_gap(sims):
    """(mean, lowest) similarity within the rain sentences, (mean, highest) against the others."""
    import numpy as np
    rain = sims[:RAIN, :RAIN][np.triu_indices(RAIN, 1)]
    cross = sims[:RAIN, RAIN:]
    return float(rain.mean()), float(rain.min()), float(cross.mean()), float(cross.max())
