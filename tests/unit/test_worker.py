"""The worker against the in-memory store: outcomes, progress, timeouts, stopping; each test
with overlap off (the job runs start to finish in the worker thread) and on (a finisher
thread encodes and records the video)."""
from __future__ import annotations

import threading
import time

import pytest

from app.jobs.model import Job, JobState, new_job_id
from app.jobs.memory import MemoryJobStore
from app.jobs.worker import Worker, WorkerConfig
from app.results.files import FileResultStore
from tests.fakes import FakeGenerator
from tests.helpers import inspect_mp4, png_bytes


OVERLAP = {"on": True}


@pytest.fixture(autouse=True, params=[False, True], ids=["overlap-off", "overlap-on"])
def overlap(request, monkeypatch):
    monkeypatch.setitem(OVERLAP, "on", request.param)
    return request.param


def make(tmp_path, gen, **cfg):
    store = MemoryJobStore()
    results = FileResultStore(tmp_path / "results")
    cfg.setdefault("overlap", OVERLAP["on"])
    worker = Worker("w0", store=store, results=results, generator_factory=lambda: gen,
                    config=WorkerConfig(**cfg))
    worker.generator = gen
    return store, results, worker


def run_job(worker) -> bool:
    """Run one job and wait for its outcome to be recorded (with overlap, by the finisher)."""
    ran = worker.run_once()
    assert worker.wait_finished(10)
    return ran


def add_job(store, **kw) -> Job:
    j = Job(id=new_job_id(), owner="o", seed=5, cfg_scale=1.8, motion_bucket_id=kw.pop("motion", 127),
            width=64, height=64, created_at=time.time(), image=png_bytes(), **kw)
    store.create(j)
    return j


def test_success_stores_an_mp4_and_records_progress(tmp_path):
    gen = FakeGenerator()
    store, results, worker = make(tmp_path, gen, output_fps=9)
    j = add_job(store, num_frames=5, steps=4)
    assert run_job(worker)
    got = store.get(j.id)
    assert got.state == JobState.SUCCEEDED and got.progress == 1.0 and got.finish_reason == "SUCCESS"
    info = inspect_mp4(results.path(got.result_key).read_bytes())
    assert (info.frames, info.width, info.height, round(info.fps)) == (5, 64, 64, 9)
    assert gen.calls[0].steps == 4 and gen.calls[0].seed == 5
    assert not list(results.root.glob(".*.tmp"))
    assert not run_job(worker)               # nothing left


def test_a_failing_generation_fails_the_job_only(tmp_path):
    store, _, worker = make(tmp_path, FakeGenerator(fail_on_motion=13))
    bad, good = add_job(store, motion=13), add_job(store)
    run_job(worker)
    run_job(worker)
    assert store.get(bad.id).state == JobState.FAILED
    assert "blew up" in store.get(bad.id).error
    assert store.get(good.id).state == JobState.SUCCEEDED


def test_a_hung_generation_times_out(tmp_path):
    gen = FakeGenerator(step_delay=0.3)
    store, results, worker = make(tmp_path, gen, job_timeout_s=0.5, heartbeat_s=0.1)
    j = add_job(store, steps=20)
    t = time.monotonic()
    run_job(worker)
    assert time.monotonic() - t < 3
    got = store.get(j.id)
    assert got.state == JobState.FAILED and "timed out" in got.error
    assert not results.exists(results.key_for(j.id))


def test_a_stuck_call_fails_its_job_at_the_deadline_and_holds_the_worker_until_it_returns(
        tmp_path, caplog):
    caplog.set_level("INFO")
    gen = FakeGenerator()
    gen.hold = True                                   # the model's call never reaches a step
    store, _, worker = make(tmp_path, gen, job_timeout_s=0.5, heartbeat_s=0.1)
    stuck, nxt = add_job(store), add_job(store)
    runner = threading.Thread(target=run_job, args=(worker,))
    runner.start()
    deadline = time.monotonic() + 3
    while not store.get(stuck.id).state.finished:    # failed at its deadline: at once
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "timed out" in store.get(stuck.id).error
    assert "event=timed_out" in caplog.text and "worker_busy=" in caplog.text
    time.sleep(0.5)
    assert worker.busy and store.get(nxt.id).state == JobState.QUEUED   # as documented
    gen.hold = False
    gen.release.set()                                 # the call returns at last
    runner.join(5)
    assert "event=worker_free" in caplog.text and "after_timeout_s=" in caplog.text
    assert store.get(stuck.id).state == JobState.FAILED     # not overwritten
    run_job(worker)
    assert store.get(nxt.id).state == JobState.SUCCEEDED


def test_stopping_hands_the_running_job_back(tmp_path):
    gen = FakeGenerator(step_delay=0.05)
    store, _, worker = make(tmp_path, gen)
    j = add_job(store, steps=100)
    runner = threading.Thread(target=run_job, args=(worker,))
    runner.start()
    time.sleep(0.3)
    worker.stop_soon()
    runner.join(5)
    got = store.get(j.id)
    assert got.state == JobState.QUEUED and got.worker is None


def test_heartbeats_keep_the_lease(tmp_path):
    gen = FakeGenerator(step_delay=0.1)
    store, _, worker = make(tmp_path, gen, lease_s=0.5, heartbeat_s=0.1)
    j = add_job(store, steps=15)                  # ~1.5 s: three leases long
    requeued, done = [], threading.Event()

    def reaper():                                 # what the sweeper and other workers do
        while not done.is_set():
            requeued.append(store.requeue_expired(time.time(), 3, time.time() + 60))
            time.sleep(0.05)

    t = threading.Thread(target=reaper)
    t.start()
    run_job(worker)
    done.set()
    t.join()
    assert sum(requeued) == 0 and len(requeued) > 10
    assert store.get(j.id).state == JobState.SUCCEEDED and store.get(j.id).attempts == 1


def test_without_heartbeats_the_lease_expires_and_the_late_result_is_dropped(tmp_path):
    gen = FakeGenerator(step_delay=0.1)
    store, results, worker = make(tmp_path, gen, lease_s=0.3, heartbeat_s=60)
    j = add_job(store, steps=10)
    t = threading.Thread(target=run_job, args=(worker,))
    t.start()
    time.sleep(0.6)
    assert store.requeue_expired(time.time(), 3, time.time() + 60) == 1
    t.join(10)
    got = store.get(j.id)
    assert got.state == JobState.QUEUED and got.result_key is None
    assert not results.exists(results.key_for(j.id))


def test_out_of_memory_is_retried_with_less_memory_without_costing_an_attempt(tmp_path):
    gen = FakeGenerator(oom_below_level=2)
    store, results, worker = make(tmp_path, gen)
    j = add_job(store)
    run_job(worker)
    got = store.get(j.id)
    assert got.state == JobState.SUCCEEDED and got.attempts == 1
    assert gen.levels == [0, 1, 2]


def test_out_of_memory_at_every_level_fails_the_job_clearly(tmp_path):
    gen = FakeGenerator(oom_below_level=99)
    store, _, worker = make(tmp_path, gen)
    j = add_job(store)
    run_job(worker)
    got = store.get(j.id)
    assert got.state == JobState.FAILED and "out of GPU memory" in got.error
    assert gen.levels == [0, 1, 2]


def test_disk_full_fails_the_job_cleanly_and_serves_nothing(tmp_path, monkeypatch):
    import errno

    def full(frames, path, fps, fmt="mp4"):
        with open(path, "wb") as fh:
            fh.write(b"\x00\x00\x00\x18ftypisom")            # a partial file...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr("app.jobs.finisher.encode_video", full)
    store, results, worker = make(tmp_path, FakeGenerator())
    j = add_job(store)
    run_job(worker)
    got = store.get(j.id)
    assert got.state == JobState.FAILED and "disk is full" in got.error
    assert not results.exists(results.key_for(j.id))
    assert not list(results.root.iterdir())                   # no temp file left behind
