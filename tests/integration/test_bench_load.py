"""scripts/bench.py load --quick runs end to end: a real server, concurrent clients, a report."""
from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.slow


@pytest.mark.timeout(330)
def test_bench_load_quick_writes_its_numbers(tmp_path):
    _, res = run_bench(tmp_path, "load", timeout=300)
    assert res["clients"] == 8 and res["duration"] == 8
    assert res["count_5xx"] == 0, res
    assert res["refusals_without_retry_after"] == 0, res
    assert res["bad_mp4"] == 0, res
    assert res["completed"] > 0, res
    assert res["post_status"].get("200", 0) >= res["completed"]
    assert res["poll_ms"]["n"] > 0
    assert res["poll_ms"]["p50"] <= res["poll_ms"]["p99"] <= res["poll_ms"]["max"]
    assert res["rss_warm_kb"] > 0 and res["rss_end_kb"] > 0
    assert set(res["pass"]) == {"no_5xx", "retry_after", "poll_p99", "rss"}
