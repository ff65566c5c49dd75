"""Rate limit, bounded queue, draining: refusals are 429/503 with Retry-After, never more."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from app.api.limits import RateLimiter
from app.jobs.model import JobState
from tests.api.test_start import assert_error, start
from tests.fakes import FakeGenerator
from tests.helpers import KEY_A, KEY_B, jpeg_bytes, png_bytes, running_server


def test_limiter_slides_and_blocks_no_longer_than_the_window():
    now = [0.0]
    limiter = RateLimiter(3, 10.0, clock=lambda: now[0])
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    assert limiter.hit("a") == 10.0
    assert limiter.hit("b") is None                 # per key
    now[0] = 9.5
    assert abs(limiter.hit("a") - 0.5) < 1e-9
    now[0] = 10.0
    assert limiter.hit("a") is None                 # the oldest start left the window


def test_rate_limit_is_429_with_retry_after_and_polls_are_never_limited(tmp_path):
    with running_server(tmp_path, rate_limit="2/2s") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        first = start(client).json()["id"]
        assert start(client).status_code == 200
        r = start(client)
        body = assert_error(r, 429, "rate_limit_exceeded", "rate_limit")
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert "2 generations in 2 s" in body["errors"][0]
        other = httpx.post(server.url + "/v2beta/image-to-video", headers={"authorization": KEY_B},
                           files={"image": ("a.png", png_bytes())})
        assert other.status_code == 200              # another key has its own budget
        for _ in range(50):                          # polls and health checks: unlimited
            assert client.get(f"/v2beta/image-to-video/result/{first}").status_code in (200, 202)
            assert client.get("/healthz").status_code == 200
        time.sleep(int(r.headers["retry-after"]))
        assert start(client).status_code == 200     # no block beyond the window
        metrics = client.get("/metrics").text
        assert 'svd_requests_rejected_total{reason="rate"} 1.0' in metrics


def test_rate_limit_off(tmp_path):
    with running_server(tmp_path, rate_limit="0") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        assert all(start(client).status_code == 200 for _ in range(12))


def test_bounded_queue_per_key_and_in_total(tmp_path):
    gen = FakeGenerator()
    gen.hold = True                                  # the first job runs forever; others queue
    with running_server(tmp_path, generator=gen, max_queued=3, max_queued_per_key=2) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as a, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_B}) as b:
        assert start(a).status_code == 200          # running
        deadline = time.time() + 5
        while not gen.calls:
            assert time.time() < deadline
            time.sleep(0.01)
        assert start(a).status_code == 200 and start(a).status_code == 200   # 2 queued for A
        r = start(a)
        body = assert_error(r, 429, "rate_limit_exceeded", "rate_limit")
        assert "this key" in body["errors"][0] and int(r.headers["retry-after"]) > 0
        assert start(b).status_code == 200          # 3 queued in total
        r = start(b)
        body = assert_error(r, 429, "rate_limit_exceeded")
        assert "queue is full" in body["errors"][0] and "retry-after" in r.headers
        gen.release.set()


def test_draining_refuses_new_work_with_503_and_readyz_says_so(tmp_path):
    with running_server(tmp_path) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        job_id = start(client).json()["id"]
        server.app.state.runtime.draining = True
        r = start(client)
        assert_error(r, 503, "service_unavailable")
        assert int(r.headers["retry-after"]) > 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert "retry-after" in ready.headers
        assert client.get(f"/v2beta/image-to-video/result/{job_id}").status_code in (200, 202)


def test_what_a_key_keeps_stored_is_bounded(tmp_path):
    image = jpeg_bytes(96, 64)
    limit_mb = 2.5 * len(image) / (1024 * 1024)          # room for two inputs, not three
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen, max_stored_mb_per_key=limit_mb) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as a, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_B}) as b:
        assert start(a, image=image).status_code == 200
        assert start(a, image=image).status_code == 200
        r = start(a, image=image)
        body = assert_error(r, 429, "rate_limit_exceeded", "rate_limit")
        assert "MiB" in body["errors"][0] and int(r.headers["retry-after"]) > 0
        assert start(b, image=image).status_code == 200     # another key has its own room
        text = a.get("/metrics").text
        assert 'svd_requests_rejected_total{reason="storage_full"} 1.0' in text
        gen.release.set()


def test_limiter_counts_kept_reservations_and_holds_slots_in_flight():
    now = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: now[0])
    first, second = limiter.reserve("a"), limiter.reserve("a")
    assert first.wait is None and second.wait is None
    assert limiter.reserve("a").wait == 10.0        # two in flight hold both slots
    limiter.release(first)                          # refused: it never counted
    limiter.release(first)                          # twice: no-op
    now[0] = 2.0
    limiter.keep(second)                            # started at 2.0
    third = limiter.reserve("a")
    assert third.wait is None
    limiter.keep(third)
    limiter.keep(third)                             # twice: no-op
    refused = limiter.reserve("a")
    assert refused.wait == 10.0
    limiter.release(refused)                        # a refused reservation frees nothing
    assert limiter.reserve("a").wait == 10.0
    assert limiter.hit("b") is None                 # per key
    now[0] = 10.0
    assert limiter.reserve("a").wait == 2.0         # counted from keep, not from reserve
    now[0] = 11.9
    assert abs(limiter.reserve("a").wait - 0.1) < 1e-9
    now[0] = 12.0
    assert limiter.reserve("a").wait is None


def test_requests_refused_before_starting_do_not_count_against_the_rate(tmp_path):
    with running_server(tmp_path, rate_limit="3/10s") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        for _ in range(3):                           # a size the server does not take: 400
            assert_error(start(client, image=png_bytes(640, 480)), 400, "bad_request", "image")
        too_big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * 1024 * 1024)
        assert_error(start(client, image=too_big), 413, "payload_too_large", "body")
        assert [start(client).status_code for _ in range(3)] == [200, 200, 200]
        r = start(client)                            # the fourth start in the window
        body = assert_error(r, 429, "rate_limit_exceeded", "rate_limit")
        assert "3 generations in 10 s" in body["errors"][0]
        assert 1 <= int(r.headers["retry-after"]) <= 10
        metrics = client.get("/metrics").text
        assert 'svd_requests_rejected_total{reason="rate"} 1.0' in metrics


def test_concurrent_starts_cannot_pass_the_rate(tmp_path):
    with running_server(tmp_path, rate_limit="3/30s") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A},
                         limits=httpx.Limits(max_connections=12)) as client:
        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda _: start(client).status_code, range(12)))
        assert sorted(codes) == [200] * 3 + [429] * 9
        assert sum(server.app.state.store.count(s) for s in JobState) == 3
