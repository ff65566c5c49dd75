"""scripts/bench.py gpu runs end to end on a CPU (tiny model) and reports every column."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_bench_gpu_quick_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "scripts/bench.py", "gpu", "--quick", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = json.loads(out.read_text())
    runs = res["runs"]
    assert set(runs) >= {"plain diffusers (decode chunk 8)", "svd-server full", "svd-server low"}
    full = runs["svd-server full"]
    assert full["psnr_vs_plain"] == float("inf") and full["max_abs_diff"] == 0   # same frames
    for key in ("image_encode_s", "denoise_s", "decode_s", "mp4_s"):
        assert full[key] >= 0
    assert "svd-server GPU benchmark" in run.stdout
