#!/usr/bin/env bash
# The GPU check, on one NVIDIA card with nothing but this repo (and, where the machine lacks
# them, the project's Python packages as wheels in .whl/), random-weight SVD-XT throughout.
#
#   scripts/gpu_check.sh [gpu|load|tests|all]
#
#   gpu   (under 10 min on an H200) plain diffusers and svd-server in the same run: eager
#         full profile, the low profile under an 8 GiB limit, batches of 2 and 4, compiled
#         quality mode, fast mode; one table (~7 min). Then the GPU tests, in the time left
#         of GPU_CHECK_BUDGET_S (default 570 s), so that one call fits a 10-minute limit and
#         the table is written whatever the tests do.
#   load  (~5 min) 10 back-to-back jobs through a real worker, overlap off and on (GPU busy
#         %), batches of 1, 2 and 4 (videos/hour); then start-up: eager, compiled with an
#         empty cache, compiled with a warm cache (time to ready, first video).
#   tests the GPU tests (tests/gpu): every mode against eager fp16 within its tolerance.
# Each part stays under 10 minutes; JSON results go to $OUT (default: the current directory).
#
# Where the GPU machine lacks packages (no network there), first run, where PyPI is reachable,
#   scripts/gpu_wheels.sh [PYTHON_VERSION] [TORCH_VERSION]    (default 3.12 2.11.0)
# and carry .whl/ along with the repo: this script installs it into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
part="${1:-gpu}"
# The repo root on the path: app and inference import from any process the checks start.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi -L
# Fewer reserved-but-unused blocks: what lets the low profile fit a small card.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
out="${OUT:-.}"
started=$SECONDS
if [ "$part" = gpu ] || [ "$part" = all ]; then
  python3 scripts/bench.py gpu --preset animatelcm-svd-xt --json "$out/bench_gpu.json"
  left=$(( ${GPU_CHECK_BUDGET_S:-570} - (SECONDS - started) ))
  if [ "$part" = gpu ] && [ "$left" -gt 60 ]; then
    timeout "$left" python3 -m pytest tests/gpu -s -q -p no:cacheprovider \
      || echo "GPU tests: failed or out of time (exit $?)"
  elif [ "$part" = gpu ]; then
    echo "GPU tests: no time left (run: scripts/gpu_check.sh tests)"
  fi
fi
if [ "$part" = load ] || [ "$part" = all ]; then
  python3 scripts/bench.py worker --model svd-xt-random --size 1024x576 --frames 25 --steps 10 \
    --jobs 10 --json "$out/bench_worker.json"
  python3 scripts/bench.py startup --model svd-xt-random --size 1024x576 --frames 25 --steps 25 \
    --json "$out/bench_startup.json"
fi
if [ "$part" = tests ] || [ "$part" = all ]; then
  python3 -m pytest tests/gpu -s -q -p no:cacheprovider
fi
