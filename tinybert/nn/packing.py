"""Packing: the token-wise layers skip the padding.

A padded batch of B sentences, T positions each, holds N = Σ_b n_b real tokens (``keep``: [B, T]
bool, True at a real token). Everything in an encoder layer except attention works on each token
alone — the products, GELU, LayerNorm, dropout — so it can run on the N real tokens instead of all
B·T positions: at half padding, half the work. Attention alone needs the [B, T] layout (a query
reads the keys of its own sentence); it unpacks Q, K, V into that layout and packs Z back.

    index  = the positions of the real tokens in the flattened [B·T]       [N]
    pack   : [B, T, ...] -> [N, ...]        x_packed = x.reshape(B·T, ...)[index]
    unpack : [N, ...] -> [B, T, ...]        the rows put back at ``index``, 0 at the padding

Backward: pack and unpack are each other's transpose, so the gradient of ``pack`` is ``unpack``
and the other way round.

What changes for a user: the output at a padding position is 0, as in PyTorch's nested-tensor
``nn.TransformerEncoder``. transformers computes those positions as if they were tokens (their
values mean nothing: no real token attends to them, and poolers and losses skip them), so the
real positions are the same in both, to rounding, and the padding positions differ (so does the
pooled output of a row padded at the *start*: BERT's pooler reads position 0, padding there; BERT's
tokenizers pad at the end). The encoder
packs in eval mode when the batch has padding (``Encoder.skip_padding``, True by default); in
training the padded path runs, so that hidden dropout draws its masks at the same [B, T, C]
coordinates as before. The padded path is this one's readable twin: tests/test_packing.py proves
the two equal at every real position, forward and backward.
"""
from __future__ import annotations

from tinybert.xp import get_array_module


class Packing:
    """The real tokens of one padded batch.  keep: [B, T] bool."""

    def __init__(self, keep):
        xp = get_array_module(keep)
        self.shape = tuple(keep.shape)                       # (B, T)
        self.index = xp.flatnonzero(keep.reshape(-1))        # [N] int
        self.num_tokens = int(self.index.shape[0])           # N

    @classmethod
    def of(cls, keep):
        """A Packing of ``keep``, or None when there is no mask or no padding to skip."""
        if keep is None or bool(keep.all()):
            return None
        return cls(keep)

    def pack(self, x):
        """x: [B, T, ...] -> [N, ...], the real tokens' rows in order."""
        b, t = self.shape
        return x.reshape(b * t, *x.shape[2:])[self.index]

    def unpack(self, x):
        """x: [N, ...] -> [B, T, ...], with zeros at the padding."""
        b, t = self.shape
        out = get_array_module(x).zeros((b * t, *x.shape[1:]), dtype=x.dtype)
        out[self.index] = x
        return out.reshape(b, t, *x.shape[1:])


__all__ = ["Packing"]
