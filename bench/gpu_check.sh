#!/usr/bin/env bash
# GPU check for the fused attention kernels, for a machine with an NVIDIA GPU that already has
# cupy, numba-cuda and torch installed. It installs nothing and finishes within 8 minutes:
#   1. the CUDA kernel tests (real GPU against the NumPy reference, PTX compilation, simulator) and
#      a training step of the whole model on CuPy against the CPU (tests/test_model_gpu.py);
#   2. fused-vs-torch-SDPA float32 time ratios and TFLOP/s at BERT-base shapes (bench/_gpu_bench.py).
# Run from anywhere:  bash bench/gpu_check.sh      (PYTHON=python3.11 bash bench/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

# The folder kernels/ is imported as tinybert_kernels (setup.py's package_dir): without installing
# anything, a temporary folder with a link of that name goes on PYTHONPATH, with the repo root.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ln -s "$PWD/kernels" "$tmp/tinybert_kernels"
export PYTHONPATH="$tmp:$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import cupy, numba, torch; print('cupy', cupy.__version__, '| numba', numba.__version__, '| torch', torch.__version__)"

echo "== CUDA kernel tests (real GPU, PTX, simulator) and the whole model on the GPU"
status=0
timeout 270 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_cudasim.py tests/test_model_gpu.py || status=$?

echo "== fused vs torch SDPA, float32, BERT-base shapes"
timeout 180 "$PY" bench/_gpu_bench.py || status=$?
exit $status
