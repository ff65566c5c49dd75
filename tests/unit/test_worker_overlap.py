"""Overlap (SVD_OVERLAP): the generator starts the next job while the last video is encoded
and stored; the next job is claimed while the current one's last step runs. Real SQLite
store, fake generator, real encoder (slowed down where the test needs a long finish)."""
from __future__ import annotations

import threading
import time

import pytest

from app.config import Settings
from app.jobs import migrate
from app.jobs.model import Job, JobState, new_job_id
from app.jobs.sql import SqlJobStore
from app.jobs.tables import make_engine
from app.jobs.worker import Worker, WorkerConfig
from app.runtime import Runtime
from app.results.files import FileResultStore
from inference.encode import encode_video
from tests.fakes import FakeGenerator
from tests.helpers import inspect_mp4, png_bytes


@pytest.fixture
def store(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate.upgrade(engine)
    s = SqlJobStore(engine)
    yield s
    s.close()


def make_worker(tmp_path, store, gen, **cfg) -> Worker:
    worker = Worker("w0", store=store, results=FileResultStore(tmp_path / "results"),
                    generator_factory=lambda: gen, config=WorkerConfig(idle_poll_s=0.05, **cfg))
    worker.generator = gen
    return worker


def add_job(store, seed: int, created: float | None = None, **kw) -> Job:
    j = Job(id=new_job_id(), owner="o", seed=seed, cfg_scale=1.8, motion_bucket_id=127,
            width=64, height=64, created_at=created or time.time(), image=png_bytes(), **kw)
    store.create(j)
    return j


@pytest.fixture
def slow_encode(monkeypatch):
    """The real encoder after a pause; `entered` is set when an encode begins."""
    entered = threading.Event()
    pause = {"s": 0.3}

    def encode(frames, path, fps, fmt="mp4"):
        entered.set()
        time.sleep(pause["s"])
        encode_video(frames, path, fps, fmt)

    monkeypatch.setattr("app.jobs.finisher.encode_video", encode)
    encode.entered, encode.pause = entered, pause
    return encode


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def run_all(worker, store, jobs, timeout=20.0) -> None:
    worker.start()
    try:
        wait_for(lambda: all(store.get(j.id).state.finished for j in jobs), timeout)
    finally:
        worker.stop()


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap-on", "overlap-off"])
def test_the_next_job_generates_while_the_last_video_is_stored(tmp_path, store, slow_encode,
                                                                overlap):
    gen = FakeGenerator(step_delay=0.01)
    worker = make_worker(tmp_path, store, gen, overlap=overlap)
    jobs = [add_job(store, seed=100 + i, created=1000.0 + i, steps=2) for i in range(4)]
    run_all(worker, store, jobs)

    started = {seeds[0]: t for t, seeds in gen.started}
    done = [store.get(j.id) for j in jobs]
    for got in done:                       # every video made it, playable
        assert got.state == JobState.SUCCEEDED and got.attempts == 1
        assert inspect_mp4(worker.results.path(got.result_key).read_bytes()).frames == 4
    for n in range(3):
        began_next = started[jobs[n + 1].seed]
        if overlap:                        # the generator did not wait for the encoder
            assert began_next < done[n].finished_at
        else:
            assert began_next > done[n].finished_at
    if overlap:    # bounded: one video finishing, one waiting; the third generation waits
        assert started[jobs[3].seed] > done[0].finished_at


def test_the_lease_is_kept_while_the_video_is_finished(tmp_path, store, slow_encode):
    slow_encode.pause["s"] = 1.5                     # three leases long
    worker = make_worker(tmp_path, store, FakeGenerator(), lease_s=0.5, heartbeat_s=0.1)
    j = add_job(store, seed=7)
    assert worker.run_once()
    assert store.get(j.id).state == JobState.RUNNING  # handed to the finisher
    assert worker.busy
    requeued = []
    while worker.finisher.pending:                   # what the sweeper and other workers do
        requeued.append(store.requeue_expired(time.time(), 3, time.time() + 60))
        time.sleep(0.05)
    assert sum(requeued) == 0 and len(requeued) > 10
    got = store.get(j.id)
    assert got.state == JobState.SUCCEEDED and got.attempts == 1 and not worker.busy


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap-on", "overlap-off"])
def test_cancel_while_the_video_is_encoded_cancels_it(tmp_path, store, slow_encode, overlap):
    slow_encode.pause["s"] = 0.5
    worker = make_worker(tmp_path, store, FakeGenerator(), overlap=overlap)
    doomed, other = add_job(store, seed=1, created=1000.0), add_job(store, seed=2, created=1001.0)
    worker.start()
    try:
        assert slow_encode.entered.wait(10)
        assert store.cancel(doomed.id, "o", time.time(), time.time() + 60) == "requested"
        wait_for(lambda: store.get(doomed.id).state.finished and store.get(other.id).state.finished)
    finally:
        worker.stop()
    got = store.get(doomed.id)
    assert got.state == JobState.CANCELLED and got.result_key is None
    assert store.get(other.id).state == JobState.SUCCEEDED
    names = sorted(p.name for p in worker.results.root.iterdir())
    assert names == [f"{other.id}.mp4"]              # nothing kept of the cancelled one


def prefetched(tmp_path, store, slow_encode):
    """A worker busy with job A (its VAE decode runs) and job B already claimed for next."""
    slow_encode.pause["s"] = 0.3
    gen = FakeGenerator(decode_delay=1.0)
    worker = make_worker(tmp_path, store, gen)
    a, b = add_job(store, seed=1, created=1000.0), add_job(store, seed=2, created=1001.0)
    worker.start()
    wait_for(lambda: store.get(b.id).state == JobState.RUNNING)
    assert len(gen.started) == 1                     # B is claimed, not generating
    return worker, gen, a, b


def test_draining_hands_a_prefetched_job_back_and_finishes_the_one_in_hand(tmp_path, store,
                                                                            slow_encode):
    worker, gen, a, b = prefetched(tmp_path, store, slow_encode)
    runtime = Runtime(Settings(data_dir=tmp_path), None, None)
    runtime.workers.append(worker)
    runtime.request_shutdown = lambda: None
    runtime.drain(grace_s=10)                        # returns once nothing is in hand
    worker.stop()
    assert not worker.busy
    assert store.get(a.id).state == JobState.SUCCEEDED
    got = store.get(b.id)
    assert (got.state, got.worker, got.attempts) == (JobState.QUEUED, None, 1)   # as release does
    assert [seeds for _, seeds in gen.started] == [[1]]

    again = make_worker(tmp_path, store, FakeGenerator())      # and it is not lost
    run_all(again, store, [b])
    assert store.get(b.id).state == JobState.SUCCEEDED and store.get(b.id).attempts == 2


def test_stopping_hands_a_prefetched_job_back(tmp_path, store, slow_encode):
    worker, gen, a, b = prefetched(tmp_path, store, slow_encode)
    worker.stop(timeout=10)
    assert not worker.busy
    assert store.get(a.id).state == JobState.SUCCEEDED      # generated: stored before stopping
    assert store.get(b.id).state == JobState.QUEUED
    assert [seeds for _, seeds in gen.started] == [[1]]


def test_no_prefetch_without_overlap(tmp_path, store):
    gen = FakeGenerator(decode_delay=0.3)
    worker = make_worker(tmp_path, store, gen, overlap=False)
    a, b = add_job(store, seed=1, created=1000.0), add_job(store, seed=2, created=1001.0)
    assert worker.run_once()
    assert store.get(a.id).state == JobState.SUCCEEDED
    assert store.get(b.id).state == JobState.QUEUED
