"""Batching (SVD_MAX_BATCH): compatible queued jobs run in one generator call; each still
gets its own result and its own outcome. The batch claim on every store, PostgreSQL too."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from app.config import Settings
from app.jobs import migrate
from app.jobs.model import Job, JobState, new_job_id
from app.jobs.sql import SqlJobStore
from app.jobs.tables import make_engine
from app.jobs.worker import Worker, WorkerConfig
from app.results.files import FileResultStore
from tests.fakes import FakeGenerator
from tests.helpers import inspect_mp4, png_bytes, sqlite_job_store

T0 = 1_000_000.0


@pytest.fixture
def store(tmp_path):
    s = sqlite_job_store(tmp_path / "jobs.db")
    yield s
    s.close()


def make_worker(tmp_path, store, gen, name="w0", **cfg) -> Worker:
    cfg.setdefault("max_batch", 4)
    worker = Worker(name, store=store, results=FileResultStore(tmp_path / name),
                    generator_factory=lambda: gen, config=WorkerConfig(idle_poll_s=0.05, **cfg))
    worker.generator = gen
    return worker


def job(seed=1, created=T0, width=64, height=64, cfg_scale=1.8, **kw) -> Job:
    return Job(id=new_job_id(), owner="o", seed=seed, cfg_scale=cfg_scale, motion_bucket_id=kw.pop(
        "motion", 127), width=width, height=height, created_at=created,
        image=png_bytes(width, height), **kw)


def add(store, **kw) -> Job:
    j = job(**kw)
    store.create(j)
    return j


def drain_queue(worker) -> None:
    while worker.run_once():
        pass
    assert worker.wait_finished(10)


def seeds(requests) -> list[int]:
    return [r.seed for r in requests]


def test_settings_reach_the_worker_config():
    cfg = WorkerConfig.from_settings(Settings(overlap=False, max_batch=4))
    assert (cfg.overlap, cfg.max_batch) == (False, 4)
    assert WorkerConfig.from_settings(Settings()).overlap is True


def test_four_compatible_jobs_are_one_generator_call_and_each_gets_its_own_video(tmp_path, store):
    gen = FakeGenerator()
    worker = make_worker(tmp_path, store, gen)
    jobs = [add(store, seed=10 + i, created=T0 + i, steps=2) for i in range(4)]
    drain_queue(worker)
    assert [seeds(b) for b in gen.batches] == [[10, 11, 12, 13]] and gen.calls == []

    # The same jobs one at a time give byte-identical videos (encoding is deterministic).
    alone_store = sqlite_job_store(tmp_path / "alone.db")
    alone = make_worker(tmp_path, alone_store, FakeGenerator(), name="w1", max_batch=1)
    twins = [add(alone_store, seed=j.seed, created=j.created_at, steps=2) for j in jobs]
    drain_queue(alone)
    videos = []
    for j, twin in zip(jobs, twins):
        got = store.get(j.id)
        assert got.state == JobState.SUCCEEDED and got.progress == 1.0 and got.step == 2
        data = worker.results.path(got.result_key).read_bytes()
        assert inspect_mp4(data).frames == 4
        assert data == alone.results.path(alone_store.get(twin.id).result_key).read_bytes()
        videos.append(data)
    assert len(set(videos)) == 4                     # per-seed results differ
    alone_store.close()


def test_incompatible_jobs_are_not_batched(tmp_path, store):
    gen = FakeGenerator()
    worker = make_worker(tmp_path, store, gen)
    a = add(store, seed=1, created=T0, steps=2)
    add(store, seed=2, created=T0 + 1, steps=2, width=96)           # another size
    add(store, seed=3, created=T0 + 2, steps=3)                     # other steps
    add(store, seed=4, created=T0 + 3, steps=2, cfg_scale=1.0)      # no guidance
    add(store, seed=5, created=T0 + 4, steps=2, num_frames=6)       # other frames
    add(store, seed=6, created=T0 + 5)                              # steps unset
    add(store, seed=7, created=T0 + 6, steps=2, cfg_scale=3.0)      # fits with a
    drain_queue(worker)
    assert [seeds(b) for b in gen.batches] == [[1, 7]]
    assert seeds(gen.calls) == [2, 3, 4, 5, 6]
    assert store.get(a.id).state == JobState.SUCCEEDED
    assert store.count(JobState.SUCCEEDED) == 7


def run_in_background(worker, store, running: Job) -> threading.Thread:
    """Start worker.run_once on a thread; return once `running` has made progress."""
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    deadline = time.monotonic() + 10
    while not store.get(running.id).progress:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return runner


def test_cancelling_one_job_of_a_batch_leaves_the_others(tmp_path, store):
    gen = FakeGenerator(step_delay=0.03)
    worker = make_worker(tmp_path, store, gen)
    jobs = [add(store, seed=i, created=T0 + i, steps=20) for i in range(3)]
    runner = run_in_background(worker, store, jobs[1])
    assert store.cancel(jobs[1].id, "o", time.time(), time.time() + 60) == "requested"
    runner.join(10)
    assert worker.wait_finished(10)
    states = [store.get(j.id).state for j in jobs]
    assert states == [JobState.SUCCEEDED, JobState.CANCELLED, JobState.SUCCEEDED]
    assert len(gen.batches) == 1 and gen.calls == []


def test_cancelling_every_job_of_a_batch_stops_the_generation(tmp_path, store):
    gen = FakeGenerator(step_delay=0.03)
    worker = make_worker(tmp_path, store, gen)
    jobs = [add(store, seed=i, created=T0 + i, steps=300) for i in range(2)]   # ~9 s
    t = time.monotonic()
    runner = run_in_background(worker, store, jobs[1])
    for j in jobs:
        store.cancel(j.id, "o", time.time(), time.time() + 60)
    runner.join(10)
    assert time.monotonic() - t < 3
    assert [store.get(j.id).state for j in jobs] == [JobState.CANCELLED] * 2


def test_stopping_hands_every_job_of_a_batch_back(tmp_path, store):
    gen = FakeGenerator(step_delay=0.03)
    worker = make_worker(tmp_path, store, gen)
    jobs = [add(store, seed=i, created=T0 + i, steps=300) for i in range(3)]
    runner = run_in_background(worker, store, jobs[0])
    worker.stop()
    runner.join(10)
    for j in jobs:
        got = store.get(j.id)
        assert (got.state, got.worker) == (JobState.QUEUED, None)
    assert not worker.busy


def test_out_of_memory_in_a_batch_runs_the_jobs_one_at_a_time(tmp_path, store):
    gen = FakeGenerator(oom_batch_over=1)
    worker = make_worker(tmp_path, store, gen)
    jobs = [add(store, seed=i, created=T0 + i) for i in range(3)]
    drain_queue(worker)
    assert [seeds(b) for b in gen.batches] == [[0, 1, 2]]
    assert seeds(gen.calls) == [0, 1, 2]
    for j in jobs:
        got = store.get(j.id)
        assert got.state == JobState.SUCCEEDED and got.attempts == 1


def test_out_of_memory_fallback_keeps_the_lower_memory_ladder(tmp_path, store):
    gen = FakeGenerator(oom_batch_over=1, oom_below_level=1)
    worker = make_worker(tmp_path, store, gen)
    jobs = [add(store, seed=i, created=T0 + i) for i in range(2)]
    drain_queue(worker)
    assert gen.levels == [0, 0, 1, 0, 1]             # batch, then each job: 0 → OOM, 1 → ok
    assert all(store.get(j.id).state == JobState.SUCCEEDED for j in jobs)


def test_a_job_that_breaks_the_batch_fails_alone(tmp_path, store):
    gen = FakeGenerator(fail_on_motion=13)
    worker = make_worker(tmp_path, store, gen)
    good1 = add(store, seed=1, created=T0)
    bad = add(store, seed=2, created=T0 + 1, motion=13)
    good2 = add(store, seed=3, created=T0 + 2)
    drain_queue(worker)
    assert store.get(bad.id).state == JobState.FAILED and "blew up" in store.get(bad.id).error
    assert store.get(good1.id).state == store.get(good2.id).state == JobState.SUCCEEDED


def test_the_next_batch_is_prefetched_too(tmp_path, store):
    gen = FakeGenerator(decode_delay=0.2)
    worker = make_worker(tmp_path, store, gen, max_batch=2)
    jobs = [add(store, seed=i, created=T0 + i) for i in range(4)]
    assert worker.run_once()
    assert [store.get(j.id).state for j in jobs[2:]] == [JobState.QUEUED] * 2
    assert worker._ahead.job_id == jobs[2].id             # the next batch's head, decoded
    drain_queue(worker)
    assert [seeds(b) for b in gen.batches] == [[0, 1], [2, 3]]
    assert store.count(JobState.SUCCEEDED) == 4


# -- the batch claim, on every store ------------------------------------------------------

def test_claim_compatible_takes_the_oldest_fitting_jobs(any_store):
    s = any_store
    first = add(s, created=T0, steps=None)
    fit_new = add(s, created=T0 + 9, cfg_scale=2.5)
    add(s, created=T0 + 1, steps=25)                  # steps set: not the same as unset
    add(s, created=T0 + 2, cfg_scale=1.0)             # guidance off
    add(s, created=T0 + 3, width=96)
    fit_old = add(s, created=T0 + 4)
    fit_mid = add(s, created=T0 + 5)
    claimed = s.claim("w1", T0 + 10, 30)
    assert claimed.id == first.id
    got = s.claim_compatible(claimed, "w1", T0 + 10, 30, limit=2)
    assert [j.id for j in got] == [fit_old.id, fit_mid.id]
    for j in got:
        assert (j.state, j.worker, j.attempts) == (JobState.RUNNING, "w1", 1)
        assert j.lease_until == T0 + 40
        assert j.image == png_bytes()
    assert [j.id for j in s.claim_compatible(claimed, "w2", T0, 30, limit=5)] == [fit_new.id]
    assert s.claim_compatible(claimed, "w2", T0, 30, limit=5) == []
    assert s.count(JobState.QUEUED) == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_batch_claims_never_share_a_job(request, tmp_path, backend):
    if backend == "postgres":
        engine = make_engine(request.getfixturevalue("postgres_url"))
        migrate.upgrade(engine)
        with engine.begin() as c:
            c.execute(text("TRUNCATE jobs"))
        s = SqlJobStore(engine)
    else:
        s = sqlite_job_store(tmp_path / "race.db")
    for i in range(60):
        s.create(job(seed=i + 1, created=T0 + i, steps=2 + i % 2))
    got, lock = [], threading.Lock()

    def claimer(name):
        while (first := s.claim(name, T0, 30)) is not None:
            more = s.claim_compatible(first, name, T0, 30, limit=3)
            assert len(more) <= 3 and all(j.steps == first.steps for j in more)
            with lock:
                got.extend(j.id for j in [first, *more])

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 60
    s.close()


def test_one_heartbeat_loop_keeps_every_lease_of_a_batch(tmp_path, store):
    gen = FakeGenerator(step_delay=0.1)
    worker = make_worker(tmp_path, store, gen, lease_s=0.5, heartbeat_s=0.1)
    jobs = [add(store, seed=30 + i, created=T0 + i, steps=15) for i in range(4)]   # ~1.5 s
    requeued, beating, done = [], [], threading.Event()

    def watch():                              # what the sweeper and other workers do
        while not done.is_set():
            requeued.append(store.requeue_expired(time.time(), 3, time.time() + 60))
            beating.append(sum(t.name == "heartbeat-w0" for t in threading.enumerate()))
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    drain_queue(worker)
    done.set()
    t.join()
    assert [seeds(b) for b in gen.batches] == [[30, 31, 32, 33]]
    assert sum(requeued) == 0 and len(requeued) > 10
    assert max(beating) == 1                  # one thread for the four leases
    assert all(store.get(j.id).state == JobState.SUCCEEDED and store.get(j.id).attempts == 1
               for j in jobs)
