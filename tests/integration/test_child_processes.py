"""Every server a benchmark starts dies with the benchmark, however the benchmark ends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.child_process import popen_kwargs
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return "zombie" not in (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_benchmark_killed_mid_run_takes_its_server_with_it(tmp_path):
    bench = subprocess.Popen([sys.executable, "scripts/bench.py", "api", "--quick"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             **popen_kwargs())
    try:
        deadline = time.monotonic() + 120
        servers: list[int] = []
        while not servers and time.monotonic() < deadline and bench.poll() is None:
            servers = children(bench.pid)
            time.sleep(0.2)
        assert servers, "the benchmark started no server"
        os.kill(bench.pid, signal.SIGKILL)          # as a timeout would
        bench.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in servers), "the server outlived its benchmark"
    finally:
        if bench.poll() is None:
            bench.kill()
