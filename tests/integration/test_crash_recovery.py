"""kill -9 in the middle of a generation, start again on the same data dir: nothing is lost."""
from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from tests.helpers import ServerProcess, free_port, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "crash-key"
HEADERS = {"authorization": f"Bearer {KEY}"}


def job_row(data_dir, job_id):
    with sqlite3.connect(data_dir / "svd.db") as db:
        return db.execute("SELECT state, attempts, progress FROM jobs WHERE id = ?", (job_id,)).fetchone()


def test_killed_server_finishes_every_accepted_job_after_restart(tmp_path):
    data = tmp_path / "data"
    env = {"SVD_MODEL": "tiny", "SVD_API_KEYS": KEY, "SVD_ALLOWED_SIZES": "64x64",
           "SVD_NUM_FRAMES": "4", "SVD_STEPS": "120"}
    port = free_port()
    srv = ServerProcess(data, env, port=port).start()
    try:
        ids = []
        for seed in ("1", "2"):
            r = httpx.post(srv.url + "/v2beta/image-to-video", headers=HEADERS,
                           files={"image": ("a.png", png_bytes())}, data={"seed": seed})
            ids.append(r.json()["id"])
        deadline = time.time() + 60
        while not ((row := job_row(data, ids[0])) and row[0] == "running" and row[2] > 0):
            assert time.time() < deadline, f"never reached denoising: {row}"
            time.sleep(0.05)
        assert job_row(data, ids[1])[0] == "queued"
        srv.kill9()                                   # mid-denoising, one job queued
    finally:
        srv.stop()

    srv2 = ServerProcess(data, env, port=port).start()
    try:
        for job_id, seed in zip(ids, ("1", "2")):
            deadline = time.time() + 120
            while (r := httpx.get(f"{srv2.url}/v2beta/image-to-video/result/{job_id}",
                                  headers=HEADERS)).status_code == 202:
                assert time.time() < deadline
                time.sleep(0.1)
            assert r.status_code == 200, r.text
            assert r.headers["seed"] == seed
            assert inspect_mp4(r.content).frames == 4
        assert job_row(data, ids[0])[:2] == ("succeeded", 2)   # claimed again exactly once
        assert job_row(data, ids[1])[:2] == ("succeeded", 1)
        assert "re-queued 1 job(s)" in srv2.log()
    finally:
        srv2.stop()
