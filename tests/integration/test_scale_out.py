"""Two API processes and three worker processes on one PostgreSQL; one worker is killed with
SIGKILL in the middle of a job, another stopped at once by a second SIGTERM. Every job
completes exactly once, and both APIs serve every video."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import text

from app.child_process import free_port, popen_kwargs
from app.jobs import migrate
from app.jobs.tables import make_engine
from tests.helpers import ROOT, ServerProcess, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "scale-key"
HEADERS = {"authorization": f"Bearer {KEY}"}
JOBS = 12


def test_two_apis_three_workers_one_killed(tmp_path, pg):
    postgres_url, engine = pg
    env = {"SVD_DATABASE_URL": postgres_url, "SVD_MODEL": "tiny", "SVD_API_KEYS": KEY,
           "SVD_ALLOWED_SIZES": "64x64", "SVD_NUM_FRAMES": "4", "SVD_STEPS": "60",
           "SVD_LEASE_S": "3", "SVD_HEARTBEAT_S": "1"}
    apis = [ServerProcess(tmp_path / f"api{i}", {**env, "SVD_WORKERS": "0"}) for i in range(2)]
    workers, logs = {}, {}
    try:
        for api in apis:
            api.start()
        for i in range(3):
            name = f"test-host/gpu{i}"
            logs[name] = tmp_path / f"worker{i}.log"
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], cwd=ROOT,
                env={**os.environ, **env, "SVD_WORKER_NAME": name,
                     "SVD_DATA_DIR": str(tmp_path / f"w{i}"), "PYTHONUNBUFFERED": "1"},
                stdout=open(logs[name], "wb"), stderr=subprocess.STDOUT, **popen_kwargs())
        ids = []
        for n in range(JOBS):
            r = httpx.post(apis[n % 2].url + "/v2beta/image-to-video", headers=HEADERS,
                           files={"image": ("a.png", png_bytes())}, data={"seed": str(n + 1)})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])

        # Kill whichever worker is in the middle of a job.
        deadline = time.time() + 120
        while True:
            with engine.connect() as c:
                row = c.execute(text("SELECT id, worker FROM jobs WHERE state = 'running' "
                                     "AND progress > 0 LIMIT 1")).first()
            if row:
                break
            assert time.time() < deadline, "no job ever ran"
            time.sleep(0.05)
        killed_job, killed_worker = row
        workers[killed_worker].kill()
        workers[killed_worker].wait(10)

        # Stop another worker mid-job with two SIGTERMs: the first drains, the second exits
        # at once (143) and leaves its job `running`, exactly as the kill did.
        deadline = time.time() + 120
        while True:
            with engine.connect() as c:
                row = c.execute(text("SELECT worker FROM jobs WHERE state = 'running' AND "
                                     "progress > 0 AND progress < 0.5 AND worker != :w "
                                     "LIMIT 1"), {"w": killed_worker}).first()
            if row:
                break
            assert time.time() < deadline, "no other job ever ran"
            time.sleep(0.02)
        stopped_worker = row[0]
        workers[stopped_worker].send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        while "event=draining" not in logs[stopped_worker].read_text():
            assert time.time() < deadline, logs[stopped_worker].read_text()
            time.sleep(0.01)
        workers[stopped_worker].send_signal(signal.SIGTERM)
        assert workers[stopped_worker].wait(10) == 128 + signal.SIGTERM
        assert "event=stopped_now" in logs[stopped_worker].read_text()
        with engine.connect() as c:
            left = c.execute(text("SELECT id FROM jobs WHERE state = 'running' AND worker = :w"),
                             {"w": stopped_worker}).scalars().all()
        assert len(left) == 1, left                    # left to its lease, not released
        stopped_job = left[0]

        videos = {}
        for job_id in ids:
            for api in apis:                           # both APIs serve every video
                deadline = time.time() + 180
                while (r := httpx.get(f"{api.url}/v2beta/image-to-video/result/{job_id}",
                                      headers=HEADERS, timeout=30)).status_code == 202:
                    assert time.time() < deadline, f"job {job_id} never finished"
                    time.sleep(0.1)
                assert r.status_code == 200, r.text
                assert inspect_mp4(r.content).frames == 4
                videos.setdefault(job_id, set()).add(r.content)
        assert all(len(v) == 1 for v in videos.values())  # the same bytes from both APIs

        with engine.connect() as c:
            rows = dict(c.execute(text("SELECT id, attempts FROM jobs WHERE state = 'succeeded'")).all())
        assert set(rows) == set(ids)                         # lost: 0
        assert rows[killed_job] == 2                         # claimed again exactly once
        assert rows[stopped_job] == 2
        finished = Counter()
        for name, path in logs.items():
            finished.update(re.findall(r"job=([0-9a-f]{64}) event=succeeded", path.read_text()))
        assert finished == Counter({job_id: 1 for job_id in ids})   # duplicates: 0
        survivors = [w for n, w in workers.items() if n not in (killed_worker, stopped_worker)]
        assert all(w.poll() is None for w in survivors)
        print(f"scale-out: {JOBS} jobs, 1 worker killed and 1 stopped mid-job "
              f"({killed_job[:8]}, {stopped_job[:8]}), "
              f"0 lost, 0 duplicates, {sum(rows.values()) - JOBS} re-claim(s)")
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in workers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for api in apis:
            api.stop()


def test_worker_gpus_starts_one_pinned_process_per_gpu_and_restarts_a_dead_one(tmp_path,
                                                                               postgres_url):
    engine = make_engine(postgres_url)
    migrate.upgrade(engine)
    engine.dispose()
    port = free_port(2)                      # --metrics-port: port + i for the i-th GPU
    env = {**os.environ, "SVD_DATABASE_URL": postgres_url, "SVD_MODEL": "tiny",
           "SVD_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "supervisor.log"
    sup = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--gpus", "0,1",
                            "--metrics-port", str(port)], cwd=ROOT, env=env,
                           stdout=open(log, "wb"), stderr=subprocess.STDOUT, **popen_kwargs())
    try:
        def metrics(p):
            try:
                return httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        deadline = time.time() + 90
        while not (metrics(port) and metrics(port + 1)):
            assert sup.poll() is None, log.read_text()
            assert time.time() < deadline, log.read_text()
            time.sleep(0.2)
        text_log = log.read_text()
        assert "worker=" in text_log and "/gpu0" in text_log and "/gpu1" in text_log
        # Kill the child of GPU 1: the supervisor starts it again.
        child = subprocess.run(["pgrep", "-f", "-P", str(sup.pid), "app.cli worker"],
                               capture_output=True, text=True).stdout.split()
        assert len(child) == 2
        os.kill(int(child[1]), signal.SIGKILL)
        deadline = time.time() + 60
        while "event=worker_died" not in log.read_text() or not (metrics(port) and metrics(port + 1)):
            assert time.time() < deadline, log.read_text()
            time.sleep(0.2)
        # A terminal's Ctrl-C reaches the supervisor's whole process group. Each worker runs
        # in a session of its own and gets the signal once, passed on: a drain (exit 0), not
        # a drain and then a second signal's stop at once (130).
        children = subprocess.run(["pgrep", "-f", "-P", str(sup.pid), "app.cli worker"],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        assert all(os.getpgid(int(c)) != os.getpgid(sup.pid) for c in children)
        os.killpg(sup.pid, signal.SIGINT)
        assert sup.wait(60) == 0, log.read_text()
        assert "event=stopped_now" not in log.read_text()
    finally:
        if sup.poll() is None:
            sup.kill()


def listening_addresses(pid: int, port: int) -> list[str]:
    """The addresses of the TCP sockets listening on `port`, from /proc/<pid>/net/tcp{,6}
    (the kernel's table of `pid`'s network namespace)."""
    import socket
    from pathlib import Path

    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.rsplit(":", 1)
            if int(local_port, 16) != port or state != "0A":         # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)                  # 32-bit words in host byte order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(socket.inet_ntop(family, raw))
    return found


def test_worker_metrics_listen_on_svd_host_only(tmp_path, pg):
    """--metrics-port binds SVD_HOST (127.0.0.1 here), never 0.0.0.0 (SECURITY.md)."""
    if not os.path.exists(f"/proc/{os.getpid()}/net/tcp"):
        pytest.skip("no /proc/<pid>/net/tcp on this system")
    postgres_url, _ = pg
    port = free_port()
    env = {**os.environ, "SVD_DATABASE_URL": postgres_url, "SVD_MODEL": "tiny",
           "SVD_HOST": "127.0.0.1", "SVD_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "SVD_WORKER_NAME": "test-host/metrics"}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--metrics-port",
                             str(port)], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, **popen_kwargs())
    try:
        deadline = time.time() + 90
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, log.read_text()
                assert time.time() < deadline, log.read_text()
                time.sleep(0.2)
        assert r.status_code == 200 and "svd_" in r.text, r.text[:500]
        assert listening_addresses(proc.pid, port) == ["127.0.0.1"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
