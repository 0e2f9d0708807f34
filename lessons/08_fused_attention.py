"""The fused attention kernel: S = softmax(QKᵀ/√d_k) without ever storing S

Lesson 03 built the T×T matrix S. For long sequences that matrix is the memory bill: B·H·T² numbers
per layer. The fused kernel (FlashAttention-2's algorithm, kernels/attention_numba.py) walks over
blocks of keys and keeps, per query row, only a running max m, a running sum l and an accumulator:
the online softmax. We run it by hand on a small example, check that it equals the reference, draw
the tiles, and measure memory and time against T.
"""
import math
import time
import tracemalloc

import numpy as np

from _stepper import Lesson

import tinybert_kernels
from tinybert_kernels import attention_numpy

lesson = Lesson("08", "The fused attention kernel", __doc__)
plt = lesson.plt
rng = np.random.default_rng(lesson.seed)

# ------------------------------------------------------------------------------------------------
lesson.step("The reference: build S, then softmax, then S·V",
            "S = QKᵀ/√d_k  [T, T];   P = softmax(S);   Z = P V", code=attention_numpy.attention_forward)
T, d, BK = 12, 4, 4
q, k, v = rng.standard_normal((3, T, d))
s = q @ k.T / math.sqrt(d)
p = np.exp(s - s.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
z_ref = p @ v
lesson.show("S (all of it)", s)
lesson.show("Z", z_ref)

# ------------------------------------------------------------------------------------------------
lesson.step("Online softmax, one query row, key blocks of 4",
            """for each key block j:  m_new = max(m, max_j s);  α = exp(m − m_new)
                       l = α·l + Σ exp(s_j − m_new);   acc = α·acc + exp(s_j − m_new) V_j;   m = m_new
z = acc / l;   lse = m + log l""")
row = 0
m, l, acc = -np.inf, 0.0, np.zeros(d)
trace = []
print(f"  {'block':>5} {'keys':>7} {'max s_j':>8} {'m':>8} {'α':>8} {'l':>8}")
for j0 in range(0, T, BK):
    sj = s[row, j0:j0 + BK]
    m_new = max(m, sj.max())
    alpha = math.exp(m - m_new) if np.isfinite(m) else 0.0
    e = np.exp(sj - m_new)
    l = alpha * l + e.sum()
    acc = alpha * acc + e @ v[j0:j0 + BK]
    m = m_new
    trace.append((j0 // BK, m, l, acc / l))
    print(f"  {j0 // BK:>5} {j0:>3}–{j0 + BK - 1:<3} {sj.max():8.3f} {m:8.3f} {alpha:8.3f} {l:8.3f}")
z_online = acc / l
lesson.value("max |z_online − z_reference| for this row", float(np.abs(z_online - z_ref[row]).max()))
lesson.value("lse = m + log l", m + math.log(l), f"reference log Σ exp(s) = {np.log(np.exp(s[row]).sum()):.6f}")
lesson.say("""When a later block brings a bigger score, α = exp(m_old − m_new) < 1 rescales everything
summed so far, so the result is exactly the softmax over all keys — but only one block of scores
existed at a time.""")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
blocks = [t[0] for t in trace]
axes[0].plot(blocks, [t[1] for t in trace], "o-", label="running max m")
axes[0].plot(blocks, [t[2] for t in trace], "s-", label="running sum l")
axes[0].set_xticks(blocks)
axes[0].set_xlabel("key block j")
axes[0].set_ylabel("value after block j")
axes[0].set_title(f"online softmax state, query row {row}")
axes[0].legend()
errs = [np.abs(t[3] - z_ref[row]).max() for t in trace]
axes[1].semilogy(blocks, np.maximum(errs, 1e-17), "o-", color="tab:red")
axes[1].set_xticks(blocks)
axes[1].set_xlabel("last key block seen")
axes[1].set_ylabel("max |acc/l − z_reference|")
axes[1].set_title("the partial result reaches the reference at the last block")
lesson.savefig(fig, "online_softmax")

# ------------------------------------------------------------------------------------------------
lesson.step("Tiles: query blocks × key blocks (and what causal masking skips)",
            """tile (i, j) = Q_i K_jᵀ: [BQ, BK];   causal: tile skipped when every key is after every query""")
import tinybert_kernels.attention_numba as numba_kernel  # noqa: E402

BQ_, BK_ = numba_kernel.BLOCK_Q, numba_kernel.BLOCK_K
Tt = 512
nq, nk = Tt // BQ_, Tt // BK_
state = np.zeros((nq, nk))
for i in range(nq):
    for j in range(nk):
        q_last, k_first, k_last = (i + 1) * BQ_ - 1, j * BK_, (j + 1) * BK_ - 1
        state[i, j] = 0 if k_first > q_last else (1 if k_last > i * BQ_ else 2)
lesson.value("tile sizes in the kernel", f"BLOCK_Q = {BQ_}, BLOCK_K = {BK_}")
lesson.value(f"causal, T = {Tt}", f"{int((state == 2).sum())} full tiles, {int((state == 1).sum())} "
                                  f"on the diagonal (masked inside), {int((state == 0).sum())} skipped")
fig, ax = plt.subplots(figsize=(5.5, 5))
cmap = plt.matplotlib.colors.ListedColormap(["#eeeeee", "#f4a261", "#2a9d8f"])
ax.imshow(state, cmap=cmap, vmin=0, vmax=2)
for i in range(nq):
    for j in range(nk):
        ax.text(j, i, ["skip", "mask", "full"][int(state[i, j])], ha="center", va="center", fontsize=8)
ax.set_xticks(range(nk), [f"{j * BK_}–{(j + 1) * BK_ - 1}" for j in range(nk)], fontsize=7)
ax.set_yticks(range(nq), [f"{i * BQ_}–{(i + 1) * BQ_ - 1}" for i in range(nq)], fontsize=7)
ax.set_xlabel(f"key block (BLOCK_K = {BK_})")
ax.set_ylabel(f"query block (BLOCK_Q = {BQ_})")
ax.set_title(f"causal attention, T = {Tt}: tiles the kernel computes")
lesson.savefig(fig, "tiles")

# ------------------------------------------------------------------------------------------------
lesson.step("The Numba kernel equals the reference, forward and backward",
            "max |Z_fused − Z_ref|,  max |dQ_fused − dQ_ref|, …   (float64, with padding and causal)",
            code=[numba_kernel.attention_forward, numba_kernel.attention_backward])
B, H, Tc, D = 2, 2, 200, 16
Q, K_, V = rng.standard_normal((3, B, H, Tc, D))
mask = np.ones((B, Tc), bool)
mask[1, 150:] = False
dout = rng.standard_normal((B, H, Tc, D))
worst = {}
for causal in (False, True):
    zr, lr_ = tinybert_kernels.attention_forward(Q, K_, V, mask, causal, backend="numpy")
    zf, lf = tinybert_kernels.attention_forward(Q, K_, V, mask, causal, backend="numba")
    gr = tinybert_kernels.attention_backward(Q, K_, V, zr, lr_, dout, mask, causal, backend="numpy")
    gf = tinybert_kernels.attention_backward(Q, K_, V, zf, lf, dout, mask, causal, backend="numba")
    kept = np.isfinite(lr_)
    diffs = {"Z": np.abs(zr - zf).max(), "lse": np.abs(lr_[kept] - lf[kept]).max(),
             "dQ": np.abs(gr[0] - gf[0]).max(), "dK": np.abs(gr[1] - gf[1]).max(),
             "dV": np.abs(gr[2] - gf[2]).max()}
    worst[causal] = max(diffs.values())
    lesson.value(f"causal={causal!s:<5}", "  ".join(f"{n} {v:.1e}" for n, v in diffs.items()))

# ------------------------------------------------------------------------------------------------
lesson.step("Memory and time against T",
            "reference: P is B·H·T² numbers;   fused: a few BQ×BK tiles per thread, O(T·d) in all")
Ts = [128, 256, 512] if lesson.small else [128, 256, 512, 1024, 2048]
Bm, Hm, Dm = 1, 4, 32
results = {"numpy": [], "numba": []}
for Tm in Ts:
    x = rng.standard_normal((3, Bm, Hm, Tm, Dm)).astype(np.float32)
    for backend in results:
        tinybert_kernels.attention_forward(x[0], x[1], x[2], backend=backend)       # warm-up / compile
        tracemalloc.start()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            tinybert_kernels.attention_forward(x[0], x[1], x[2], backend=backend)
        dt = (time.perf_counter() - t0) / reps
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[backend].append((dt, peak))
    print(f"  T = {Tm:>5}   reference {results['numpy'][-1][0] * 1e3:7.2f} ms  peak {results['numpy'][-1][1] / 2**20:7.2f} MiB"
          f"   │  fused {results['numba'][-1][0] * 1e3:7.2f} ms  peak {results['numba'][-1][1] / 2**20:7.2f} MiB")
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for backend, label in (("numpy", "reference (NumPy, builds S)"), ("numba", "fused (Numba, online softmax)")):
    axes[0].loglog(Ts, [r[1] / 2**20 for r in results[backend]], "o-", label=label)
    axes[1].loglog(Ts, [r[0] * 1e3 for r in results[backend]], "o-", label=label)
axes[0].loglog(Ts, [Bm * Hm * t * t * 4 / 2**20 for t in Ts], ":", color="gray", label="B·H·T² float32")
axes[0].set_xlabel("sequence length T")
axes[0].set_ylabel("peak extra memory (MiB, tracemalloc)")
axes[0].set_title("memory of one attention forward")
axes[1].set_xlabel("sequence length T")
axes[1].set_ylabel("time per forward (ms)")
axes[1].set_title(f"time (B={Bm}, H={Hm}, d={Dm}, float32, this machine)")
for ax in axes:
    ax.legend(fontsize=8)
lesson.savefig(fig, "memory_time")
mem_ratio = results["numpy"][-1][1] / max(results["numba"][-1][1], 1)
lesson.say(f"""The reference's memory grows as T² (it holds S and P); the fused kernel's stays at its
inputs and outputs — at T = {Ts[-1]} it used {mem_ratio:.0f}× less. Timings depend on the machine
and its load; they are measured, not promised.""")

lesson.end([
    "The online softmax processes keys block by block with a running max m and sum l, rescaling "
    f"by α = exp(m_old − m_new); its result equals the full softmax (08_online_softmax.png).",
    f"The kernel tiles queries × keys (BLOCK_Q = {BQ_}, BLOCK_K = {BK_}) and skips tiles a causal mask "
    "hides entirely (08_tiles.png).",
    f"kernels/attention_numba.py matches the NumPy reference in forward and backward "
    f"(worst difference {max(worst.values()):.1e} in float64, with padding and causal masks).",
    f"Memory of the reference grows as T²; the fused kernel's does not ({mem_ratio:.0f}× less at T = {Ts[-1]}; "
    "08_memory_time.png).",
])
