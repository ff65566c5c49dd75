"""scripts/bench.py attack --quick: another client keeps its latency while an attacker streams
huge heads and holds slow connections, and the attacker's connections are refused or closed.
The bound is lenient (the target is 50 ms, on a quiet machine): without the connection
limits, a streamed header costs every other request seconds."""
from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.slow

LENIENT_P99_MS = 500


@pytest.mark.timeout(150)
def test_bench_attack_quick_keeps_other_clients_fast(tmp_path):
    _, res = run_bench(tmp_path, "attack", timeout=140)
    assert res["phase_s"] == 3 and res["request_timeout_s"] == 1
    phases = res["phases"]
    assert set(phases) == {"rest", "header", "url", "slow", "all"}
    for name, phase in phases.items():
        for what in ("healthz_ms", "poll_ms"):
            assert phase[what]["n"] >= 10, (name, what, phase)
            assert phase[what]["p99"] < LENIENT_P99_MS, (name, what, phase)
        assert not phase["errors"], (name, phase)
        assert set(phase["statuses"]) == {"healthz 200", "poll 202"}, (name, phase)
        # Two huge heads at once grew the old server by more than this within seconds.
        assert phase["rss_max_kb"] - res["rss_rest_kb"] < 64 * 1024, (name, phase)
        for kind, attack in phase["attack"].items():
            if kind in ("header", "url"):       # every head refused before it was all sent
                assert attack["sent_whole"] == 0, (name, kind, attack)
                assert attack["answers"].get("431", 0) > 0, (name, kind, attack)
                assert set(attack["answers"]) <= {"431", "closed", "none"}, (name, kind, attack)
            else:                               # slow heads and bodies closed at the timeout
                assert kind == "slow", attack
                assert attack["closed_by_server"] >= 300, (name, attack)
                assert attack["answers"].get("408", 0) > 0, (name, attack)
                assert attack["close_s_median"] < 1 + 1.5, (name, attack)
