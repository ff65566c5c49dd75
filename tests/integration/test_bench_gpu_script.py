"""scripts/bench.py gpu runs end to end on a CPU (tiny model) and reports every column."""
from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.slow


def test_bench_gpu_quick_on_the_cpu(tmp_path):
    run, res = run_bench(tmp_path, "gpu", timeout=300)
    runs = res["runs"]
    assert {"plain diffusers (decode chunk 8)", "svd-server full", "svd-server low",
            "svd-server batch of 2", "svd-server batch of 4"} <= set(runs)
    full = runs["svd-server full"]
    assert full["psnr_vs_plain"] == float("inf") and full["max_abs_diff_vs_plain"] == 0  # same frames
    for key in ("image_encode_s", "denoise_s", "decode_s", "mp4_s"):
        assert full[key] >= 0
    # A batch's first video is the same video as alone, up to the last bit of rounding.
    assert runs["svd-server batch of 2"]["max_abs_diff_vs_plain"] <= 1
    assert runs["svd-server batch of 2"]["videos_per_hour"] > 0
    fast = [name for name in runs if name.startswith("svd-server fast")]
    assert len(fast) == 1 and "step cache 3" in fast[0]
    assert "svd-server GPU benchmark" in run.stdout
