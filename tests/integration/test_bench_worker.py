"""scripts/bench.py worker runs real workers (tiny model, real encoder) and reports every
number."""
from __future__ import annotations

import json

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.slow


def test_bench_worker_quick(tmp_path):
    run, res = run_bench(tmp_path, "worker", timeout=120)
    line = json.loads(run.stdout.strip().splitlines()[-1])      # the one JSON line
    assert line == res
    runs = line["runs"]
    assert set(runs) >= {"overlap off", "overlap on", "batch 1", "batch 2"}
    for run_ in runs.values():
        assert run_["jobs"] == 4 and run_["wall_s"] > 0 and run_["videos_per_hour"] > 0
        assert 0 < run_["generator_busy_pct"] <= 100
    assert (runs["overlap off"]["overlap"], runs["overlap on"]["overlap"]) == (False, True)
    assert runs["batch 2"]["generator_calls"] == 2 and runs["batch 1"]["generator_calls"] == 4
    for metric in ("overlap off: generator busy %", "overlap on: videos/hour",
                   "batch 2 (overlap on): videos/hour"):
        assert metric in run.stdout
