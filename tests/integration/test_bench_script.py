"""scripts/bench.py api --quick runs end to end: calibration, direct path, a real server."""
from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.slow


@pytest.mark.timeout(330)
def test_bench_api_quick_writes_its_numbers(tmp_path):
    _, res = run_bench(tmp_path, "api", timeout=300)
    assert res["jobs"] == 1 and len(res["direct_s"]) == len(res["http_s"]) == 1
    for key in ("direct_mean_s", "direct_min_s", "http_mean_s", "http_min_s", "overhead_ratio",
                "poll_p50_ms", "poll_p99_ms", "poll_max_ms"):
        assert res[key] > 0, key
    assert res["poll_count"] > 0
    assert res["poll_p50_ms"] <= res["poll_p99_ms"] <= res["poll_max_ms"]
    # The HTTP job cannot finish before the worker has run it.
    assert res["http_parts"][0]["worker_s"] < res["http_s"][0]
    assert set(res["pass"]) == {"overhead", "poll_p99"}
