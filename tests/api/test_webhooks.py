"""Webhooks: allow-list, signed deliveries a receiver can verify, retries with backoff."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from app.webhooks import host_allowed, sign, verify
from tests.api.test_start import assert_error, start
from tests.conftest import KEY_A, running_server, wait_done
from tests.fakes import FakeGenerator


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


def test_signed_event_retried_until_delivered(tmp_path, receiver):
    secret = "whsec-test"
    with running_server(tmp_path, webhook_allow=f"127.0.0.1:{receiver.port}", webhook_secret=secret,
                        webhook_retry_base_s=0.2) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        url = f"http://127.0.0.1:{receiver.port}/hooks/svd"
        job_id = start(client, data={"seed": "9", "webhook_url": url}).json()["id"]
        assert wait_done(client, job_id).status_code == 200
        receiver.wait(3)                                   # 503, 503, then 200
        headers, body, _ = receiver.received[-1]
        assert verify(secret.encode(), headers["svd-signature"], body)
        assert not verify(b"another-secret", headers["svd-signature"], body)
        assert not verify(secret.encode(), headers["svd-signature"], body + b" ")
        for missing_or_malformed in (None, "", "t", "t=x,v1=", "v1=abc", b"t=1"):
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
