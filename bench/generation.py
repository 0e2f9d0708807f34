"""Text generation on the CPU: tokens per second with and without the KV cache, and HF transformers'
BertLMHeadModel.generate (its own cache, PyTorch) on the same weights, in the same run.

    python bench/generation.py              # 64 and 512 new tokens (about 6 minutes on 2 cores: 512 uncached is slow)
    python bench/generation.py --reps 5 --threads 1

A small decoder (H=128, 4 heads, 2 layers, vocab 1000, float32), batch 1, an 8-token prompt, greedy.
Each configuration is timed ``reps`` times, interleaved (ours cached, ours uncached, HF), and the
median is reported; the speed-up of the cache is uncached time / cached time. Without the cache step
t runs all 8 + t positions again (the work grows with the square of the length); with it, one.
Writes bench/out/generation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 512])
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import tinybert

    config = tinybert.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=512, max_position_embeddings=8 + max(args.lengths),
                                 is_decoder=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = tinybert.BertLMHeadModel(config, seed=0).eval()
    prompt = np.random.default_rng(0).integers(1, 1000, (1, 8))
    theirs = None
    try:
        import torch
        import transformers
        torch.set_num_threads(args.threads)
        folder = tempfile.mkdtemp()
        ours.save_pretrained(folder)
        theirs = transformers.BertLMHeadModel.from_pretrained(folder).eval()
    except ImportError:
        print("torch/transformers not installed: HF column skipped")

    def run(kind, n):
        t0 = time.perf_counter()
        if kind == "hf":
            with torch.no_grad():
                out = theirs.generate(torch.tensor(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      use_cache=True, pad_token_id=0).numpy()
        else:
            out = ours.generate(prompt, n, use_cache=(kind == "cached"))
        return time.perf_counter() - t0, out

    results = {}
    for n in args.lengths:
        kinds = ["cached", "uncached"] + (["hf"] if theirs is not None else [])
        times = {k: [] for k in kinds}
        outs = {}
        for _ in range(args.reps):
            for k in kinds:
                dt, outs[k] = run(k, n)
                times[k].append(dt)
        med = {k: float(np.median(v)) for k, v in times.items()}
        row = {f"{k}_tokens_per_s": n / med[k] for k in kinds}
        row["cache_speedup"] = med["uncached"] / med["cached"]
        row["cached_equals_uncached"] = bool(np.array_equal(outs["cached"], outs["uncached"]))
        if theirs is not None:
            row["ours_cached_over_hf_time"] = med["cached"] / med["hf"]
            row["greedy_equals_hf"] = bool(np.array_equal(outs["cached"], outs["hf"]))
        results[n] = row
        print(f"{n:4d} new tokens: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in row.items()))
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "generation.json").write_text(json.dumps({"threads": args.threads, "reps": args.reps,
                                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
