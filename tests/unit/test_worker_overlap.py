"""Overlap (SVD_OVERLAP): the generator starts the next job while the last video is encoded
and stored; the next job's image is decoded (the job left queued) while the current one's VAE
decode runs. Real SQLite
store, fake generator, real encoder (slowed down where the test needs a long finish)."""
from __future__ import annotations

import threading
import time

import pytest

from app.config import Settings
from app.jobs import migrate
from app.jobs.model import Job, JobState, new_job_id
from app.jobs.sql import SqlJobStore
from app.jobs.store import CancelOutcome
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
def test_cancel_while_the_video_is_encoded_cancels_it_at_once(tmp_path, store, slow_encode,
                                                               overlap):
    slow_encode.pause["s"] = 1.0
    worker = make_worker(tmp_path, store, FakeGenerator(), overlap=overlap)
    doomed, other = add_job(store, seed=1, created=1000.0), add_job(store, seed=2, created=1001.0)
    worker.start()
    try:
        assert slow_encode.entered.wait(10)
        outcome = store.cancel(doomed.id, "o", time.time(), time.time() + 60)
        assert outcome == CancelOutcome.CANCELLED_RUNNING
        got = store.get(doomed.id)                   # not after the encode: now
        assert (got.state, got.error) == (JobState.CANCELLED, "cancelled by its owner")
        wait_for(lambda: store.get(other.id).state.finished and not worker.busy)
    finally:
        worker.stop()
    got = store.get(doomed.id)
    assert got.state == JobState.CANCELLED and got.result_key is None
    assert store.get(other.id).state == JobState.SUCCEEDED
    names = sorted(p.name for p in worker.results.root.iterdir())
    assert names == [f"{other.id}.mp4"]              # nothing kept of the cancelled one


def decoding(tmp_path, store, slow_encode, **gen):
    """A worker busy with job A (its VAE decode runs) and job B queued next, its image
    decoded ahead."""
    slow_encode.pause["s"] = 0.3
    gen = FakeGenerator(decode_delay=1.5, **gen)
    worker = make_worker(tmp_path, store, gen)
    a, b = add_job(store, seed=1, created=1000.0), add_job(store, seed=2, created=1001.0)
    worker.start()
    wait_for(lambda: worker._ahead is not None)
    got = store.get(a.id)
    assert got.state == JobState.RUNNING and got.step == got.total_steps   # decoding
    return worker, gen, a, b


def test_the_job_decoded_ahead_stays_queued_and_cancels_at_once(tmp_path, store, slow_encode):
    worker, gen, a, b = decoding(tmp_path, store, slow_encode)
    try:
        assert worker._ahead.job_id == b.id and worker._ahead.request.seed == 2
        got = store.get(b.id)
        assert (got.state, got.attempts) == (JobState.QUEUED, 0)
        assert store.queue_position(got) == 1
        assert store.cancel(b.id, "o", time.time(), time.time() + 60) == CancelOutcome.CANCELLED
        c = add_job(store, seed=3, created=1002.0)
        wait_for(lambda: store.get(c.id).state.finished)
    finally:
        worker.stop()
    assert store.get(a.id).state == store.get(c.id).state == JobState.SUCCEEDED
    assert store.get(b.id).state == JobState.CANCELLED
    assert [seeds for _, seeds in gen.started] == [[1], [3]]    # B never ran


def test_cancel_during_the_vae_decode_is_at_once_and_the_worker_goes_on(tmp_path, store,
                                                                        slow_encode):
    worker, gen, a, b = decoding(tmp_path, store, slow_encode)
    try:
        t = time.monotonic()
        assert store.cancel(a.id, "o", time.time(), time.time() + 60) == \
            CancelOutcome.CANCELLED_RUNNING
        assert store.get(a.id).state == JobState.CANCELLED
        assert time.monotonic() - t < 0.5            # not after the decode (1.5 s)
        wait_for(lambda: store.get(b.id).state.finished and not worker.busy)
    finally:
        worker.stop()
    assert store.get(b.id).state == JobState.SUCCEEDED
    assert store.get(a.id).result_key is None
    assert sorted(p.name for p in worker.results.root.iterdir()) == [f"{b.id}.mp4"]


def test_draining_finishes_the_job_in_hand_and_leaves_the_next_queued(tmp_path, store,
                                                                      slow_encode):
    worker, gen, a, b = decoding(tmp_path, store, slow_encode)
    runtime = Runtime(Settings(data_dir=tmp_path), None, None)
    runtime.workers.append(worker)
    runtime.request_shutdown = lambda: None
    runtime.drain(grace_s=10)                        # returns once nothing is in hand
    worker.stop()
    assert not worker.busy
    assert store.get(a.id).state == JobState.SUCCEEDED
    got = store.get(b.id)
    assert (got.state, got.worker, got.attempts) == (JobState.QUEUED, None, 0)
    assert [seeds for _, seeds in gen.started] == [[1]]


def test_stopping_leaves_the_next_job_queued(tmp_path, store, slow_encode):
    worker, gen, a, b = decoding(tmp_path, store, slow_encode)
    worker.stop(timeout=10)
    assert not worker.busy
    assert store.get(a.id).state == JobState.SUCCEEDED      # generated: stored before stopping
    assert (store.get(b.id).state, store.get(b.id).attempts) == (JobState.QUEUED, 0)
    assert [seeds for _, seeds in gen.started] == [[1]]


def test_no_prefetch_without_overlap(tmp_path, store):
    gen = FakeGenerator(decode_delay=0.3)
    worker = make_worker(tmp_path, store, gen, overlap=False)
    a, b = add_job(store, seed=1, created=1000.0), add_job(store, seed=2, created=1001.0)
    assert worker.run_once()
    assert store.get(a.id).state == JobState.SUCCEEDED
    assert store.get(b.id).state == JobState.QUEUED and worker._ahead is None
