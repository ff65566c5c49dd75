"""scripts/bench.py gpu runs end to end on a CPU (tiny model) and reports every column; a
configuration that fails is a row of its own and the rest of the report is still written; a
few-step preset's row (--preset) runs on the tiny model too."""
from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.slow


def test_bench_gpu_quick_on_the_cpu(tmp_path):
    run, res = run_bench(tmp_path, "gpu", "--preset", "animatelcm-svd-xt", timeout=300)
    runs = res["runs"]
    assert {"plain diffusers (decode chunk 8)", "svd-server full", "svd-server low",
            "plain diffusers (decode chunk 2)", "svd-server batch of 2",
            "svd-server batch of 4"} <= set(runs)
    assert all(r["s"] is not None for r in runs.values()), runs
    assert res["torch_device"] == "cpu"
    full = runs["svd-server full"]
    assert full["psnr_vs_plain"] == float("inf") and full["max_abs_diff_vs_plain"] == 0  # same frames
    for key in ("image_encode_s", "denoise_s", "decode_s", "mp4_s"):
        assert full[key] >= 0
    # The low profile against plain diffusers decoding 2 frames at a time, as it does: the
    # same video up to rounding (guidance halves in turn, feed-forward in slices). Against
    # decoding 8 at a time it would be ~21 dB apart by construction.
    low = runs["svd-server low"]
    assert "psnr_vs_plain" not in low
    assert low["psnr_vs_plain_decode_chunk_2"] > 50 and low["max_abs_diff_vs_plain_decode_chunk_2"] <= 2
    # A batch's first video is the same video as alone, up to the last bit of rounding.
    assert runs["svd-server batch of 2"]["max_abs_diff_vs_plain"] <= 1
    assert runs["svd-server batch of 2"]["videos_per_hour"] > 0
    fast = [name for name in runs if name.startswith("svd-server fast")]
    assert len(fast) == 1 and "step cache 3" in fast[0]
    assert runs[fast[0]]["cached_steps"] > 0 and runs[fast[0]]["full_steps"] > 0
    assert "cached_steps" not in full                          # no step cache there
    assert "svd-server GPU benchmark" in run.stdout
    # The few-step preset's row: its 4 steps of the consistency sampler over the tiny model's
    # weights, its ratio to the 2-step baseline shown but not judged, no PSNR.
    assert res["preset"] == "animatelcm-svd-xt"
    lcm = [name for name in runs if name.startswith("svd-server animatelcm-svd-xt")]
    assert lcm == ["svd-server animatelcm-svd-xt (4 steps, consistency sampler; tiny model's "
                   "random weights, not AnimateLCM's)"]
    row = runs[lcm[0]]
    assert row["s"] > 0 and row["steps"] == 4 and row["sampler"] == "animatelcm"
    base = runs["plain diffusers (decode chunk 8)"]["s"]
    assert row["ratio_vs_plain"] == round(row["s"] / base, 3)
    assert row["ratio_vs_plain"] > 0 and row["target_ratio"] == 0.18
    assert row["target_met"] is None and row["target_note"].startswith("not judged")
    assert row["decode_chunk"] == 4 and row["denoise_s"] >= 0
    assert not any(k.startswith("psnr_vs_") for k in row)
    assert "target x0.18 or less" in run.stdout

    # --fp8 on without an FP8 card: the fast run fails (resolve refuses), the report stands,
    # and the exit status is 0 because the baseline ran (run_bench checks it).
    run, res = run_bench(tmp_path, "gpu", "--runs", "fast", "--fp8", "on", timeout=300)
    runs = res["runs"]
    assert runs["plain diffusers (decode chunk 8)"]["s"] > 0
    assert runs["svd-server fast (FP8 on)"] == {
        "s": None, "error": "ValueError: SVD_FP8=on: FP8 needs an NVIDIA GPU"}
    assert "FAILED" in run.stdout and "FP8 needs an NVIDIA GPU" in run.stdout
