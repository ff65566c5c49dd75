"""Readiness while the model loads, API-only mode, and jobs waiting for a worker."""
from __future__ import annotations

import threading
import time

import httpx

from app.config import Settings
from app.main import create_app
from tests.api.test_start import start
from tests.fakes import FakeGenerator
from tests.helpers import KEY_A, ServerThread, make_settings


def test_readyz_is_503_until_the_model_is_loaded(tmp_path):
    loaded = threading.Event()

    def slow_factory():
        loaded.wait(10)
        return FakeGenerator()

    app = create_app(make_settings(tmp_path), generator_factory=slow_factory, model_label="fake")
    with ServerThread(app) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        # Jobs are accepted while the model loads; they wait in the queue.
        with httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            job_id = start(client).json()["id"]
            assert client.get(f"/v2beta/image-to-video/result/{job_id}").status_code == 202
            loaded.set()
            deadline = time.time() + 10
            while httpx.get(server.url + "/readyz").status_code != 200:
                assert time.time() < deadline
                time.sleep(0.02)
            while (r := client.get(f"/v2beta/image-to-video/result/{job_id}")).status_code == 202:
                assert time.time() < deadline
                time.sleep(0.02)
            assert r.status_code == 200


def test_api_only_mode_queues_without_loading_a_model(tmp_path):
    settings: Settings = make_settings(tmp_path, workers=0, model="/no/such/model")
    app = create_app(settings)                 # no model resolution at all with 0 workers
    with ServerThread(app) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == 0
        assert "x-svd-model" not in ready.headers
        job_id = start(client).json()["id"]
        assert client.get(f"/v2beta/image-to-video/result/{job_id}").json()["status"] == "in-progress"
