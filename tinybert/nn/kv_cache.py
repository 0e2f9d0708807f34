"""The KV cache of generation: what each decoder layer keeps from the positions already computed.

Generating token t+1 with a causal decoder needs the keys and values of positions 0 … t in every
layer. Without a cache they are recomputed for the whole prefix at every step (T steps cost
O(T²) projections); with it, a step projects the one new position and appends its K, V:

    self-attention:   K_layer = [K_past | K_new],  V_layer = [V_past | V_new]     [B, H, Tp + 1, d]
    cross-attention:  K, V of the encoder's output, computed at the first step and reused

``length`` is Tp, the number of positions cached: the next positions' ids are Tp, Tp + 1, …
(the embeddings' position offset). Inference only: nothing here is differentiated.
"""
from __future__ import annotations


class KVCache:
    """Per layer: ``self_kv[i]`` = (K, V) [B, H, Tp, d] or None, ``cross_kv[i]`` = (K, V) [B, H, S, d] or None."""

    def __init__(self, num_layers: int):
        self.self_kv = [None] * num_layers
        self.cross_kv = [None] * num_layers
        self.length = 0

    def __repr__(self):
        return f"KVCache(layers={len(self.self_kv)}, length={self.length})"
