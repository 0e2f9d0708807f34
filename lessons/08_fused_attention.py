"""The fused attention kernel: Z = softmax(QKᵀ/√d_k)·V without ever storing the T×T matrix

Lesson 03 built the T×T scores A = QKᵀ/√d_k and weights S = softmax(A). For long sequences those
matrices are the memory bill: B·H·T² numbers per layer. The fused kernel (FlashAttention-2's algorithm, kernels/attention_numba.py) walks over
blocks of keys and keeps, per query row, only a running max m, a running sum l and an accumulator:
the online softmax. We run it by hand on a small example, check that it equals the reference, draw
the tiles, and measure memory and time against T.
"""
import math
import time
import tracemalloc

import numpy as np

from _stepper import Code, Lesson

from tinybert_kernels import dispatch
import tinybert_kernels.attention_numba as numba_kernel
from tinybert_kernels import attention_numpy

from _08_online import online_softmax_row, print_trace

lesson = Lesson("08", "The fused attention kernel", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)

# ------------------------------------------------------------------------------------------------
lesson.step("The reference: build A, then softmax, then S·V",
            "A = QKᵀ/√d_k  [T, T];   S = softmax(A);   Z = S V   (notation of lesson 03)",
            code=Code(attention_numpy.attention_forward, "s = _scores", "out = xp.matmul"),
            article="math.attention", letters=True)
T, d, BK = 12, 4, 4
q, k, v = rng.standard_normal((3, T, d))
A = q @ k.T / math.sqrt(d)
S = np.exp(A - A.max(1, keepdims=True))
S /= S.sum(1, keepdims=True)
z_ref = S @ v
lesson.show("A (all of it)", A)
lesson.show("Z", z_ref)
z_kernel = dispatch.attention_forward(q[None, None], k[None, None], v[None, None], backend="numpy")[0]
lesson.claim("these three lines are the reference kernel: max difference {e:.1e}",
             np.abs(z_kernel[0, 0] - z_ref).max() < 1e-12, e=float(np.abs(z_kernel[0, 0] - z_ref).max()))

# ------------------------------------------------------------------------------------------------
lesson.step("Online softmax, one query row, key blocks of 4",
            """for each key block j:  A_j = q K_jᵀ/√d_k;  m_new = max(m, max A_j);  α = exp(m − m_new)
                       l = α·l + Σ exp(A_j − m_new);   acc = α·acc + exp(A_j − m_new) V_j;   m = m_new
z = acc / l;   lse = m + log l          (d_k, the article's key size, is the head size D; here D = 4)""",
            code=[Code(online_softmax_row, "for j0 in range", "acc = alpha * acc"),
                  Code(numba_kernel._forward_task, "_row_max(S, m, m_new)", "np.dot(P, V_j, PV)")],
            article="math.attention", letters=True)
row = 0
z_online, lse_online, trace = online_softmax_row(q[row], k, v, BK)
print_trace(trace)
lse_ref = float(np.log(np.exp(A[row]).sum()))
rescaled = sum(1 for t_, prev in zip(trace[1:], trace) if t_["m"] > prev["m"])
lesson.claim("the online result equals the softmax over all keys: max |z_online − z_reference| = {e:.1e}, "
             "lse {a:.6f} vs {b:.6f}",
             np.abs(z_online - z_ref[row]).max() < 1e-12 and abs(lse_online - lse_ref) < 1e-12,
             e=float(np.abs(z_online - z_ref[row]).max()), a=lse_online, b=lse_ref)
lesson.say(f"""The loop computes each block's {BK} scores from q and K_j inside the loop (A_j in
online_softmax_row), so the row of {T} scores is never built; that is how the code is written, not a
result, and the demo above still built all of A to have a reference. Look at the table: in
{rescaled} of the {len(trace) - 1} later blocks the maximum grew, and α = exp(m_old − m_new) < 1 rescaled
everything summed so far. The kernel does the same with a [BLOCK_Q, BLOCK_K] tile of scores instead
of one row of 4 (next step: which tiles it computed, in its own record).""")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
blocks = [t_["block"] for t_ in trace]
axes[0].plot(blocks, [t_["m"] for t_ in trace], "o-", label="running max m")
axes[0].plot(blocks, [t_["l"] for t_ in trace], "s-", label="running sum l")
axes[0].set_xticks(blocks)
axes[0].set_xlabel("key block j")
axes[0].set_ylabel("value after block j")
axes[0].set_title(f"online softmax state, query row {row}")
axes[0].legend()
errs = [np.abs(t_["z"] - z_ref[row]).max() for t_ in trace]
axes[1].semilogy(blocks, np.maximum(errs, 1e-17), "o-", color="tab:red")
axes[1].set_xticks(blocks)
axes[1].set_xlabel("last key block seen")
axes[1].set_ylabel("max |acc/l − z_reference|")
axes[1].set_title("the partial result reaches the reference at the last block")
lesson.savefig(fig, "online_softmax")

# ------------------------------------------------------------------------------------------------
lesson.step("Tiles: query blocks × key blocks, as the kernel reports them",
            """tile (i, j) = Q_i K_jᵀ: [BLOCK_Q, BLOCK_K];   causal: the loop stops at the first key block after
every query of block i;   padding: a key block with no kept key is skipped""",
            code=[Code(numba_kernel._forward_task, "if kept_in_block[b, kb] == 0", "tiles[b, h, qb, kb, 1]"),
                  Code(numba_kernel._forward, "tiles = np.zeros", "_forward_serial(*args)")],
            article="math.attention", letters=True)
BQ_, BK_ = numba_kernel.BLOCK_Q, numba_kernel.BLOCK_K
Tt, Dt = 512, 16
nq, nk = Tt // BQ_, Tt // BK_
Qt, Kt, Vt = rng.standard_normal((3, 2, 1, Tt, Dt))
pad = np.ones((2, Tt), bool)
pad[1, 200:] = False                                     # the second sequence has 200 real tokens
lesson.value("tile sizes in the kernel", f"BLOCK_Q = {BQ_}, BLOCK_K = {BK_}")
lesson.value("the batch", f"B = 2, H = 1, T = {Tt}, D = {Dt}; sequence 1 has 200 real tokens, then padding")
# the second path: the scores each sequence needs, from the tile geometry alone (not from the kernel)
i1 = np.minimum(np.arange(1, nq + 1) * BQ_, Tt)                      # one past each query block's last row
geometry = {True: int((BQ_ * np.minimum(Tt, BK_ * ((i1 - 1) // BK_ + 1))).sum()),  # keys up to the block of
            False: Tt * min(Tt, BK_ * -(-200 // BK_))}                  # its last query; keys of real blocks
for causal in (True, False):
    zt, lt, tiles = numba_kernel.attention_forward_tiles(Qt, Kt, Vt, pad, causal)
    zr, _ = dispatch.attention_forward(Qt, Kt, Vt, pad, causal, backend="numpy")
    what, scores = tiles[..., 0], tiles[..., 1]
    count = {name: (what == getattr(numba_kernel, f"TILE_{name.upper()}")).sum(axis=(1, 2, 3))
             for name in ("full", "masked", "padding", "not_visited")}
    for b in range(2):
        lesson.value(f"causal={causal!s:<5} sequence {b}",
                     "  ".join(f"{n.replace('_', ' ')} {int(c[b])}" for n, c in count.items())
                     + f"   scores computed {int(scores[b].sum()):,} of T² = {Tt * Tt:,}")
    if causal:
        state = what[0, 0]
        i_, j_ = np.arange(Tt)[:, None], np.arange(Tt)[None, :]
        visible = j_ <= i_                                       # the pairs causal attention needs
        done = np.isin(state, [numba_kernel.TILE_MASKED, numba_kernel.TILE_FULL])[i_ // BQ_, j_ // BK_]
        lesson.claim("causal, T = {T}, read from the kernel: {f} full tiles, {d} on the diagonal (masked inside), "
                     "{s} never visited ({share:.0%} of the tiles); it computed {c:,} of the T² = {T2:,} scores, "
                     "what the tile geometry gives ({g:,}: each query block's rows × the keys up to the block of "
                     "its last query); yet every pair j ≤ i lies in a tile it computed, and its Z equals the "
                     "reference ({e:.1e})",
                     count["not_visited"][0] > 0 and int(scores[0].sum()) == geometry[True]
                     and not (visible & ~done).any() and np.abs(zt - zr).max() < 1e-12,
                     T=Tt, f=int(count["full"][0]), d=int(count["masked"][0]), s=int(count["not_visited"][0]),
                     share=count["not_visited"][0] / (nq * nk), c=int(scores[0].sum()), T2=Tt * Tt,
                     g=geometry[True], e=float(np.abs(zt - zr).max()))
    else:
        lesson.claim("padding, read from the kernel: of sequence 1's {n} key blocks it skipped {p} (all padding) in "
                     "every query block and computed {c:,} scores, what the geometry gives (T × the keys of the "
                     "blocks holding its 200 real tokens = {g:,}), against T² = {c0:,} for sequence 0; its Z "
                     "equals the reference ({e:.1e})",
                     count["padding"][1] == nq * (nk - -(-200 // BK_)) and count["padding"][0] == 0
                     and int(scores[1].sum()) == geometry[False] and int(scores[0].sum()) == Tt * Tt
                     and np.abs(zt - zr).max() < 1e-12,
                     n=nk, p=int(count["padding"][1]) // nq, c=int(scores[1].sum()), g=geometry[False],
                     c0=int(scores[0].sum()), e=float(np.abs(zt - zr).max()))
lesson.say(f"""How much the kernel holds at once is how it is written, not something this record measures: each
task computes one tile's scores into a buffer allocated at BLOCK_Q·BLOCK_K = {BQ_ * BK_:,} numbers
(S_buf in _forward_task), whatever T; the record counts the scores of each tile it computed (the
largest here: {int(scores.max()):,}), and the reference builds all T² = {Tt * Tt:,} per head.""")
fig, ax = plt.subplots(figsize=(7, 4))
cmap = plt.matplotlib.colors.ListedColormap(["#eeeeee", "#cccccc", "#f4a261", "#2a9d8f"])
ax.imshow(state, cmap=cmap, vmin=0, vmax=3)
names = {numba_kernel.TILE_NOT_VISITED: "never", numba_kernel.TILE_PADDING: "pad",
         numba_kernel.TILE_MASKED: "mask", numba_kernel.TILE_FULL: "full"}
for i in range(nq):
    for j in range(nk):
        ax.text(j, i, names[int(state[i, j])], ha="center", va="center", fontsize=8)
ax.set_xticks(range(nk), [f"{j * BK_}–{(j + 1) * BK_ - 1}" for j in range(nk)], fontsize=7, rotation=45)
ax.set_yticks(range(nq), [f"{i * BQ_}–{(i + 1) * BQ_ - 1}" for i in range(nq)], fontsize=7)
ax.set_xlabel(f"key block (BLOCK_K = {BK_})")
ax.set_ylabel(f"query block (BLOCK_Q = {BQ_})")
ax.set_title(f"causal attention, T = {Tt}: the kernel's record of its tiles", fontsize=10)
fig.tight_layout()
lesson.savefig(fig, "tiles")

# ------------------------------------------------------------------------------------------------
lesson.step("The Numba kernel equals the reference, forward and backward",
            "max |Z_fused − Z_ref|,  max |dQ_fused − dQ_ref|, …   (float64, with padding and causal)",
            code=[Code(numba_kernel._forward), Code(numba_kernel._backward_task, "P = exp(S − lse)")],
            article="math.attention", letters=True)
B, H, Tc, D = 2, 2, 200, 16
Q, K_, V = rng.standard_normal((3, B, H, Tc, D))
mask = np.ones((B, Tc), bool)
mask[1, 150:] = False
dout = rng.standard_normal((B, H, Tc, D))
worst = {}
for causal in (False, True):
    zr, lr_ = dispatch.attention_forward(Q, K_, V, mask, causal, backend="numpy")
    zf, lf = dispatch.attention_forward(Q, K_, V, mask, causal, backend="numba")
    gr = dispatch.attention_backward(Q, K_, V, zr, lr_, dout, mask, causal, backend="numpy")
    gf = dispatch.attention_backward(Q, K_, V, zf, lf, dout, mask, causal, backend="numba")
    kept = np.isfinite(lr_)
    diffs = {"Z": np.abs(zr - zf).max(), "lse": np.abs(lr_[kept] - lf[kept]).max(),
             "dQ": np.abs(gr[0] - gf[0]).max(), "dK": np.abs(gr[1] - gf[1]).max(),
             "dV": np.abs(gr[2] - gf[2]).max()}
    worst[causal] = max(diffs.values())
    lesson.value(f"causal={causal!s:<5}", "  ".join(f"{n} {v:.1e}" for n, v in diffs.items()))
lesson.claim("the tiled Numba kernel equals the reference in float64, forward and backward, with padding and "
             "with a causal mask: worst difference {w:.1e}", max(worst.values()) < 1e-10, w=max(worst.values()))

# ------------------------------------------------------------------------------------------------
lesson.step("Memory and time against T",
            "reference: A and S are B·H·T² numbers each;   fused: a few BLOCK_Q×BLOCK_K tiles per thread, O(T·D) in all",
            code=Code(numba_kernel._forward_task, "S = S_buf[", "P = P_buf["), article="math.attention",
            letters=True)
Ts = [128, 256, 512] if lesson.small else [128, 256, 512, 1024, 2048]
REPEATS = 5 if lesson.small else 7
Bm, Hm, Dm = 1, 4, 32
results = {"numpy": [], "numba": []}
for backend in results:                                 # compile (Numba) and warm up before any timing
    x = rng.standard_normal((3, Bm, Hm, Ts[0], Dm)).astype(np.float32)
    for _ in range(2):
        dispatch.attention_forward(x[0], x[1], x[2], backend=backend)
for Tm in Ts:
    x = rng.standard_normal((3, Bm, Hm, Tm, Dm)).astype(np.float32)
    for backend in results:
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            dispatch.attention_forward(x[0], x[1], x[2], backend=backend)
            times.append(time.perf_counter() - t0)
        tracemalloc.start()                              # memory in a separate call: tracing slows NumPy
        dispatch.attention_forward(x[0], x[1], x[2], backend=backend)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[backend].append((float(np.median(times)), peak, float(np.min(times))))
    r_, f_ = results["numpy"][-1], results["numba"][-1]
    print(f"  T = {Tm:>5}   reference {r_[0] * 1e3:7.2f} ms (min {r_[2] * 1e3:6.2f})  peak {r_[1] / 2**20:7.2f} MiB"
          f"   │  fused {f_[0] * 1e3:7.2f} ms (min {f_[2] * 1e3:6.2f})  peak {f_[1] / 2**20:7.2f} MiB")
lesson.say(f"""(time: median and fastest of {REPEATS} calls, after a warm-up that compiles the kernel; memory:
the peak traced by tracemalloc during one more call.)""")
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for backend, label in (("numpy", "reference (NumPy, builds A and S)"), ("numba", "fused (Numba, online softmax)")):
    axes[0].loglog(Ts, [r[1] / 2**20 for r in results[backend]], "o-", label=label)
    axes[1].loglog(Ts, [r[0] * 1e3 for r in results[backend]], "o-", label=label)
axes[0].loglog(Ts, [Bm * Hm * t * t * 4 / 2**20 for t in Ts], ":", color="gray", label="B·H·T² float32")
axes[0].set_xlabel("sequence length T")
axes[0].set_ylabel("peak extra memory (MiB, tracemalloc)")
axes[0].set_title("memory of one attention forward")
axes[1].set_xlabel("sequence length T")
axes[1].set_ylabel(f"time per forward (ms, median of {REPEATS})")
axes[1].set_title(f"time (B={Bm}, H={Hm}, D={Dm}, float32, this machine, compiled)")
for ax in axes:
    ax.legend(fontsize=8)
lesson.savefig(fig, "memory_time")
t_ratio = Ts[-1] / Ts[0]
ref_growth = results["numpy"][-1][1] / results["numpy"][0][1]
fused_growth = results["numba"][-1][1] / results["numba"][0][1]
mem_ratio = results["numpy"][-1][1] / max(results["numba"][-1][1], 1)
lesson.claim("the reference's memory grows as T²: ×{r:.1f} from T = {t0} to {t1} (T² grows ×{t2:.0f}); what "
             "tracemalloc sees of the fused call (its outputs: Numba's own buffers are not traced) grows ×{f:.1f}, no "
             "faster than T (×{t:.0f}), {m:.0f}× less at T = {t1}",
             ref_growth > 0.5 * t_ratio ** 2 and fused_growth <= t_ratio and mem_ratio > 5,
             r=ref_growth, t0=Ts[0], t1=Ts[-1], t2=t_ratio ** 2, f=fused_growth, t=t_ratio, m=mem_ratio)
lesson.say(f"""What tracemalloc cannot see, the code says: the kernel's score buffers are BLOCK_Q·BLOCK_K =
{BQ_ * BK_:,} numbers per task at every T (step 3), against T² = {Ts[-1] ** 2:,} per head for the
reference at T = {Ts[-1]}.""")
lesson.say("""Timings depend on the machine and its load, so they are shown, not claimed: look at the right
panel for how each curve bends as T doubles. On a busy machine the fused kernel, which runs on
several threads, waits for whichever thread the system paused: a floor of some milliseconds at small
T that the fastest call (min) shows less.""")

lesson.end([
    "The online softmax processes keys block by block with a running max m and sum l, rescaling "
    f"by α = exp(m_old − m_new); its result equals the full softmax (08_online_softmax.png).",
    f"The kernel tiles queries × keys (BLOCK_Q = {BQ_}, BLOCK_K = {BK_}); its own record shows it never visits "
    "the tiles a causal mask hides entirely and skips blocks of padding: the scores it computed are what the "
    "tile geometry gives, and it keeps them in one BLOCK_Q×BLOCK_K buffer (08_tiles.png).",
    f"kernels/attention_numba.py matches the NumPy reference in forward and backward "
    f"(worst difference {max(worst.values()):.1e} in float64, with padding and causal masks).",
    f"Memory of the reference grows as T²; what tracemalloc sees of the fused call (its outputs, not Numba's "
    f"buffers) does not ({mem_ratio:.0f}× less at T = {Ts[-1]}; 08_memory_time.png).",
], try_next=[
    ("In step 2 use key blocks of 3 or 6 (online_softmax_row(q[row], k, v, 3)) instead of 4.",
     "a different table of m, α and l (4 or 2 blocks instead of 3), and the same final z and lse to 1e-12: "
     "the block size changes the order of the work, not the result."),
    ("Work in float32 and make the scores large: Q *= 30, so that some scores pass ln(float32 max) ≈ 88.7; "
     "compare a naive softmax exp(A) / Σ exp(A) with the Numba kernel, both in float32.",
     "the naive softmax overflows (exp gives inf, inf/inf gives NaN rows), while the kernel, whose running "
     "maximum keeps every exp() ≤ 1, stays finite and within 1e-4 of the float64 reference."),
    ("Read the kernel's tile record (attention_forward_tiles) for causal attention at T = 256, 1024 and 4096: "
     "what share of the tiles does it never visit?",
     "(n − 1)/(2n) with n = T/BLOCK_Q query blocks — 25%, 44%, 48% — rising towards one half but never "
     "reaching it, because the tiles on the diagonal are computed and masked inside."),
])
