"""Attention forward+backward on the CPU: the fused Numba kernel against the NumPy reference and
against PyTorch's ``scaled_dot_product_attention``, on the same thread count, in float32.

    python bench/attention.py                 # everything (about 3-5 minutes on 2 cores)
    python bench/attention.py --quick         # the BERT-base shape only
    python bench/attention.py --threads 4 --reps 9

What it prints and saves (bench/out/attention.json, bench/out/attention_bench.png and
attention_memory.png, both also copied to docs/ for the README):

1. B=4, H=12, T=512, D=64 with a padding mask: time of forward+backward for each implementation,
   the ratios fused/torch and numpy/fused (the median over interleaved repeats, so that a noisy
   machine slows all three alike; the ratio of the best times is printed too), and GFLOP/s beside
   this machine's sgemm GFLOP/s (NumPy's BLAS, same threads).
2. A sweep over T = 128 … 4096 (B=1, H=12, D=64, padding mask): time and GFLOP/s.
3. Peak memory beyond inputs and outputs against T (B=1, H=4, D=64), each point measured in a
   fresh process (peak RSS, reset before the call), and the check that at T=8192 the fused
   forward+backward grows peak memory by less than 150 MB (the unfused scores alone are 1 GiB).

FLOPs are counted over the kept (unpadded) keys: 7 matrix products of 2·Tq·Tk_kept·D per head (2 in
the forward, 5 in the backward, which recomputes S) — the same count for every implementation, so
GFLOP/s compare like with like and with sgemm (torch and the reference also compute the padded
scores; the fused kernel skips key blocks that are all padding).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
DOCS_DIR = ROOT / "docs"
IMPLS = ("fused", "numpy", "torch")
LABELS = {"fused": "fused (Numba)", "numpy": "NumPy reference", "torch": "torch SDPA"}
MEMORY_LIMIT_MB = 150


def make_inputs(B, H, T, D, seed=0):
    """q, k, v, dout [B, H, T, D] float32 and a padding mask [B, T]: sequence b has its last
    (b + 1)·T / (4B) keys padded (a quarter of T for the last one), like a batch of varied lengths."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(4))
    mask = np.ones((B, T), dtype=bool)
    for b in range(B):
        mask[b, T - (b + 1) * T // (4 * B):] = False
    return q, k, v, dout, mask


def runner(impl, q, k, v, dout, mask):
    """A function running forward+backward once with ``impl``; it returns every output array."""
    if impl in ("fused", "numpy"):
        from tinybert_kernels import dispatch

        backend = "numba" if impl == "fused" else "numpy"

        def run():
            out, lse = dispatch.attention_forward(q, k, v, mask=mask, backend=backend)
            return (out, lse) + tuple(dispatch.attention_backward(q, k, v, out, lse, dout, mask=mask,
                                                                          backend=backend))
        return run
    import torch

    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tdout = torch.from_numpy(dout)
    tmask = torch.from_numpy(mask)[:, None, None, :]

    def run():
        for t in (tq, tk, tv):
            t.grad = None
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)
        out.backward(tdout)
        return out, tq.grad, tk.grad, tv.grad
    return run


def set_threads(n):
    """The same thread count for Numba's prange, NumPy's BLAS and PyTorch (Numba's pool started by
    tinybert's ``threads.configure``, its threads sleeping between loops, as tinybert runs it)."""
    import torch

    from tinybert_kernels import threads

    torch.set_num_threads(n)
    return threads.configure(n)


def useful_gflop(mask, H, D):
    """7 products of 2·Tq·Tk_kept·D per head, over the kept keys of each sequence. mask: [B, T]."""
    B, T = mask.shape
    return 7 * 2 * H * T * int(mask.sum()) * D / 1e9


def sgemm_gflops(n=2048, reps=5):
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(runs, reps):
    """Times of each run over ``reps`` rounds, the runs interleaved within every round."""
    for run in runs.values():
        run()                                            # warm up (JIT cache load, allocator)
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            gc.collect()
            times[name].append(_timed(run))
    return times


def bert_base(threads, reps):
    B, H, T, D = 4, 12, 512, 64
    q, k, v, dout, mask = make_inputs(B, H, T, D)
    runs = {impl: runner(impl, q, k, v, dout, mask) for impl in IMPLS}
    times = time_interleaved(runs, reps)
    t = {name: np.asarray(ts) for name, ts in times.items()}
    result = {
        "shape": dict(B=B, H=H, T=T, D=D, padding_mask=True, dtype="float32", threads=threads, reps=reps),
        "median_s": {n: float(np.median(ts)) for n, ts in t.items()},
        "best_s": {n: float(ts.min()) for n, ts in t.items()},
        "ratio_fused_over_torch_median": float(np.median(t["fused"] / t["torch"])),
        "ratio_fused_over_torch_best": float(t["fused"].min() / t["torch"].min()),
        "speedup_fused_over_numpy_median": float(np.median(t["numpy"] / t["fused"])),
        "speedup_fused_over_numpy_best": float(t["numpy"].min() / t["fused"].min()),
    }
    gflop = useful_gflop(mask, H, D)
    result["gflops_best"] = {n: gflop / s for n, s in result["best_s"].items()}
    return result


def sweep(threads, reps, lengths):
    rows = []
    for T in lengths:
        q, k, v, dout, mask = make_inputs(1, 12, T, 64)
        impls = IMPLS if T <= 4096 else ("fused", "torch")
        r = reps if T <= 1024 else max(2, reps // 2)
        times = time_interleaved({i: runner(i, q, k, v, dout, mask) for i in impls}, r)
        best = {i: float(min(ts)) for i, ts in times.items()}
        rows.append({"T": T, "best_s": best,
                     "gflops": {i: useful_gflop(mask, 12, 64) / s for i, s in best.items()}})
        print(f"  T={T:5d}  " + "  ".join(f"{i} {best[i] * 1e3:8.1f} ms" for i in impls), flush=True)
        del q, k, v, dout, mask
    return rows


# ------------------------------------------------------------------------------ memory -------

def _status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(impl, T, threads):
    """In a fresh process: peak RSS growth (MB) of one forward+backward beyond inputs and outputs."""
    set_threads(threads)
    small = make_inputs(1, 4, 64, 64)
    runner(impl, *small)()                               # JIT / import allocations happen here
    q, k, v, dout, mask = make_inputs(1, 4, T, 64)
    run = runner(impl, q, k, v, dout, mask)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:        # reset the peak (VmHWM) to the current RSS
        f.write("5")
    base_kb = _status_kb("VmRSS")
    outputs = run()
    peak_kb = _status_kb("VmHWM")
    out_bytes = sum(int(np.prod(a.shape)) * 4 for a in outputs)
    growth_mb = (peak_kb * 1024 - base_kb * 1024 - out_bytes) / 2 ** 20
    print(json.dumps({"impl": impl, "T": T, "growth_mb": growth_mb, "outputs_mb": out_bytes / 2 ** 20}))


def memory_point(impl, T, threads):
    cmd = [sys.executable, __file__, "--memory-child", impl, str(T), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"memory child {impl} T={T} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def memory_sweep(threads, lengths):
    rows = []
    for T in lengths:
        impls = IMPLS if T <= 4096 else ("fused", "torch")
        row = {"T": T, "growth_mb": {}}
        for impl in impls:
            row["growth_mb"][impl] = memory_point(impl, T, threads)["growth_mb"]
        print(f"  T={T:5d}  " + "  ".join(f"{i} {mb:8.1f} MB" for i, mb in row["growth_mb"].items()),
              flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- plots -------

def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    threads = results["threads"]
    colors = {"fused": "tab:blue", "numpy": "tab:orange", "torch": "tab:green"}
    if results.get("sweep"):
        fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(11, 4.2))
        for impl in IMPLS:
            pts = [(r["T"], r["best_s"][impl], r["gflops"][impl]) for r in results["sweep"] if impl in r["best_s"]]
            if pts:
                Ts, secs, gf = zip(*pts)
                ax_t.plot(Ts, np.array(secs) * 1e3, "o-", color=colors[impl], label=LABELS[impl])
                ax_g.plot(Ts, gf, "o-", color=colors[impl], label=LABELS[impl])
        ax_g.axhline(results["sgemm_gflops"], color="gray", ls="--", label=f"sgemm ({results['sgemm_gflops']:.0f})")
        for ax, where in ((ax_t, "upper left"), (ax_g, "lower right")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length T")
            ax.grid(alpha=0.3)
            ax.legend(loc=where)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("forward + backward (ms)")
        ax_g.set_ylabel("GFLOP/s (over kept keys)")
        fig.suptitle(f"Attention forward+backward, float32, B=1 H=12 D=64, padding mask, {threads} threads")
        fig.tight_layout()
        fig.savefig(OUT_DIR / "attention_bench.png", dpi=110)
        shutil.copy(OUT_DIR / "attention_bench.png", DOCS_DIR / "attention_bench.png")
        plt.close(fig)
    if results.get("memory"):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for impl in IMPLS:
            pts = [(r["T"], max(r["growth_mb"][impl], 0.1)) for r in results["memory"] if impl in r["growth_mb"]]
            if pts:
                Ts, mb = zip(*pts)
                ax.plot(Ts, mb, "o-", color=colors[impl], label=LABELS[impl])
        ax.axhline(MEMORY_LIMIT_MB, color="gray", ls="--", label=f"{MEMORY_LIMIT_MB} MB")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("peak memory beyond inputs and outputs (MB)")
        ax.set_title("Attention forward+backward, float32, B=1 H=4 D=64")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT_DIR / "attention_memory.png", dpi=110)
        shutil.copy(OUT_DIR / "attention_memory.png", DOCS_DIR / "attention_memory.png")
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="only the BERT-base shape")
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.threads)
        return 0

    with set_threads(args.threads):
        results = {"threads": args.threads, "sgemm_gflops": sgemm_gflops()}
        print(f"threads {args.threads}; sgemm (NumPy BLAS, 2048², float32): {results['sgemm_gflops']:.0f} GFLOP/s")
        bb = bert_base(args.threads, args.reps)
        results["bert_base"] = bb
        print(f"B=4 H=12 T=512 D=64, padding mask, float32, forward+backward ({args.reps} interleaved repeats):")
        for impl in IMPLS:
            print(f"  {LABELS[impl]:16s} median {bb['median_s'][impl] * 1e3:7.1f} ms   best "
                  f"{bb['best_s'][impl] * 1e3:7.1f} ms   {bb['gflops_best'][impl]:6.1f} GFLOP/s")
        print(f"  fused / torch SDPA time: {bb['ratio_fused_over_torch_median']:.2f} (median of ratios), "
              f"{bb['ratio_fused_over_torch_best']:.2f} (best over best)   [target <= 1.0]")
        print(f"  numpy / fused time:      {bb['speedup_fused_over_numpy_median']:.1f}x (median), "
              f"{bb['speedup_fused_over_numpy_best']:.1f}x (best)   [target >= 3x]")
        if not args.quick:
            print("sweep over T (B=1, H=12, D=64), best times:")
            results["sweep"] = sweep(args.threads, max(3, args.reps // 2), [128, 256, 512, 1024, 2048, 4096])
    if not args.quick:
        print("peak memory beyond inputs and outputs (B=1, H=4, D=64), each in a fresh process:")
        results["memory"] = memory_sweep(args.threads, [512, 1024, 2048, 4096, 8192])
        growth = results["memory"][-1]["growth_mb"]["fused"]
        results["fused_growth_T8192_mb"] = growth
        print(f"  fused at T=8192: {growth:.1f} MB   [target < {MEMORY_LIMIT_MB} MB; "
              f"the unfused scores alone are {8192 * 8192 * 4 * 4 / 2 ** 30:.0f} GiB]")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "attention.json").write_text(json.dumps(results, indent=1))
    plot(results)
    print(f"saved {OUT_DIR / 'attention.json'}" + ("" if args.quick else " and the two plots (also in docs/)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
