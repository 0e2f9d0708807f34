"""Is the CUDA attention ready for a GPU? What can be known without one, per kernel × head size × dtype.

Compiles every CUDA attention kernel to PTX for a Hopper GPU (sm_90) with ``numba.cuda.compile_ptx``
(the CUDA toolkit's NVVM, no GPU), runs ``ptxas -arch=sm_90 -v`` on each where the toolkit has it,
and prints registers, stack and spills, shared memory, and what they allow on one H100/H200 SM
(65,536 registers, 228 KB of shared memory, 2,048 threads, 32 blocks): blocks per SM, the resource
that limits them and the occupancy (resident warps / 64). For the tiled kernels it adds the tile
arithmetic: FLOPs per byte of shared-memory traffic and the fewest FMAs any value read from shared
memory feeds (``attention_cuda_tiles.kernel_specs``).

    python bench/gpu_ready.py                   # the table
    python bench/gpu_ready.py --ptx-dir DIR     # also DIR/<kernel>_d<D>_<dtype>.ptx and DIR/kernels.json
    python bench/gpu_ready.py --json            # the rows as JSON (for tests and scripts)

``kernels.json`` gives, for each .ptx file, its entry name, threads per block, dynamic shared memory
in bytes, tiles, grid and Numba signature: what a launcher (cupy.RawModule, cuLaunchKernel) needs.
The simple one-row-per-thread kernels of ``attention_cuda.py`` (rows ``simple_*``, one build for
every D ≤ 128) are listed too, for comparison.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# One H100 / H200 (sm_90) streaming multiprocessor.
SM = {"registers": 65536, "shared_bytes": 228 * 1024, "threads": 2048, "blocks": 32, "warps": 64,
      "reserved_shared_per_block": 1024, "register_unit": 256, "max_registers_per_thread": 255}
HEAD_SIZES = (32, 64, 128)
DTYPES = ("float32", "float64")
TARGETS = {"stack_bytes": 0, "spill_bytes": 0, "occupancy": 0.25, "fmas_per_shared_value": 4}
ABI = ("Numba's: each array argument is passed as (meminfo, parent, nitems, itemsize, data, "
       "shape[ndim], strides[ndim]); scalars as themselves")


def occupancy(threads: int, registers: int, shared_bytes: int) -> dict:
    """Blocks of ``threads`` threads that fit on one SM, what limits them, and the occupancy.

    Registers are allocated per warp in units of 256 (per thread: rounded up to a multiple of 8);
    each block also reserves 1 KB of shared memory on sm_80 and later.
    """
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(registers * 32 / SM["register_unit"]) * SM["register_unit"]
    limits = {
        "registers": (SM["registers"] // (regs_per_warp * warps)) if registers else SM["blocks"],
        "shared": SM["shared_bytes"] // (shared_bytes + SM["reserved_shared_per_block"]),
        "threads": SM["threads"] // threads,
        "blocks": SM["blocks"],
    }
    blocks = min(limits.values())
    limiter = min(limits, key=limits.get)
    return {"blocks_per_sm": blocks, "limited_by": limiter, "occupancy": blocks * warps / SM["warps"]}


PTXAS_PATTERNS = {
    "registers": r"Used (\d+) registers",
    "stack_bytes": r"(\d+) bytes stack frame",
    "spill_store_bytes": r"(\d+) bytes spill stores",
    "spill_load_bytes": r"(\d+) bytes spill loads",
    "static_shared_bytes": r"(\d+) bytes smem",
}


def parse_ptxas(text: str) -> dict:
    """Registers, stack, spills and static shared memory from ``ptxas -v`` output (one kernel)."""
    out = {}
    for key, pattern in PTXAS_PATTERNS.items():
        found = re.findall(pattern, text)
        out[key] = int(found[-1]) if found else 0
    if not re.search(PTXAS_PATTERNS["registers"], text):
        raise ValueError(f"no register count in ptxas output:\n{text}")
    return out


def run_ptxas(ptxas: str, ptx_path: Path) -> dict:
    result = subprocess.run([ptxas, "-arch=sm_90", "-v", str(ptx_path), "-o", os.devnull],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed on {ptx_path.name}: {result.stderr.strip()[-2000:]}")
    return parse_ptxas(result.stderr + result.stdout)


def entry_name(ptx: str) -> str:
    found = re.search(r"\.entry\s+([A-Za-z0-9_$]+)", ptx)
    return found.group(1) if found else ""


def tiled_kernels(dtypes=DTYPES, head_sizes=HEAD_SIZES):
    """(name, D, dtype, ptx thunk, launch facts, tile figures) for every tiled kernel."""
    from tinybert_kernels import attention_cuda_tiled as tiled
    from tinybert_kernels import attention_cuda_tiles as plumbing

    for dtype in dtypes:
        for D in head_sizes:
            for kernel in plumbing.KERNELS:
                tiles = plumbing.CONFIGS[(D, dtype)][kernel]
                spec = plumbing.kernel_specs(kernel, D, dtype, tiles)
                rows = "BC keys" if kernel == "dkdv" else "BR query rows"
                facts = {"threads": spec["threads"], "dynamic_shared_bytes": spec["shared_bytes"],
                         "tiles": {"br": tiles.br, "bc": tiles.bc, "tm": tiles.tm, "tn": tiles.tn,
                                   "share_kv": tiles.share_kv, "min_blocks": tiles.min_blocks},
                         "grid": f"(ceil(T / {tiles.bc if kernel == 'dkdv' else tiles.br}) [{rows}], B·H)",
                         "signature": str(plumbing.signature(kernel, dtype))}
                yield (kernel, D, dtype, lambda k=kernel, d=D, t=dtype: tiled.compile_ptx(k, d, t),
                       facts, spec)


def simple_kernels(dtypes=DTYPES):
    """The one-row-per-thread kernels of attention_cuda.py (one build serves every D ≤ 128)."""
    from numba import types

    from tinybert_kernels import attention_cuda as simple

    for dtype in dtypes:
        real = types.float32 if dtype == "float32" else types.float64
        by_name = {"q": real[:, :, :, ::1], "k": real[:, :, :, ::1], "v": real[:, :, :, ::1],
                   "out": real[:, :, :, ::1], "dout": real[:, :, :, ::1], "dq": real[:, :, :, ::1],
                   "dk": real[:, :, :, ::1], "dv": real[:, :, :, ::1], "lse": real[:, :, ::1],
                   "D": real[:, :, ::1], "keep": types.uint8[:, ::1], "causal": types.boolean,
                   "dropout": types.boolean, "scale": real, "keep_scale": real,
                   "threshold": types.uint64, "key": types.uint64[::1]}
        for name, fn in simple.kernels_for(dtype).items():
            params = fn.py_func.__code__.co_varnames[:fn.py_func.__code__.co_argcount]
            if any(p not in by_name for p in params):
                continue                   # a parameter this table does not know how to type
            sig = types.void(*(by_name[p] for p in params))
            threads = 128 if name == "row_dot" else simple.ROWS_PER_BLOCK

            def thunk(fn=fn, sig=sig):
                from numba import cuda

                return cuda.compile_ptx(fn.py_func, sig, cc=(9, 0))[0]

            facts = {"threads": threads, "dynamic_shared_bytes": 0, "signature": str(sig),
                     "grid": "one thread per row"}
            yield f"simple_{name}", simple.D_MAX, dtype, thunk, facts, None


def collect(ptx_dir: Path | None, ptxas: str | None, dtypes=DTYPES, head_sizes=HEAD_SIZES,
            include_simple=True) -> list:
    """Compile every kernel, write PTX (to ptx_dir or a temporary folder), run ptxas; the rows."""
    rows = []
    work = Path(ptx_dir) if ptx_dir else Path(tempfile.mkdtemp(prefix="gpu_ready_"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = {}
    sources = list(tiled_kernels(dtypes, head_sizes))
    if include_simple:
        sources += list(simple_kernels(dtypes))
    try:
        for name, D, dtype, thunk, facts, spec in sources:
            row = {"kernel": name, "D": D, "dtype": dtype, **facts}
            try:
                ptx = thunk()
            except Exception as exc:  # noqa: BLE001 - report the kernel and go on with the others
                row["error"] = f"compile: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                rows.append(row)
                continue
            path = work / f"{name}_d{D}_{dtype}.ptx"
            path.write_text(ptx)
            row["file"] = path.name
            row["entry"] = entry_name(ptx)
            manifest[path.name] = {k: row[k] for k in ("kernel", "D", "dtype", "entry", "threads",
                                                      "dynamic_shared_bytes", "grid", "signature")
                                   if k in row}
            manifest[path.name]["abi"] = ABI
            if "tiles" in row:
                manifest[path.name]["tiles"] = row["tiles"]
            if spec is not None:
                row["flops_per_shared_byte"] = spec["flops_per_shared_byte"]
                row["fmas_per_shared_value"] = spec["min_fmas_per_shared_value"]
            if ptxas:
                try:
                    row.update(run_ptxas(ptxas, path))
                    row.update(occupancy(row["threads"], row["registers"],
                                         row["static_shared_bytes"] + row["dynamic_shared_bytes"]))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"ptxas: {exc}"
            rows.append(row)
        if ptx_dir:
            (work / "kernels.json").write_text(json.dumps(manifest, indent=1) + "\n")
    finally:
        if not ptx_dir:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def meets_targets(row: dict) -> list:
    """What a float32 tiled kernel's row misses of the issue's targets (empty: all met)."""
    missed = []
    if row.get("stack_bytes", 0) > TARGETS["stack_bytes"]:
        missed.append(f"stack {row['stack_bytes']} B")
    if row.get("spill_store_bytes", 0) + row.get("spill_load_bytes", 0) > TARGETS["spill_bytes"]:
        missed.append("spills")
    if "occupancy" in row and row["occupancy"] < TARGETS["occupancy"]:
        missed.append(f"occupancy {row['occupancy']:.1%}")
    if row.get("fmas_per_shared_value", 99) < TARGETS["fmas_per_shared_value"]:
        missed.append(f"{row['fmas_per_shared_value']} FMAs per shared value")
    return missed


def markdown(rows: list, with_ptxas: bool) -> str:
    head = ["kernel", "D", "dtype", "threads", "registers", "stack B", "spills B", "shared B",
            "blocks/SM (limit)", "occupancy", "FMAs per shared value", "FLOPs per shared byte"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if "error" in r and "registers" not in r:
            lines.append(f"| {r['kernel']} | {r['D']} | {r['dtype']} | {r['threads']} | "
                         f"{r['error']} |" + " |" * (len(head) - 5))
            continue
        shared = r.get("static_shared_bytes", 0) + r["dynamic_shared_bytes"]
        cells = [r["kernel"], r["D"] if not r["kernel"].startswith("simple_") else f"≤{r['D']}",
                 r["dtype"], r["threads"]]
        if with_ptxas and "registers" in r:
            cells += [r["registers"], r["stack_bytes"],
                      f"{r['spill_store_bytes']}/{r['spill_load_bytes']}", f"{shared:,}",
                      f"{r['blocks_per_sm']} ({r['limited_by']})", f"{r['occupancy']:.1%}"]
        else:
            cells += ["–", "–", "–", f"{shared:,}", "–", "–"]
        cells += [r.get("fmas_per_shared_value", "1" if r["kernel"] != "simple_row_dot" else "–"),
                  f"{r['flops_per_shared_byte']:.2f}" if "flops_per_shared_byte" in r else "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ptx-dir", type=Path, help="write <kernel>_d<D>_<dtype>.ptx and kernels.json here")
    parser.add_argument("--ptxas", default=shutil.which("ptxas"), help="ptxas to run (default: on PATH)")
    parser.add_argument("--dtype", choices=DTYPES, action="append", help="only this dtype (repeatable)")
    parser.add_argument("--head-size", type=int, choices=HEAD_SIZES, action="append",
                        help="only this head size (repeatable)")
    parser.add_argument("--no-simple", action="store_true", help="leave out attention_cuda.py's kernels")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        parser.error("NUMBA_ENABLE_CUDASIM=1: compile_ptx needs the real CUDA target; unset it")
    try:
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
    except Exception as exc:  # noqa: BLE001
        print(f"cannot compile PTX here: the CUDA toolkit's NVVM was not found ({exc})", file=sys.stderr)
        return 2
    rows = collect(args.ptx_dir, args.ptxas, tuple(args.dtype or DTYPES),
                   tuple(args.head_size or HEAD_SIZES), include_simple=not args.no_simple)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(markdown(rows, with_ptxas=bool(args.ptxas)))
    if not args.ptxas:
        print("\nptxas not found (CUDA toolkit): registers, stack, spills and occupancy are not known here")
    fp32 = [r for r in rows if r["dtype"] == "float32" and not r["kernel"].startswith("simple_")]
    misses = {f"{r['kernel']} D={r['D']}": meets_targets(r) for r in fp32}
    failing = {k: v for k, v in misses.items() if v}
    print(f"\nSM model: H100/H200 (sm_90), {SM['registers']:,} registers, {SM['shared_bytes'] // 1024} KB shared, "
          f"{SM['threads']:,} threads, {SM['blocks']} blocks; FLOPs per shared byte counts every "
          "load from and store to shared memory of one tile step")
    print("float32 targets (0 stack, 0 spills, occupancy ≥ 25%, ≥ 4 FMAs per shared value): "
          + ("all met" if not failing else "missed by " + "; ".join(f"{k}: {', '.join(v)}"
                                                                     for k, v in failing.items())))
    if args.ptx_dir:
        print(f"PTX and kernels.json written to {args.ptx_dir}")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"error: {r['kernel']} D={r['D']} {r['dtype']}: {r['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
