"""Event streams share one watcher per process (app/api/event_hub.py), and a key may hold only
so many of them open (SVD_MAX_STREAMS_PER_KEY)."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from sqlalchemy import text

from app.jobs.model import Job, JobState, new_job_id
from app.jobs.sql import SqlJobStore
from app.jobs.tables import make_engine
from app.jobs.memory import MemoryJobStore
from tests.api.test_start import assert_error, start
from tests.fakes import FakeGenerator
from tests.helpers import KEY_A, KEY_B, running_server, sqlite_job_store

RESULT = "/v2beta/image-to-video/result/"


class Stream:
    """One open events stream; a task collects its events until it ends."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.events: list[tuple[int, str, dict]] = []
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        current = {}
        async for line in self.response.aiter_lines():
            if line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(":")
                current[key] = value.strip()
            elif not line and current:
                self.events.append((int(current["id"]), current["event"],
                                    json.loads(current["data"])))
                current = {}
                self.first.set()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.response.aclose()


async def open_streams(http: httpx.AsyncClient, job_id: str, n: int, key: str = KEY_A,
                       first_event: bool = True) -> list[Stream]:
    async def one():
        r = await http.send(http.build_request("GET", RESULT + job_id + "/events",
                                               headers={"authorization": key}), stream=True)
        assert r.status_code == 200, (r.status_code, await r.aread())
        return Stream(r)
    streams = await asyncio.gather(*(one() for _ in range(n)))
    if first_event:
        await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in streams)), 10)
    return list(streams)


async def until(condition, timeout: float = 5.0) -> float:
    """Seconds until condition() held; fails after `timeout`."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "condition never held"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def async_client(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=10,
                             limits=httpx.Limits(max_connections=100))


def count_calls(obj, name: str) -> list:
    """Wrap obj.name so that each call is recorded; returns the record."""
    calls, method = [], getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return method(*args, **kwargs)
    setattr(obj, name, wrapper)
    return calls


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_get_many_returns_the_jobs_that_exist_without_their_images(tmp_path, kind):
    store = MemoryJobStore() if kind == "memory" else sqlite_job_store(tmp_path / "svd.db")
    jobs = [Job(id=new_job_id(), owner="o", seed=1, cfg_scale=1.8, motion_bucket_id=127,
                width=64, height=64, created_at=time.time() + i, image=b"png") for i in range(3)]
    for job in jobs:
        store.create(job)
    wanted = [new_job_id() for _ in range(600)] + [jobs[0].id, jobs[2].id, jobs[0].id]
    got = store.get_many(wanted)
    assert set(got) == {jobs[0].id, jobs[2].id}
    assert all(j.image is None and j.state == JobState.QUEUED for j in got.values())
    assert got[jobs[2].id].created_at == jobs[2].created_at
    assert store.get_many([]) == {}
    store.close()


def test_streams_on_one_job_share_one_lookup_per_tick_and_get_the_same_events(tmp_path):
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        start(client)                                            # runs, held
        queued = start(client).json()["id"]
        store = server.app.state.store
        batched, single = count_calls(store, "get_many"), count_calls(store, "get")

        async def scenario():
            async with async_client(server) as http:
                streams = await open_streams(http, queued, 20)
                batched.clear()
                single.clear()
                await asyncio.sleep(1.0)
                lookups = len(batched)
                per_stream = len(single)
                assert client.delete(RESULT + queued).json()["status"] == "cancelled"
                await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 10)
                return streams, lookups, per_stream

        streams, lookups, per_stream = asyncio.run(scenario())
        # One lookup of all watched jobs per tick (0.25 s), not one per stream and tick (80).
        assert 1 <= lookups <= 6, lookups
        assert all(len(ids) == 1 for ids in batched), batched
        assert per_stream == 0
        first = streams[0].events
        assert [n for _, n, _ in first] == ["queued", "cancelled"]
        assert first[0][0] == 999 and first[0][2]["position"] == 1
        assert all(s.events == first for s in streams)
        gen.release.set()


def test_streams_on_different_jobs_get_their_own_events(tmp_path):
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        running = start(client, data={"seed": "11"}).json()["id"]
        first = start(client, data={"seed": "12"}).json()["id"]
        second = start(client, data={"seed": "13"}).json()["id"]
        store = server.app.state.store
        batched = count_calls(store, "get_many")

        async def scenario():
            async with async_client(server) as http:
                groups = {job: await open_streams(http, job, 3)
                          for job in (running, first, second)}
                gen.release.set()
                await asyncio.wait_for(asyncio.gather(*(s.task for g in groups.values()
                                                        for s in g)), 20)
                return groups

        groups = asyncio.run(scenario())
        assert max(len(set(ids)) for (ids,) in batched) == 3      # all three in one lookup
        for job, seed in ((running, 11), (first, 12), (second, 13)):
            events = groups[job][0].events
            assert all(s.events == events for s in groups[job])
            assert events[-1] == (2000, "done", {"finish_reason": "SUCCESS", "seed": seed})
            ids = [i for i, _, _ in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert groups[running][0].events[0][1] == "progress"
        assert groups[first][0].events[0][:2] == (999, "queued")
        assert groups[second][0].events[0][:2] == (998, "queued")


def test_a_gone_client_is_unsubscribed_and_the_hub_stops_with_nobody_watching(tmp_path):
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        start(client)
        queued = start(client).json()["id"]
        hub = server.app.state.event_hub
        assert not hub.running

        async def scenario():
            async with async_client(server) as http:
                streams = await open_streams(http, queued, 3)
                assert hub.running and hub.open_streams() == 3
                await streams[0].close()                           # the client goes away
                # Noticed at once while the job stays queued (not at the next keep-alive).
                assert await until(lambda: hub.open_streams() == 2) < 2.0
                lookups = hub.lookups
                await asyncio.gather(*(s.close() for s in streams[1:]))
                await until(lambda: hub.open_streams() == 0 and not hub.running, 2.0)
                await asyncio.sleep(0.6)
                assert hub.lookups - lookups <= 3                  # and it stays stopped
                assert not hub.running
                again = await open_streams(http, queued, 1)        # starts again on demand
                assert hub.running and again[0].events[0][1] == "queued"
                await again[0].close()
                await until(lambda: not hub.running, 2.0)

        asyncio.run(scenario())
        gen.release.set()


def test_streams_per_key_are_limited(tmp_path):
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen, max_streams_per_key=3) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        start(client)
        mine = start(client).json()["id"]
        theirs = start(client, headers={"authorization": KEY_B}).json()["id"]

        async def scenario():
            async with async_client(server) as http:
                streams = await open_streams(http, mine, 3)
                over = await http.get(RESULT + mine + "/events", headers={"authorization": KEY_A})
                body = assert_error(over, 429, "rate_limit_exceeded")
                assert int(over.headers["retry-after"]) >= 1
                assert body["errors"] == ["rate_limit: this key already has 3 event streams open"]
                other = await open_streams(http, theirs, 1, key=KEY_B)   # another key: fine
                await streams[0].close()
                t0 = time.monotonic()
                while True:                                        # the slot comes back
                    r = await http.send(http.build_request(
                        "GET", RESULT + mine + "/events", headers={"authorization": KEY_A}),
                        stream=True)
                    if r.status_code == 200:
                        break
                    await r.aclose()
                    assert time.monotonic() - t0 < 2.0, "the closed stream's slot never freed"
                    await asyncio.sleep(0.05)
                streams[0] = Stream(r)
                await asyncio.gather(*(s.close() for s in streams + other))

        asyncio.run(scenario())
        assert 'svd_requests_rejected_total{reason="streams"} 1.0' in client.get("/metrics").text
        gen.release.set()


def test_postgres_changes_from_other_processes_arrive_by_notify(tmp_path, pg):
    pg, _ = pg
    """An API process without workers; a worker elsewhere (here: its own store) claims, moves
    and fails the job. With the hub's regular poll 30 s apart, only NOTIFY can bring the
    events within a second; with the listening connection dropped, nothing is missed."""
    with running_server(tmp_path, database_url=pg, workers=0) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        first, second = start(client).json()["id"], start(client).json()["id"]
        hub = server.app.state.event_hub
        worker = SqlJobStore.from_url(pg)

        async def next_event(stream: Stream, count: int) -> float:
            return await until(lambda: len(stream.events) >= count, 5.0)

        async def scenario():
            async with async_client(server) as http:
                (a,), (b,) = await open_streams(http, first, 1), await open_streams(http, second, 1)
                assert [e[:2] for e in a.events + b.events] == [(999, "queued"), (998, "queued")]
                await until(lambda: hub._listening(), 10.0)
                hub.fallback_s = 30.0
                await asyncio.sleep(hub.poll_s + 0.3)              # the last quick tick passes
                job = await asyncio.to_thread(worker.claim, "elsewhere/gpu0", time.time(), 30)
                assert job.id == first
                assert await next_event(a, 2) < 1.0                # its own change
                assert await next_event(b, 2) < 1.0                # the queue moved
                assert a.events[1][:2] == (1000, "progress")
                assert b.events[1][:2] == (999, "queued")
                await asyncio.to_thread(worker.set_progress, job, 0.5, 4, 8)
                assert await next_event(a, 3) < 1.0
                assert a.events[2][:2] == (1004, "progress") and a.events[2][2]["step"] == 4
                # The listener's connection drops: nothing is missed (the hub polls every
                # tick until it is back, then looks up everything once).
                with make_engine(pg).begin() as c:
                    assert c.execute(text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE query = 'LISTEN svd_job_changed'")).scalar() == 1
                now = time.time()
                await asyncio.to_thread(worker.finish, job, JobState.FAILED, now, now + 60,
                                        error="out of luck")
                await next_event(a, 4)
                assert a.events[3] == (2000, "failed", {"error": "out of luck"})
                await asyncio.gather(a.close(), b.close())

        try:
            asyncio.run(scenario())
        finally:
            worker.close()
