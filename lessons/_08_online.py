"""Lesson 08's online softmax for one query row, by hand (shared with its exercise solutions).

The scores of each key block are computed inside the loop from the query and that block's keys, so
no more than one block of scores exists at a time, as in the kernel's tiles.
"""
import math

import numpy as np


def online_softmax_row(q_row, k, v, block):
    """z = softmax(q_row Kᵀ/√d) V for one query row, key block by key block.

    Args:
        q_row: [d] one query.  k, v: [T, d] keys and values.  block: keys per block.
    Returns:
        z [d], lse (a float), and the trace: one dict per block with its keys, the largest score of
        the block, m, α, l after it and the partial result acc/l.
    """
    T, d = k.shape
    m, l, acc = -math.inf, 0.0, np.zeros(d)
    trace = []
    for j0 in range(0, T, block):
        A_j = k[j0:j0 + block] @ q_row / math.sqrt(d)        # this block's scores, and no others
        m_new = max(m, float(A_j.max()))
        alpha = math.exp(m - m_new)                          # exp(-inf) = 0 at the first block
        e = np.exp(A_j - m_new)
        l = alpha * l + float(e.sum())
        acc = alpha * acc + e @ v[j0:j0 + block]
        trace.append({"block": j0 // block, "keys": (j0, j0 + len(A_j) - 1), "max": float(A_j.max()),
                      "m": m_new, "alpha": alpha, "l": l, "z": acc / l})
        m = m_new
    return acc / l, m + math.log(l), trace


def print_trace(trace):
    """The table of m, α and l after each block."""
    print(f"  {'block':>5} {'keys':>7} {'max A_j':>8} {'m':>8} {'α':>8} {'l':>8}")
    for t in trace:
        print(f"  {t['block']:>5} {t['keys'][0]:>3}–{t['keys'][1]:<3} {t['max']:8.3f} {t['m']:8.3f} "
              f"{t['alpha']:8.3f} {t['l']:8.3f}")
