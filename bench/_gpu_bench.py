"""Fused attention (numba.cuda on CuPy) against torch SDPA on the GPU, float32, BERT-base shapes.

Run by bench/gpu_check.sh. Prints, for each shape, the forward and forward+backward times, the
ratio fused/SDPA and TFLOP/s (nominal: 4·B·H·T²·D for the forward, 3.5× that for forward+backward).
TF32 is switched off in torch so that both sides compute in true float32.
"""
import time

import cupy
import numpy as np
import torch

import tinybert_kernels

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def bench(fn, reps=20):
    fn()
    cupy.cuda.Device().synchronize()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    shapes = [(32, 12, 128, 64), (16, 12, 512, 64), (4, 12, 2048, 64)]
    print(f"{'B':>3} {'H':>3} {'T':>5} {'D':>3} | {'fwd ms':>8} {'sdpa':>8} {'ratio':>6} {'TF/s':>6} | "
          f"{'f+b ms':>8} {'sdpa':>8} {'ratio':>6} {'TF/s':>6}")
    for B, H, T, D in shapes:
        rng = cupy.random.default_rng(0)
        q, k, v, dout = (rng.standard_normal((B, H, T, D), dtype=cupy.float32) for _ in range(4))
        mask = cupy.ones((B, T), dtype=bool)
        mask[:, T - T // 8:] = False                       # a padded tail
        tq, tk, tv = (torch.from_dlpack(a).requires_grad_() for a in (q, k, v))
        tdout = torch.from_dlpack(dout)
        tmask = torch.from_dlpack(mask)[:, None, None, :]

        def fused_fwd():
            return tinybert_kernels.attention_forward(q, k, v, mask=mask, backend="cuda")

        def fused_fwd_bwd():
            out, lse = fused_fwd()
            return tinybert_kernels.attention_backward(q, k, v, out, lse, dout, mask=mask, backend="cuda")

        def sdpa_fwd():
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)

        def sdpa_fwd_bwd():
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)
            out.backward(tdout)

        out, _ = fused_fwd()
        ref = sdpa_fwd()
        worst = float(cupy.abs(out - cupy.from_dlpack(ref.detach())).max())
        f, s = bench(fused_fwd), bench(sdpa_fwd)
        fb, sb = bench(fused_fwd_bwd, reps=10), bench(sdpa_fwd_bwd, reps=10)
        flop = 4 * B * H * T * T * D
        print(f"{B:3d} {H:3d} {T:5d} {D:3d} | {f * 1e3:8.2f} {s * 1e3:8.2f} {f / s:6.2f} {flop / f / 1e12:6.1f} | "
              f"{fb * 1e3:8.2f} {sb * 1e3:8.2f} {fb / sb:6.2f} {3.5 * flop / fb / 1e12:6.1f}"
              f"   (max |fused - sdpa| {worst:.1e})", flush=True)
    print("targets on a Hopper-class GPU: fused/SDPA time <= 2, forward >= 15 TFLOP/s")


if __name__ == "__main__":
    main()
