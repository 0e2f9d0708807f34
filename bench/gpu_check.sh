#!/usr/bin/env bash
# GPU check and tuning run for the fused attention kernels, for the first machine with an NVIDIA GPU.
# It needs cupy, numba-cuda and torch there, installs nothing and finishes within 8 minutes. Sections
# run one after another, each in its own process under its own time limit; one that fails or times
# out does not stop the others, and a summary closes the run:
#   1. tests on the GPU (3 min): the tiled kernels against the NumPy reference (float32/64, head
#      sizes 32/64/128 and a padded one, masks, causal, Tq != Tk, dropout, NaN, the small-tile
#      fallback), the simple kernels, and a training step of the whole model against the CPU's;
#   2. tile sweep (3 min): every tiling in bench/_gpu_bench.py's SWEEP, each kernel timed alone at a
#      BERT-like shape per head size, checked against the default tiling, with registers and local
#      memory as the driver reports them; it ends with the fastest tiling of each kernel;
#   3. fused vs torch SDPA (2 min): float32 at BERT-base shapes (B = 8..32, H = 12, T = 128..4096,
#      D = 64; and D = 128), times, ratios and TFLOP/s.
# Run from anywhere:  bash bench/gpu_check.sh      (PYTHON=python3.11 LOG_DIR=logs bash bench/gpu_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$LOG_DIR"

# The folder kernels/ (a namespace package) is imported as tinybert_kernels (setup.py's package_dir): without installing
# anything, a temporary folder with a link of that name goes on PYTHONPATH, with the repo root.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ln -s "$PWD/kernels" "$tmp/tinybert_kernels"
export PYTHONPATH="$tmp:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

declare -a SUMMARY
start_all=$SECONDS

# section NAME SECONDS COMMAND...: run COMMAND under a time limit, output to the screen and to
# $LOG_DIR/NAME.log, and note how it ended.
section() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    local how="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then how="TIMED OUT"; elif [ "$rc" -ne 0 ]; then how="FAILED (exit $rc)"; fi
    SUMMARY+=("$(printf '%-12s %-16s %4d s   %s' "$name" "$how" $((SECONDS - t0)) "$LOG_DIR/$name.log")")
}

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import cupy, numba, torch; print('cupy', cupy.__version__, '| numba', numba.__version__, '| torch', torch.__version__)" || true
"$PY" -c "import numba_cuda; print('numba-cuda', numba_cuda.__version__)" 2>/dev/null || echo "numba-cuda: not installed (Numba's own numba.cuda)"

section tests 180 "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/test_attention_cuda_tiled.py -k "gpu" tests/test_kernels_cudasim.py tests/test_model_gpu.py
section sweep 180 "$PY" bench/_gpu_bench.py sweep
section table 110 "$PY" bench/_gpu_bench.py table

echo
echo "== summary ($((SECONDS - start_all)) s in all; logs in $LOG_DIR)"
for line in "${SUMMARY[@]}"; do echo "$line"; done
grep -h -A20 "^fastest tilings" "$LOG_DIR/sweep.log" 2>/dev/null || true
grep -h "^targets on a Hopper" "$LOG_DIR/table.log" 2>/dev/null || true
grep -h -E "^[0-9]+ (passed|failed)|passed|failed" "$LOG_DIR/tests.log" 2>/dev/null | tail -1 || true
failed=0
for line in "${SUMMARY[@]}"; do case "$line" in *ok\ *) ;; *) failed=1 ;; esac; done
exit $failed
