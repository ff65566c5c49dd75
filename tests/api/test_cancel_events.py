"""Extensions: cancel (DELETE), live progress (SSE), invisible to Stability-only clients."""
from __future__ import annotations

import json
import time

import httpx

from tests.api.test_start import assert_error, start
from tests.fakes import FakeGenerator
from tests.helpers import KEY_A, KEY_B, running_server, wait_done

RESULT = "/v2beta/image-to-video/result/"


def read_events(client, job_id, **headers) -> list[tuple[int, str, dict]]:
    events, current = [], {}
    with client.stream("GET", RESULT + job_id + "/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(":")
                current[key] = value.strip()
            elif not line and current:
                events.append((int(current["id"]), current["event"], json.loads(current["data"])))
                current = {}
    return events


def test_cancel_a_queued_job_at_once_and_only_by_its_owner(tmp_path):
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        start(client)                                           # runs (held)
        queued = start(client).json()["id"]
        other = httpx.delete(server.url + RESULT + queued, headers={"authorization": KEY_B})
        assert_error(other, 404, "generation_not_found")
        r = client.delete(RESULT + queued)
        assert r.status_code == 200 and r.json() == {"id": queued, "status": "cancelled"}
        body = assert_error(client.get(RESULT + queued), 404, "generation_not_found")
        assert body["errors"] == ["id: the generation was cancelled"]
        assert read_events(client, queued)[-1][1] == "cancelled"
        gen.release.set()


def test_cancel_a_running_job_at_the_next_step_and_the_worker_goes_on(tmp_path):
    gen = FakeGenerator(step_delay=0.05)
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        job_id = start(client).json()["id"]
        server.generator.default_steps = 400                   # ~20 s unless cancelled
        gen.default_steps = 400
        deadline = time.time() + 10
        while client.get(RESULT + job_id).json().get("stage") not in ("denoising",):
            assert time.time() < deadline
            time.sleep(0.05)
        t = time.time()
        assert client.delete(RESULT + job_id).json()["status"] == "cancelling"
        r = wait_done(client, job_id)
        assert time.time() - t < 3
        assert assert_error(r, 404, "generation_not_found")["errors"] == ["id: the generation was cancelled"]
        gen.default_steps = 3
        nxt = start(client).json()["id"]
        assert wait_done(client, nxt).status_code == 200
        assert_error(client.delete(RESULT + nxt), 409, "generation_finished")
        metrics = client.get("/metrics").text
        assert 'svd_jobs_finished_total{started="true",state="cancelled"} 1.0' in metrics
        assert 'started="false",state="cancelled"' not in metrics


def test_a_job_off_the_gpu_cancels_at_once_and_the_next_one_keeps_its_place(tmp_path):
    """Overlap: while job A's VAE decode runs, job B's image is decoded ahead; B still shows
    its queue position, and a cancel of either is done at once, not after the decode."""
    gen = FakeGenerator(decode_delay=3.0)
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        a, b = (start(client).json()["id"] for _ in range(2))
        deadline = time.time() + 10
        while client.get(RESULT + a).json().get("stage") != "decoding":
            assert time.time() < deadline
            time.sleep(0.02)
        t = time.time()
        while server.app.state.backend.workers[0]._ahead is None:   # B's image decoded
            assert time.time() - t < 1.5
            time.sleep(0.02)
        poll = client.get(RESULT + b)
        assert poll.status_code == 202
        assert (poll.json()["stage"], poll.json()["queue_position"]) == ("queued", 1)
        for job_id in (b, a):
            assert client.delete(RESULT + job_id).json() == {"id": job_id, "status": "cancelled"}
            body = assert_error(client.get(RESULT + job_id), 404, "generation_not_found")
            assert body["errors"] == ["id: the generation was cancelled"]
        assert time.time() - t < 2.0                   # the decode (3 s) is still running
        metrics = client.get("/metrics").text
        assert 'svd_jobs_finished_total{started="false",state="cancelled"} 1.0' in metrics
        assert 'svd_jobs_finished_total{started="true",state="cancelled"} 1.0' in metrics
        nxt = start(client).json()["id"]               # the worker goes on
        assert wait_done(client, nxt).status_code == 200
    assert len(gen.started) == 2                       # A and the next: B never ran


def test_events_stream_progress_then_done_and_resume(tmp_path):
    gen = FakeGenerator(step_delay=0.1)
    gen.default_steps = 8
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        job_id = start(client, data={"seed": "77"}).json()["id"]
        events = read_events(client, job_id)
        names = [name for _, name, _ in events]
        assert names[-1] == "done" and events[-1][2] == {"finish_reason": "SUCCESS", "seed": 77}
        assert "progress" in names
        ids = [i for i, _, _ in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        steps = [d for _, n, d in events if n == "progress" and "step" in d]
        assert steps and all(d["steps"] == 8 for d in steps)
        # Reconnecting after the last event: nothing is sent again.
        assert read_events(client, job_id, **{"last-event-id": str(ids[-1])}) == []
        # Reconnecting after an early event: only the job's state now (done) comes again.
        assert [n for _, n, _ in read_events(client, job_id, **{"last-event-id": str(ids[0])})] \
            == ["done"]
        assert_error(httpx.get(server.url + RESULT + job_id + "/events",
                               headers={"authorization": KEY_B}), 404, "generation_not_found")


def test_cancelling_a_queued_job_announces_it_at_once(tmp_path):
    from tests.api.test_webhooks import Receiver
    gen = FakeGenerator()
    gen.hold = True
    rec = Receiver()
    try:
        with running_server(tmp_path, generator=gen, webhook_allow="127.0.0.1:*") as server, \
                httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            start(client)
            queued = start(client, data={"webhook_url": f"http://127.0.0.1:{rec.port}/h"}).json()["id"]
            assert client.delete(RESULT + queued).json()["status"] == "cancelled"
            rec.wait(1, timeout=10)
            assert json.loads(rec.received[0][1])["status"] == "cancelled"
            metrics = client.get("/metrics").text
            assert 'svd_jobs_finished_total{started="false",state="cancelled"} 1.0' in metrics
            assert 'started="true",state="cancelled"' not in metrics
            gen.release.set()
    finally:
        rec.close()
