#!/usr/bin/env bash
# The GPU check, on one NVIDIA card with nothing but this repo (and, where the machine lacks
# them, the project's Python packages as wheels in .whl/): plain diffusers and svd-server's
# generator in the same run, full-speed and 8 GiB profiles, random-weight SVD-XT.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi -L
# Fewer reserved-but-unused blocks: what lets the low profile fit a small card.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
out="${OUT:-.}"
python3 scripts/bench.py gpu --json "$out/bench_gpu.json" "$@"
