"""kill -9 at every phase of a job, start again on the same data dir: nothing is lost, nothing
is done twice. The fault hook SVD_FAULT_CRASH_AT makes the process SIGKILL itself exactly at a
phase; each test checks from the log that the phase was reached."""
from __future__ import annotations

import signal
import sqlite3
import time

import httpx
import pytest

from app.child_process import free_port
from tests.helpers import ServerProcess, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "crash-key"
HEADERS = {"authorization": f"Bearer {KEY}"}
ENV = {"SVD_MODEL": "tiny", "SVD_API_KEYS": KEY, "SVD_ALLOWED_SIZES": "64x64",
       "SVD_NUM_FRAMES": "4", "SVD_STEPS": "60"}


def job_row(data_dir, job_id):
    with sqlite3.connect(data_dir / "svd.db") as db:
        return db.execute("SELECT state, attempts, error FROM jobs WHERE id = ?", (job_id,)).fetchone()


def submit(srv, seed: str) -> str:
    r = httpx.post(srv.url + "/v2beta/image-to-video", headers=HEADERS,
                   files={"image": ("a.png", png_bytes())}, data={"seed": seed}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def result(srv, job_id: str, timeout: float = 120) -> httpx.Response:
    deadline = time.time() + timeout
    while (r := httpx.get(f"{srv.url}/v2beta/image-to-video/result/{job_id}", headers=HEADERS,
                          timeout=30)).status_code == 202:
        assert time.time() < deadline
        time.sleep(0.1)
    return r


def crashed(srv, phase: str) -> None:
    srv.proc.wait(60)
    assert srv.proc.returncode == -signal.SIGKILL
    assert f"event=fault_hook_crash phase={phase}" in srv.log()


@pytest.mark.parametrize("phase,state_at_crash", [
    ("queued", "queued"), ("denoise", "running"), ("encode", "running"), ("write", "running")])
def test_a_kill_at_any_phase_loses_nothing_and_duplicates_nothing(tmp_path, phase, state_at_crash):
    data, port = tmp_path / "data", free_port()
    srv = ServerProcess(data, {**ENV, "SVD_FAULT_CRASH_AT": phase}, port=port).start()
    job_id = submit(srv, "77")
    crashed(srv, phase)
    assert job_row(data, job_id)[0] == state_at_crash

    srv2 = ServerProcess(data, ENV, port=port).start()
    try:
        r = result(srv2, job_id)
        assert r.status_code == 200 and r.headers["seed"] == "77"
        assert inspect_mp4(r.content).frames == 4
        state, attempts, _ = job_row(data, job_id)
        assert (state, attempts) == ("succeeded", 1 if phase == "queued" else 2)
        files = sorted(p.name for p in (data / "results").iterdir())
        assert files == [f"{job_id}.mp4"]             # no temp file left, exactly one result
    finally:
        srv2.stop()


def test_a_job_that_keeps_killing_the_worker_is_failed_and_the_queue_moves_on(tmp_path):
    data, port = tmp_path / "data", free_port()
    crashing = {**ENV, "SVD_FAULT_CRASH_AT": "denoise", "SVD_MAX_ATTEMPTS": "3"}
    srv = ServerProcess(data, crashing, port=port).start()
    poison = submit(srv, "1")
    crashed(srv, "denoise")
    for attempt in (2, 3):                            # every restart claims it and dies again
        srv = ServerProcess(data, crashing, port=port)
        srv.start(wait_ready=False)
        crashed(srv, "denoise")
        assert job_row(data, poison)[:2] == ("running", attempt)

    srv = ServerProcess(data, ENV, port=port).start()
    try:
        state, attempts, error = job_row(data, poison)
        assert (state, attempts) == ("failed", 3) and "3 times" in error
        assert result(srv, poison).status_code == 500
        healthy = submit(srv, "2")
        assert result(srv, healthy).status_code == 200
    finally:
        srv.stop()


def test_sigterm_drains_finishes_the_running_job_and_exits(tmp_path):
    data = tmp_path / "data"
    srv = ServerProcess(data, {**ENV, "SVD_NUM_FRAMES": "16", "SVD_STEPS": "200"}).start()
    job_id = submit(srv, "5")
    deadline = time.time() + 30
    while job_row(data, job_id)[0] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(srv.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    refused = httpx.post(srv.url + "/v2beta/image-to-video", headers=HEADERS,
                         files={"image": ("a.png", png_bytes())})
    assert refused.status_code == 503 and "retry-after" in refused.headers
    srv.proc.wait(60)
    assert srv.proc.returncode == 0
    assert job_row(data, job_id)[0] == "succeeded"    # finished within the grace period


def test_sigterm_past_the_grace_period_hands_the_job_back(tmp_path):
    data, port = tmp_path / "data", free_port()
    slow = {**ENV, "SVD_NUM_FRAMES": "64", "SVD_STEPS": "200", "SVD_DRAIN_GRACE_S": "0.5"}
    srv = ServerProcess(data, slow, port=port).start()
    job_id = submit(srv, "6")
    deadline = time.time() + 30
    while job_row(data, job_id)[0] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(60)
    assert srv.proc.returncode == 0
    assert job_row(data, job_id)[:2] == ("queued", 1)   # released, to be resumed
    assert "event=released" in srv.log()


def test_a_second_sigterm_stops_at_once_and_leaves_the_job_to_recovery(tmp_path):
    data, port = tmp_path / "data", free_port()
    slow = {**ENV, "SVD_NUM_FRAMES": "64", "SVD_STEPS": "200", "SVD_DRAIN_GRACE_S": "60"}
    srv = ServerProcess(data, slow, port=port).start()
    job_id = submit(srv, "8")
    deadline = time.time() + 30
    while job_row(data, job_id)[0] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert httpx.get(srv.url + "/readyz").status_code == 503     # the drain has begun
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(5)                              # not the 60 s grace, nor a 10 s stop
    finally:
        srv.stop()
    assert srv.proc.returncode == 128 + signal.SIGTERM
    assert job_row(data, job_id)[:2] == ("running", 1)   # as a crash leaves it
    assert "event=stopped_now" in srv.log()

    # the same port: the same worker names, so the job is re-queued at once (default frames
    # and steps are the model's, i.e. this process's settings: the re-run is short)
    srv2 = ServerProcess(data, ENV, port=port).start()
    try:
        assert "event=requeued_own_jobs" in srv2.log()
        r = result(srv2, job_id, timeout=30)
        assert r.status_code == 200 and r.headers["seed"] == "8"
        assert job_row(data, job_id)[:2] == ("succeeded", 2)
    finally:
        srv2.stop()
