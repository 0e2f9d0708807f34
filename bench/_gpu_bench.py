"""Fused attention (numba.cuda on CuPy) on a GPU: the tile sweep and the table against torch SDPA.

Run by bench/gpu_check.sh, one subcommand per process:

    python bench/_gpu_bench.py sweep [--quick]   # every tiling in SWEEP, per kernel: TFLOP/s, registers
    python bench/_gpu_bench.py table             # fused vs torch SDPA, float32, BERT-base shapes

``sweep`` times each kernel alone (forward, dK/dV, dQ) with each candidate tiling at one BERT-like
shape per head size, checks its outputs against the default tiling's (a wrong tiling is marked and
never chosen), prints registers and local memory as the GPU's driver reports them, TFLOP/s (FLOPs
the kernel executes), and the fastest tiling of each kernel as a ``CONFIGS`` line to paste into
kernels/attention_cuda_tiled.py.

``table`` prints, per shape, forward and forward+backward times of the fused kernels (through
``tinybert_kernels``, backend "cuda") and of ``torch.nn.functional.scaled_dot_product_attention``,
their ratio and TFLOP/s by the usual nominal count (4·B·H·T²·D for the forward, 3.5× that for
forward + backward). TF32 is off in torch so that both sides compute in true float32.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinybert_kernels import attention_cuda_tiled as tiled  # noqa: E402

T = tiled.Tiles
# The tilings worth timing, per head size and kernel; the first is the default (CONFIGS).
SWEEP = {
    64: {
        "forward": [T(64, 64), T(64, 64, min_blocks=3), T(64, 32), T(128, 64), T(128, 32),
                    T(64, 64, share_kv=True), T(128, 64, tm=8, tn=4), T(64, 128, tm=4, tn=8)],
        "dkdv": [T(64, 64, min_blocks=2), T(64, 64), T(32, 64), T(64, 32), T(128, 64),
                 T(64, 64, tm=2, tn=4)],
        "dq": [T(64, 64, min_blocks=2), T(64, 64), T(64, 32), T(32, 64), T(128, 64)],
    },
    128: {
        "forward": [T(64, 64, share_kv=True, min_blocks=2), T(64, 64, share_kv=True), T(64, 64),
                    T(64, 32, share_kv=True), T(128, 64, tm=8, tn=4, share_kv=True)],
        "dkdv": [T(64, 64), T(32, 64), T(64, 32), T(32, 32)],
        "dq": [T(64, 64), T(64, 32), T(32, 64), T(32, 32)],
    },
    32: {
        "forward": [T(128, 32, min_blocks=2), T(128, 32), T(64, 32), T(64, 64)],
        "dkdv": [T(32, 64, min_blocks=4), T(32, 64), T(64, 64)],
        "dq": [T(64, 32, min_blocks=4), T(64, 32), T(64, 64)],
    },
}
# BERT-like shapes for the sweep: (B, H, T) per head size, hidden size 768.
SWEEP_SHAPES = {64: (16, 12, 512), 128: (16, 6, 512), 32: (16, 24, 512)}
TABLE_SHAPES = [(32, 12, 128, 64), (32, 12, 512, 64), (16, 12, 1024, 64), (8, 12, 2048, 64),
                (8, 12, 4096, 64), (32, 6, 512, 128), (8, 6, 2048, 128)]
FLOPS_PER_ELEMENT = {"forward": 4, "dkdv": 8, "dq": 6}   # FLOPs per (query, key, d) each executes


def gpu_time_ms(fn, reps=10, rounds=3):
    """Median over ``rounds`` of the mean time of ``reps`` calls, by CUDA events (after a warm-up)."""
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(rounds):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / reps)
    return float(np.median(times))


def make_inputs(B, H, Tq, D, dtype="float32", seed=0, pad_fraction=8):
    """q, k, v, dout ~ N(0, 1) on the GPU and a padding mask (the last T/8 keys masked)."""
    import cupy

    rng = cupy.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, Tq, D), dtype=dtype) for _ in range(4))
    mask = cupy.ones((B, Tq), dtype=bool)
    if pad_fraction:
        mask[:, Tq - Tq // pad_fraction:] = False
    return q, k, v, dout, mask


def run_kernel(kernel, tiles, q, k, v, dout, mask, causal=False, dropout_p=0.0, seed=None):
    """The outputs of one kernel run with ``tiles`` (forward: out, lse; dkdv: dk, dv; dq: dq)."""
    kw = dict(mask=mask, causal=causal, dropout_p=dropout_p, dropout_seed=seed)
    if kernel == "forward":
        return tiled.attention_forward(q, k, v, tiles={"forward": tiles}, **kw)
    out, lse = tiled.attention_forward(q, k, v, **kw)
    dq, dk, dv = tiled.attention_backward(q, k, v, out, lse, dout, tiles={kernel: tiles}, **kw)
    return (dk, dv) if kernel == "dkdv" else (dq,)


def _compiled_figures(fn):
    """(registers, local bytes) per thread of the only specialisation of a numba.cuda kernel."""
    try:
        regs = fn.get_regs_per_thread()
        local = fn.get_local_mem_per_thread()
        regs = regs if isinstance(regs, int) else next(iter(regs.values()))
        local = local if isinstance(local, int) else next(iter(local.values()))
        return regs, local
    except Exception:  # noqa: BLE001 - figures are extras; the timing is what matters
        return "?", "?"


def sweep(quick=False):
    import cupy

    best_lines = []
    for D, kernels in SWEEP.items():
        B, H, Tq = SWEEP_SHAPES[D]
        q, k, v, dout, mask = make_inputs(B, H, Tq, D)
        out, lse = tiled.attention_forward(q, k, v, mask=mask)
        calls, Dk, _ = tiled.backward_calls(q, k, v, out, lse, dout, mask)
        fwd = tiled.forward_call(q, k, v, mask)
        print(f"\n== D={D}: B={B} H={H} T={Tq} float32, padding mask (T/8 keys), no dropout", flush=True)
        print(f"{'kernel':8} {'tiles (br, bc, tm, tn, share_kv, min_blocks)':46} {'thr':>4} {'regs':>4} {'local':>5} "
              f"{'shared':>7} {'ms':>8} {'TFLOP/s':>8} {'max |Δ| vs default':>19}")
        for kernel, candidates in kernels.items():
            if quick:
                candidates = candidates[:2]
            flops = FLOPS_PER_ELEMENT[kernel] * B * H * Tq * Tq * D
            reference, results = None, []
            for tiles in candidates:
                label = f"({tiles.br}, {tiles.bc}, {tiles.tm}, {tiles.tn}, {tiles.share_kv}, {tiles.min_blocks})"
                try:
                    tiles.check(D, kernel)
                    got = [cupy.asnumpy(a) for a in run_kernel(kernel, tiles, q, k, v, dout, mask)]
                    if reference is None:
                        reference = got
                    diff = max(float(np.nanmax(np.abs(a - r) / (1 + np.abs(r)))) for a, r in zip(got, reference))
                    same_nan = all(np.array_equal(np.isnan(a), np.isnan(r)) for a, r in zip(got, reference))
                    if kernel == "forward":
                        args, rows, BH, _, _, _ = fwd
                    else:
                        args, rows, BH = calls[kernel]
                    ms = gpu_time_ms(lambda: tiled.launch(kernel, Dk, np.float32, rows, BH, args, tiles))
                    regs, local = _compiled_figures(tiled.build_kernel(kernel, Dk, np.float32, tiles))
                    ok = diff < 1e-4 and same_nan
                    results.append((ms if ok else float("inf"), tiles))
                    print(f"{kernel:8} {label:46} {tiles.threads:4d} {regs!s:>4} {local!s:>5} "
                          f"{tiled.shared_bytes(kernel, D, 'float32', tiles):7d} {ms:8.3f} "
                          f"{flops / ms / 1e9:8.1f} {diff:19.1e}{'' if ok else '  WRONG'}", flush=True)
                except Exception as exc:  # noqa: BLE001 - one failing tiling must not stop the sweep
                    print(f"{kernel:8} {label:46} failed: {type(exc).__name__}: {str(exc)[:150]}", flush=True)
            if results:
                ms, tiles = min(results, key=lambda r: r[0])
                if ms < float("inf"):
                    print(f"{kernel:8} fastest: {tiles}  {flops / ms / 1e9:.1f} TFLOP/s", flush=True)
                    best_lines.append(f"    ({D}, \"float32\") {kernel}: {tiles!r}")
    print("\nfastest tilings (for CONFIGS in kernels/attention_cuda_tiles.py):")
    print("\n".join(best_lines))


def table():
    import cupy
    import torch

    from tinybert_kernels import dispatch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"{'B':>3} {'H':>3} {'T':>5} {'D':>3} | {'fwd ms':>8} {'sdpa':>8} {'ratio':>6} {'TF/s':>6} | "
          f"{'f+b ms':>8} {'sdpa':>8} {'ratio':>6} {'TF/s':>6} | max |fused - sdpa|", flush=True)
    worst_ratio, best_fwd = 0.0, 0.0
    for B, H, Tq, D in TABLE_SHAPES:
        try:
            q, k, v, dout, mask = make_inputs(B, H, Tq, D)
            tq, tk, tv = (torch.from_dlpack(a).requires_grad_() for a in (q, k, v))
            tdout = torch.from_dlpack(dout)
            tmask = torch.from_dlpack(mask)[:, None, None, :]

            def fused_fwd():
                return dispatch.attention_forward(q, k, v, mask=mask, backend="cuda")

            def fused_fwd_bwd():
                out, lse = fused_fwd()
                return dispatch.attention_backward(q, k, v, out, lse, dout, mask=mask, backend="cuda")

            def sdpa_fwd():
                with torch.no_grad():
                    return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)

            def sdpa_fwd_bwd():
                tq.grad = tk.grad = tv.grad = None
                out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)
                out.backward(tdout)

            out, _ = fused_fwd()
            worst = float(cupy.abs(out - cupy.from_dlpack(sdpa_fwd().detach())).max())
            reps = 10 if Tq <= 1024 else 3
            f, s = gpu_time_ms(fused_fwd, reps), gpu_time_ms(sdpa_fwd, reps)
            fb, sb = gpu_time_ms(fused_fwd_bwd, reps), gpu_time_ms(sdpa_fwd_bwd, reps)
            flop = 4 * B * H * Tq * Tq * D
            worst_ratio, best_fwd = max(worst_ratio, fb / sb), max(best_fwd, flop / f / 1e9)
            print(f"{B:3d} {H:3d} {Tq:5d} {D:3d} | {f:8.2f} {s:8.2f} {f / s:6.2f} {flop / f / 1e9:6.1f} | "
                  f"{fb:8.2f} {sb:8.2f} {fb / sb:6.2f} {3.5 * flop / fb / 1e9:6.1f} | {worst:.1e}", flush=True)
            del tq, tk, tv, q, k, v, dout
            torch.cuda.empty_cache()
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception as exc:  # noqa: BLE001 - one failing shape must not stop the table
            print(f"{B:3d} {H:3d} {Tq:5d} {D:3d} | failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    print(f"targets on a Hopper GPU: forward >= 15 TFLOP/s (best here {best_fwd:.1f}), "
          f"fused fwd+bwd <= 2x SDPA (worst here {worst_ratio:.2f}x)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["sweep", "table"])
    parser.add_argument("--quick", action="store_true", help="sweep: only the first two tilings of each kernel")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sweep(args.quick) if args.what == "sweep" else table()
    print(f"({args.what}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
