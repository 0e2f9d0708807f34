"""Solutions to lesson 02's exercises (run one with: lessons/02_embeddings.py --exercise N)."""
import numpy as np

from tinybert.nn.embedding import Embedding
from tinybert.nn.positional import PositionalEncoding, sinusoidal_table


def _table(num_positions, dim, base):
    """sinusoidal_table with ``base`` in place of 10000: PE(i)[2k] = sin(i / base^(2k/C)), [2k+1] = cos(…)."""
    i = np.arange(num_positions)[:, None]
    freq = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    pe = np.zeros((num_positions, dim))
    pe[:, 0::2], pe[:, 1::2] = np.sin(i * freq), np.cos(i * freq)
    return pe


def _rotation(dim, k, base):
    """R_k: the block-diagonal 2×2 rotations by k·ω_j that shift the table by k positions (step 5)."""
    R = np.zeros((dim, dim))
    for j, w in enumerate(1.0 / base ** (np.arange(0, dim, 2) / dim)):
        c, s = np.cos(k * w), np.sin(k * w)
        R[2 * j:2 * j + 2, 2 * j:2 * j + 2] = [[c, s], [-s, c]]
    return R


def _mean_cosine(table, distance):
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    return float(np.mean(np.sum(unit[:-distance] * unit[distance:], axis=1)))


def exercise_1(lesson):
    """Remove the positions: use E = tok instead of posenc.forward(tok) in step 4.

    You should see ‖E(x_0) − E(x_4)‖ = 0: the two 'the's are the same vector again, and step 4's claim
    fails.
    """
    rng = np.random.default_rng(lesson.seed)                   # the lesson's toy model: C = 16, 5 words
    ids = np.array([[4, 0, 3, 2, 4, 1]])                       # "the cat sat on the mat"
    tok = Embedding(5, 16, rng=rng, std=1.0, dtype=np.float64).forward(ids)
    with_pe = PositionalEncoding(max_positions=32, dim=16).forward(tok)
    d_without = float(np.linalg.norm(tok[0, 0] - tok[0, 4]))
    d_with = float(np.linalg.norm(with_pe[0, 0] - with_pe[0, 4]))
    lesson.claim("without positions ‖E(x_0) − E(x_4)‖ = {a}: the two 'the's are one vector, so step 4's "
                 "claim (distance > 0.1) fails; with PositionalEncoding(i) it is {b:.4f}",
                 d_without == 0 and d_with > 0.1, a=d_without, b=d_with)


def exercise_2(lesson):
    """Change k = 3 in step 5 to 10, and the base 10000 of sinusoidal_table's formula to 100.

    You should see the rotation error stay ~1e-15 for any k and either base; with base 100 every clock
    turns faster (the slowest once every ~540 positions instead of ~47,000 at C = 64), so positions 32
    apart are much less alike: the base sets how fast similarity falls with distance.
    """
    P, C = 128, 64
    assert np.array_equal(_table(P, C, 10000.0), sinusoidal_table(P, C))    # the same formula as the library
    errs, far, slowest = {}, {}, {}
    for base in (10000.0, 100.0):
        table = _table(P, C, base)
        for k in (3, 10):
            errs[base, k] = float(np.abs(table[k:k + 20] - table[:20] @ _rotation(C, k, base).T).max())
        far[base] = _mean_cosine(table, 32)
        slowest[base] = 2 * np.pi * base ** ((C - 2) / C)
        lesson.value(f"base {base:>7.0f}", f"rotation error k=3 {errs[base, 3]:.1e}, k=10 {errs[base, 10]:.1e}; "
                     f"slowest period {slowest[base]:,.0f}; mean cos(PE(i), PE(i+32)) {far[base]:.3f}")
    lesson.claim("R_k shifts by k for every k and base (worst error {e:.1e}); with base 100 the slowest pair "
                 "turns once every {p1:,.0f} positions instead of {p0:,.0f}, and positions 32 apart have mean "
                 "cosine {c1:.3f} instead of {c0:.3f}",
                 max(errs.values()) < 1e-12 and far[100.0] < far[10000.0] - 0.2, e=max(errs.values()),
                 p1=slowest[100.0], p0=slowest[10000.0], c1=far[100.0], c0=far[10000.0])


def exercise_3(lesson):
    """Print cos_learned[0, 1], cos_learned[1, 2] and cos_learned[100, 101] (128 positions, as without --small).

    You should see position 0 stand apart: cos(0, 1) ≈ 0.3 against ≈ 0.85 between later neighbours. It
    always holds [CLS], and a learned table, unlike the sinusoids, need not treat every position alike.
    """
    from tinybert.models import BertModel
    real = BertModel.from_pretrained("all-MiniLM-L6-v2")
    learned = np.asarray(real.embeddings.position_embeddings.weight.data[:128], dtype=np.float64)
    unit = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    neighbours = np.sum(unit[:-1] * unit[1:], axis=1)          # cos(i, i+1) for i = 0 … 126
    for i in (0, 1, 100):
        lesson.value(f"cos_learned[{i}, {i + 1}]", float(neighbours[i]))
    lesson.claim("cos(0, 1) = {a:.3f} is below every later pair of neighbours (cos(i, i+1) for i = 1 … 126: "
                 "smallest {lo:.3f}, mean {m:.3f})", neighbours[0] < neighbours[1:].min(),
                 a=float(neighbours[0]), lo=float(neighbours[1:].min()), m=float(neighbours[1:].mean()))
