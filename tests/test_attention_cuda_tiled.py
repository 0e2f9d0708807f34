"""The tiled CUDA attention kernels (kernels/attention_cuda_tiled.py, tiles and PTX in
kernels/attention_cuda_tiles.py), four ways:

1. under Numba's CUDA simulator, on a machine without a GPU: tests/_cudasim_attention_tiled.py, in
   two processes of their own (small tiles over many cases; the production tiles of each head size),
   started when this module starts so that they run while the PTX tests compile;
2. compiled to PTX for a Hopper GPU (sm_90) for each kernel, head size and dtype, and assembled by
   ``ptxas -v`` where the CUDA toolkit has it: 0 bytes of stack and spills for float32, the
   occupancy and FMAs per shared-memory value of the issue's targets (through bench/gpu_ready.py,
   whose parsing and occupancy arithmetic are checked against the figures of the simple kernels);
3. the tiling rules, the shared-memory budgets and the errors, in plain Python;
4. on a real GPU with CuPy arrays, through the dispatcher, against the NumPy reference — skipped,
   with the reason, when there is none (bench/gpu_check.sh runs them there, and its tile sweep
   checks every tiling it times against the default one).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_kernels_cudasim import GPU_REASON, _nvvm_missing_reason
from tinybert_kernels import attention_cuda_tiled as tiled
from tinybert_kernels import attention_cuda_tiles as plumbing
from tinybert_kernels import attention_numpy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIM_GROUPS = {"small": 18, "production": 3}       # group -> lines it prints on success
PTXAS = shutil.which("ptxas")


def _load_bench(name):
    """A script of bench/ as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_ready = _load_bench("gpu_ready")


@pytest.fixture(scope="module", autouse=True)
def simulator_runs(request):
    """The simulator groups this session selected, started at once when the module starts (they
    take a minute; the PTX tests run meanwhile)."""
    selected = {item.callspec.params["group"] for item in request.session.items
                if item.originalname == "test_tiled_kernels_under_the_simulator"}
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    runs = {group: subprocess.Popen([sys.executable, str(HERE / "_cudasim_attention_tiled.py"), group],
                                    env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            for group in SIM_GROUPS if group in selected}
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
            run.communicate()


# ------------------------------------------------------------------------------ tiling rules ----

@pytest.mark.parametrize("configs", [plumbing.CONFIGS, plumbing.SMALL_CONFIGS], ids=["CONFIGS", "SMALL"])
def test_every_configured_tiling_fits(configs):
    for (D, dtype), kernels in configs.items():
        for kernel, tiles in kernels.items():
            tiles.check(D, kernel)
            nbytes = plumbing.shared_bytes(kernel, D, dtype, tiles)
            assert nbytes <= plumbing.SM_SHARED_LIMIT, (D, dtype, kernel, nbytes)
            if configs is plumbing.SMALL_CONFIGS:
                assert nbytes <= plumbing.STATIC_SHARED_LIMIT, (D, dtype, kernel, nbytes)


def test_every_swept_tiling_fits():
    """bench/gpu_check.sh times these on a GPU (and checks each against the default tiling there)."""
    sweep = _load_bench("_gpu_bench").SWEEP
    assert sorted(sweep) == sorted(plumbing.HEAD_SIZES)
    for D, kernels in sweep.items():
        for kernel, candidates in kernels.items():
            assert candidates[0] == plumbing.CONFIGS[(D, "float32")][kernel], (D, kernel)
            assert len(set(candidates)) == len(candidates), (D, kernel)
            for tiles in candidates:
                tiles.check(D, kernel)
                assert plumbing.shared_bytes(kernel, D, "float32", tiles) <= plumbing.SM_SHARED_LIMIT, tiles


def test_float32_tiles_feed_every_shared_value_to_four_fmas():
    for D in plumbing.HEAD_SIZES:
        for kernel, tiles in plumbing.CONFIGS[(D, "float32")].items():
            spec = plumbing.kernel_specs(kernel, D, "float32", tiles)
            assert spec["min_fmas_per_shared_value"] >= 4, (kernel, D, spec)
            assert spec["threads"] == tiles.threads >= 128


def test_shared_layout_is_the_sum_of_its_tiles():
    t = plumbing.Tiles(64, 64)
    lay = plumbing.shared_layout("forward", 64, t)
    # Q, K, V rows padded to 65; P rows to 64 + 16; the row maxima 64 × 17
    assert lay["size"] == 3 * 64 * 65 + 64 * 80 + 64 * 17
    shared = plumbing.shared_layout("forward", 64, plumbing.Tiles(64, 64, share_kv=True))
    assert shared["V"] == shared["K"] and shared["size"] == lay["size"] - 64 * 65
    assert plumbing.shared_bytes("forward", 64, "float64", t) == 8 * lay["size"]


def test_tilings_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="do not fit head size D=64 in the forward kernel"):
        plumbing.Tiles(64, 48).check(64, "forward")             # 12 thread columns: not a power of two
    with pytest.raises(ValueError, match="in the dq kernel"):
        plumbing.Tiles(64, 64, share_kv=True).check(64, "dq")   # only the forward shares K and V
    with pytest.raises(ValueError, match="in the dkdv kernel"):
        plumbing.Tiles(8, 8, 2, 2).check(128, "dkdv")           # 16 threads cannot cover 32 columns
    with pytest.raises(ValueError, match="kernel='dv'"):
        plumbing.shared_layout("dv", 64, plumbing.Tiles(64, 64))


def test_bad_arguments_are_clear_errors():
    q = np.zeros((1, 1, 4, 129), dtype=np.float32)
    with pytest.raises(ValueError, match="head size D=129 is larger than the CUDA kernels' largest, 128"):
        tiled.attention_forward(q, q, q)
    q = np.zeros((1, 1, 4, 64), dtype=np.float32)
    with pytest.raises(ValueError, match=r"dropout_p=1.0 must be in \[0, 1\)"):
        tiled.attention_forward(q, q, q, dropout_p=1.0, dropout_seed=1)
    with pytest.raises(TypeError, match="dropout_p=0.5 needs dropout_seed"):
        tiled.attention_forward(q, q, q, dropout_p=0.5)
    with pytest.raises(ValueError, match="dropout_offset=-2: expected an integer >= 0"):
        tiled.attention_forward(q, q, q, dropout_p=0.5, dropout_seed=1, dropout_offset=-2)
    many = np.lib.stride_tricks.as_strided(q, shape=(1, 65536, 4, 64), strides=(0, 0) + q.strides[2:])
    with pytest.raises(ValueError, match="at most 65,535"):
        tiled.attention_forward(many, many, many)


# ------------------------------------------------- bench/gpu_ready.py: parsing and occupancy ----

def test_ptxas_report_and_occupancy_arithmetic():
    """The issue's own figures for the simple forward kernel: 80 registers, 1,152 bytes of stack,
    64 threads and ~33 KB of shared memory: 6 blocks per SM (shared memory), 18.75%."""
    text = ("ptxas info    : Compiling entry function 'fwd' for 'sm_90'\n"
            "ptxas info    : Function properties for fwd\n"
            "    1152 bytes stack frame, 0 bytes spill stores, 8 bytes spill loads\n"
            "ptxas info    : Used 80 registers, used 1 barriers, 32896 bytes smem, 472 bytes cmem[0]\n")
    got = gpu_ready.parse_ptxas(text)
    assert got == {"registers": 80, "stack_bytes": 1152, "spill_store_bytes": 0,
                   "spill_load_bytes": 8, "static_shared_bytes": 32896}
    occ = gpu_ready.occupancy(64, 80, 32896)
    assert (occ["blocks_per_sm"], occ["limited_by"], occ["occupancy"]) == (6, "shared", 0.1875)
    # 256 threads at 85 registers round up to 88 per thread: 2 blocks (registers); at 64, 4 blocks
    assert gpu_ready.occupancy(256, 85, 1000)["blocks_per_sm"] == 2
    assert gpu_ready.occupancy(256, 64, 1000) == {"blocks_per_sm": 4, "limited_by": "registers",
                                                  "occupancy": 0.5}
    assert gpu_ready.occupancy(1024, 16, 0)["limited_by"] == "threads"
    with pytest.raises(ValueError, match="no register count"):
        gpu_ready.parse_ptxas("ptxas fatal   : Unresolved extern function")


# ------------------------------------------------------------------------------------ PTX ------

def _f64_instructions(ptx):
    return sorted(set(re.findall(r"\b(?:fma|mul|add|sub|div|ex2|lg2|max|min)\.[a-z.]*f64\b", ptx)))


@pytest.mark.parametrize("D", plumbing.HEAD_SIZES)
def test_float32_kernels_compile_for_sm90_without_stack_or_spills(D, tmp_path):
    reason = _nvvm_missing_reason()
    if reason:
        pytest.skip(reason)
    rows = gpu_ready.collect(tmp_path, PTXAS, dtypes=("float32",), head_sizes=(D,), include_simple=False)
    manifest = json.loads((tmp_path / "kernels.json").read_text())
    assert sorted(manifest) == [f"{k}_d{D}_float32.ptx" for k in sorted(plumbing.KERNELS)]
    for row in rows:
        assert "error" not in row, row
        ptx = (tmp_path / row["file"]).read_text()
        assert ".target sm_90" in ptx and ".extern .shared" in ptx, row["kernel"]
        assert "atom." not in ptx, f"{row['kernel']}: the kernels add no gradient with atomics"
        assert not _f64_instructions(ptx), f"{row['kernel']} computes in float64: {_f64_instructions(ptx)}"
        entry = manifest[row["file"]]
        tiles = plumbing.CONFIGS[(D, "float32")][row["kernel"]]
        assert entry["threads"] == tiles.threads and entry["entry"] in ptx
        assert (f".minnctapersm {tiles.min_blocks}" in ptx) == bool(tiles.min_blocks), row["kernel"]
        assert entry["dynamic_shared_bytes"] == plumbing.shared_bytes(row["kernel"], D, "float32", tiles)
    if PTXAS is None:
        pytest.skip("ptxas (CUDA toolkit) not found: PTX compiled, registers/stack/spills not measured")
    for row in rows:
        print(f"{row['kernel']} D={D}: {row['registers']} registers, {row['stack_bytes']} B stack, "
              f"{row['blocks_per_sm']} blocks/SM ({row['limited_by']}), {row['occupancy']:.1%}")
        assert row["stack_bytes"] == 0 and row["spill_store_bytes"] == row["spill_load_bytes"] == 0, row
        # the 25% holds for every float32 kernel but the D = 128 backward, whose four
        # [64, 128] operand tiles need 132 KB of shared memory: one 256-thread block per SM
        wanted = 0.125 if (D == 128 and row["kernel"] != "forward") else 0.25
        assert row["occupancy"] >= wanted, row


@pytest.mark.parametrize("D", plumbing.HEAD_SIZES)
def test_float64_kernels_compile_for_sm90(D, tmp_path):
    reason = _nvvm_missing_reason()
    if reason:
        pytest.skip(reason)
    rows = gpu_ready.collect(tmp_path, PTXAS, dtypes=("float64",), head_sizes=(D,), include_simple=False)
    for row in rows:
        assert "error" not in row, row
        ptx = (tmp_path / row["file"]).read_text()
        assert ".target sm_90" in ptx and "atom." not in ptx and "fma.rn.f64" in ptx, row["kernel"]


def test_device_function_workaround_restores_numba():
    import numba.cuda.dispatcher as dispatcher

    before = getattr(dispatcher, "get_current_device", None)
    with plumbing._capability_for_device_functions((9, 0)):
        pass
    assert getattr(dispatcher, "get_current_device", None) is before


# ------------------------------------------------------------------------------ simulator -----

@pytest.mark.parametrize("group", list(SIM_GROUPS))
def test_tiled_kernels_under_the_simulator(group, simulator_runs):
    out, _ = simulator_runs[group].communicate(timeout=900)
    print(out)
    assert simulator_runs[group].returncode == 0, out
    assert "FAIL" not in out
    checked = [line for line in out.splitlines() if not line.startswith(" ")]
    assert len(checked) == SIM_GROUPS[group], out


# ------------------------------------------------------------------------------- real GPU -----

needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))


def _gpu_case(B, H, Tq, Tk, D, causal, masked, dtype, dropout_p, seed=7):
    rng = np.random.default_rng(seed)
    q, dout = (rng.standard_normal((B, H, Tq, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, H, Tk, D)).astype(dtype) for _ in range(2))
    mask = None
    if masked:
        mask = np.ones((B, Tk), dtype=bool)
        mask[0, Tk // 2:] = False
        mask[-1, :] = False
    kw = dict(mask=mask, causal=causal, dropout_p=dropout_p, dropout_seed=1234 if dropout_p else None)
    ref = attention_numpy.attention_forward(q, k, v, **kw)
    ref = ref + attention_numpy.attention_backward(q, k, v, *ref, dout, **kw)
    return (q, k, v, dout), kw, ref


def _run_on_gpu_and_compare(arrays, kw, ref, dtype):
    """The tiled kernels on CuPy copies of ``arrays`` (q, k, v, dout) against the reference's
    (out, lse, dq, dk, dv): the same NaN and inf places, and close elsewhere."""
    import cupy

    q, k, v, dout = (cupy.asarray(a) for a in arrays)
    kw = dict(kw, mask=None if kw["mask"] is None else cupy.asarray(kw["mask"]))
    out, lse = tiled.attention_forward(q, k, v, **kw)
    grads = tiled.attention_backward(q, k, v, out, lse, dout, **kw)
    for name, got, want in zip(["out", "lse", "dq", "dk", "dv"], (out, lse) + tuple(grads), ref):
        _assert_close(name, got, want, dtype)


def _assert_close(name, got, ref, dtype):
    import cupy

    got = cupy.asnumpy(got)
    assert got.shape == ref.shape, name
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.array_equal(np.isinf(got), np.isinf(ref)), name
    finite = np.isfinite(ref)
    worst = float(np.max(np.abs(got[finite] - ref[finite]) / (1 + np.abs(ref[finite])), initial=0))
    assert worst <= (3e-5 if dtype == np.float32 else 1e-11), (name, worst)


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H,Tq,Tk,D,causal,masked,p", [(2, 12, 128, 128, 64, False, True, 0.0),
                                                         (2, 3, 77, 200, 128, True, True, 0.1),
                                                         (1, 2, 300, 45, 32, True, False, 0.0),
                                                         (2, 2, 65, 130, 80, False, True, 0.2)])
def test_tiled_kernels_on_the_gpu(dtype, B, H, Tq, Tk, D, causal, masked, p):
    import cupy

    from tinybert_kernels import dispatch

    assert dispatch.resolve_backend("auto", cupy.zeros(1)) == "cuda"
    assert dispatch._load("cuda") is tiled
    _run_on_gpu_and_compare(*_gpu_case(B, H, Tq, Tk, D, causal, masked, dtype, p), dtype)


@needs_gpu
@pytest.mark.parametrize("D", plumbing.HEAD_SIZES)
def test_small_tiles_fallback_on_the_gpu(D):
    """The tilings used when a GPU refuses more than 48 KiB of shared memory per block."""
    arrays, kw, ref = _gpu_case(2, 2, 150, 170, D, True, True, np.float32, 0.1)
    kw["tiles"] = plumbing.SMALL_CONFIGS[(D, "float32")]
    _run_on_gpu_and_compare(arrays, kw, ref, np.float32)


@needs_gpu
@pytest.mark.parametrize("where", ["q", "v", "dout"])
def test_nan_lands_where_the_reference_puts_it_on_the_gpu(where):
    arrays, kw, _ = _gpu_case(2, 2, 70, 90, 64, False, True, np.float32, 0.0)
    q, k, v, dout = arrays
    {"q": q, "v": v, "dout": dout}[where][0, 1, 3, 5] = np.nan
    ref = attention_numpy.attention_forward(q, k, v, **kw)
    ref = ref + attention_numpy.attention_backward(q, k, v, *ref, dout, **kw)
    _run_on_gpu_and_compare(arrays, kw, ref, np.float32)
