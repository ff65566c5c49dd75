"""Webhooks: allow-list, signed deliveries a receiver can verify, retries with backoff."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from app.jobs.model import Job, JobState, new_job_id
from app.jobs.memory import MemoryJobStore
from app.metrics import Metrics
from app.webhooks import WebhookSender, host_allowed, sign, verify
from tests.api.test_start import assert_error, start
from tests.fakes import FakeGenerator
from tests.helpers import KEY_A, running_server, wait_done


class Receiver:
    """A real HTTP server on loopback that records what it receives; fails the first N."""

    def __init__(self, fail_first: int = 0):
        self.received, self.fail_first = [], fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append((dict(self.headers), body, time.time()))
                ok = len(outer.received) > outer.fail_first
                self.send_response(200 if ok else 503)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 20):
        deadline = time.time() + timeout
        while len(self.received) < n:
            assert time.time() < deadline, f"got {len(self.received)} of {n} deliveries"
            time.sleep(0.05)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver(fail_first=2)
    yield r
    r.close()


def test_signed_event_retried_until_delivered(tmp_path, receiver, caplog):
    caplog.set_level(logging.INFO)
    secret = "whsec-test"
    with running_server(tmp_path, webhook_allow=f"127.0.0.1:{receiver.port}", webhook_secret=secret,
                        webhook_retry_base_s=0.2) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        url = f"http://127.0.0.1:{receiver.port}/hooks/svd?token=s3cret"
        job_id = start(client, data={"seed": "9", "webhook_url": url}).json()["id"]
        assert wait_done(client, job_id).status_code == 200
        receiver.wait(3)                                   # 503, 503, then 200
        headers, body, _ = receiver.received[-1]
        assert verify(secret.encode(), headers["svd-signature"], body)
        assert not verify(b"another-secret", headers["svd-signature"], body)
        assert not verify(secret.encode(), headers["svd-signature"], body + b" ")
        for missing_or_malformed in (None, "", "t", "t=x,v1=", "v1=abc", b"t=1", "t=abc", "v1=",
                                     "garbage", "t=1,v1"):
            assert verify(secret.encode(), missing_or_malformed, body) is False
        event = json.loads(body)
        assert event == {"type": "generation.succeeded", "id": job_id, "status": "succeeded",
                         "finish_reason": "SUCCESS", "seed": 9}
        assert headers["svd-event-id"] == job_id
        gaps = [b[2] - a[2] for a, b in zip(receiver.received, receiver.received[1:])]
        assert gaps[1] > gaps[0] * 1.5                     # exponential backoff
        deadline = time.time() + 5
        while server.app.state.store.get(job_id).webhook_status != "delivered":
            assert time.time() < deadline
            time.sleep(0.05)
        assert 'svd_webhook_deliveries_total{outcome="delivered"} 1.0' in client.get("/metrics").text
    assert f"target=http://127.0.0.1:{receiver.port} attempt=3" in caplog.text
    assert "s3cret" not in caplog.text                 # nor httpx's own request line


def test_failed_generations_are_announced_too(tmp_path):
    rec = Receiver()
    try:
        with running_server(tmp_path, generator=FakeGenerator(fail_on_motion=13),
                            webhook_allow="127.0.0.1:*") as server, \
                httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            start(client, data={"motion_bucket_id": "13",
                                "webhook_url": f"http://127.0.0.1:{rec.port}/x"})
            rec.wait(1)
            assert json.loads(rec.received[0][1])["status"] == "failed"
    finally:
        rec.close()


@pytest.mark.parametrize("url", ["http://evil.example/hook", "ftp://127.0.0.1/x", "not a url",
                                 "http://user:pw@127.0.0.1:9/x", "http://127.0.0.2:9/x", ""])
def test_targets_outside_the_allow_list_are_400(tmp_path, url):
    with running_server(tmp_path, webhook_allow="127.0.0.1:*") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        assert_error(start(client, data={"webhook_url": url}), 400, "bad_request", "webhook_url")


def test_nothing_is_allowed_by_default(client):
    assert_error(start(client, data={"webhook_url": "http://127.0.0.1:9/x"}), 400, "bad_request",
                 "webhook_url")


def test_allow_list_patterns():
    allow = ["hooks.example.com", "*.corp.example", "127.0.0.1:8080"]
    assert host_allowed("https://hooks.example.com/a", allow)
    assert host_allowed("https://x.corp.example/a", allow)
    assert host_allowed("http://127.0.0.1:8080/a", allow)
    assert not host_allowed("http://127.0.0.1:8081/a", allow)
    assert not host_allowed("https://corp.example.evil.com/a", allow)
    assert sign(b"k", 1, b"{}").startswith("t=1,v1=")


def test_urls_the_client_would_read_differently_are_400(tmp_path):
    bad = ["http://:pw@127.0.0.1:9/x", "http://@127.0.0.1:9/x", "http://a\\b.corp.example/x",
           "http://a%2fb.corp.example/x", " http://127.0.0.1:9/x", "\thttp://127.0.0.1:9/x",
           "http://127.0.0.1:9/x\r\n", "http://127.1:9/x"]
    with running_server(tmp_path, webhook_allow="127.0.0.1:*,*.corp.example") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        for url in bad:
            r = start(client, data={"webhook_url": url})
            assert_error(r, 400, "bad_request", "webhook_url")
        assert start(client, data={"webhook_url": "http://a.corp.example/x"}).status_code == 200


def finished_job(store, url: str) -> str:
    job = Job(id=new_job_id(), owner="o", seed=1, cfg_scale=1.8, motion_bucket_id=127, width=64,
              height=64, created_at=time.time(), state=JobState.SUCCEEDED, webhook_url=url,
              webhook_status="pending")
    store.create(job)
    return job.id


def wait_webhook(store, job_id: str, status: str, timeout: float = 10) -> float:
    deadline = time.time() + timeout
    while store.get(job_id).webhook_status != status:
        assert time.time() < deadline, store.get(job_id).webhook_status
        time.sleep(0.01)
    return time.time()


@pytest.fixture
def hanging_port():
    """A target that accepts connections (the kernel's backlog does) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


def test_a_dead_target_does_not_hold_up_another_targets_events(hanging_port):
    live, store = Receiver(), MemoryJobStore()
    sender = WebhookSender(store, b"k", allow=["127.0.0.1:*"], base_delay_s=0.05,
                           timeout_s=2).start()
    try:
        dead = [finished_job(store, f"http://127.0.0.1:{hanging_port}/x") for _ in range(3)]
        for job_id in dead:
            sender.submit(job_id)
        time.sleep(0.3)                                    # its first attempt is hanging
        submitted = time.time()
        sender.submit(finished_job(store, f"http://127.0.0.1:{live.port}/x"))
        live.wait(1, timeout=3)        # one sender thread: 3 x (5 x 2 s + backoff) behind
        assert live.received[0][2] - submitted < 3
        assert [store.get(j).webhook_status for j in dead] == ["pending"] * 3
    finally:
        stopping = time.time()
        sender.stop()
        stopped_in = time.time() - stopping
        live.close()
    assert stopped_in < 5.5
    assert [store.get(j).webhook_status for j in dead] == ["pending"] * 3   # for housekeeping


def test_the_last_failure_is_logged_counted_and_recorded_without_another_backoff(caplog):
    caplog.set_level(logging.INFO, logger="app.webhooks")
    rec, store, metrics = Receiver(fail_first=100), MemoryJobStore(), Metrics()
    sender = WebhookSender(store, b"k", metrics, allow=[f"127.0.0.1:{rec.port}"], attempts=3,
                           base_delay_s=0.4, timeout_s=2).start()
    try:
        job_id = finished_job(store, f"http://127.0.0.1:{rec.port}/x")
        sender.submit(job_id)
        recorded = wait_webhook(store, job_id, "failed")
        counted = metrics.webhooks.labels("failed")._value.get()
    finally:
        sender.stop()
        rec.close()
    times = [r[2] for r in rec.received]
    assert len(times) == 3 and store.get(job_id).webhook_attempts == 3
    assert times[1] - times[0] >= 0.35 and times[2] - times[1] >= 0.75     # 0.4 s, then 0.8 s
    assert recorded - times[2] < 1.0                   # not after a third backoff (1.6 s)
    assert counted == 1                                # counted when recorded, not later
    lines = [r.getMessage() for r in caplog.records if "event=webhook" in r.getMessage()]
    outcomes = [line.split("outcome=")[1].split()[0] for line in lines]
    assert outcomes == ["retry", "retry", "failed"]    # the last attempt says so itself
    assert "attempt=3" in lines[-1] and "status=503" in lines[-1]


def test_a_target_removed_from_the_allow_list_is_not_delivered(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rec = Receiver()
    url = f"http://127.0.0.1:{rec.port}/hooks/s3cret?token=s3cret"
    try:
        with running_server(tmp_path, workers=0, webhook_allow="127.0.0.1:*") as server, \
                httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            job_id = start(client, data={"webhook_url": url}).json()["id"]    # queued: no worker
        # The operator takes the target off the list and restarts; the job runs afterwards.
        with running_server(tmp_path, webhook_allow="hooks.example.com") as server, \
                httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            assert wait_done(client, job_id).status_code == 200
            wait_webhook(server.app.state.store, job_id, "failed")
            assert server.app.state.store.get(job_id).webhook_attempts == 0
            metrics = client.get("/metrics").text
            assert 'svd_webhook_deliveries_total{outcome="failed"} 1.0' in metrics
    finally:
        rec.close()
    assert rec.received == []
    assert f"outcome=refused target=http://127.0.0.1:{rec.port}" in caplog.text
    assert "s3cret" not in caplog.text
