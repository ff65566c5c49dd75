"""A worker killed mid-job (SIGKILL: no clean-up, no heartbeat) leaves a running job whose
lease runs out. Whoever re-queues it, another worker's claim loop or the sweeper, counts it
in svd_worker_restarts_total{kind="lease_expired"} and logs event=lease_expired (the alert
in docs/operations.md and docs/scaling.md)."""
from __future__ import annotations

import logging
import time

import pytest

from app.jobs.memory import MemoryJobStore
from app.jobs.model import Job, JobState, new_job_id
from app.jobs.worker import Worker, WorkerConfig
from app.metrics import Metrics
from app.results.files import FileResultStore
from tests.fakes import FakeGenerator
from tests.helpers import png_bytes


def lease_expired(metrics) -> float | None:
    return metrics.registry.get_sample_value("svd_worker_restarts_total",
                                             {"kind": "lease_expired"})


def dead_workers_job(store) -> Job:
    """A job claimed by a worker that died at once: a tiny lease, never heartbeated."""
    j = Job(id=new_job_id(), owner="o", seed=5, cfg_scale=1.8, motion_bucket_id=127,
            width=64, height=64, num_frames=5, steps=2, created_at=time.time(),
            image=png_bytes())
    store.create(j)
    claimed = store.claim("dead", time.time(), 0.01)
    assert claimed is not None and claimed.id == j.id and claimed.attempts == 1
    time.sleep(0.05)                          # the lease runs out
    return j


@pytest.mark.parametrize("overlap", [False, True], ids=["overlap-off", "overlap-on"])
def test_a_worker_reclaiming_an_expired_lease_counts_and_logs_it(tmp_path, caplog, overlap):
    store, metrics, gen = MemoryJobStore(), Metrics(), FakeGenerator()
    j = dead_workers_job(store)
    worker = Worker("w1", store=store, results=FileResultStore(tmp_path / "results"),
                    generator_factory=lambda: gen, metrics=metrics,
                    config=WorkerConfig(overlap=overlap, max_attempts=3))
    worker.generator = gen
    with caplog.at_level(logging.WARNING):
        assert worker.run_once()
        assert worker.wait_finished(10)
    got = store.get(j.id)
    assert got.state == JobState.SUCCEEDED and got.attempts == 2 and got.worker == "w1"
    assert lease_expired(metrics) == 1
    hits = [r for r in caplog.records if "event=lease_expired" in r.getMessage()]
    assert len(hits) == 1 and hits[0].levelno == logging.WARNING
    assert "jobs=1" in hits[0].getMessage()
    worker.stop()


def test_nothing_expired_counts_nothing(tmp_path, caplog):
    store, metrics, gen = MemoryJobStore(), Metrics(), FakeGenerator()
    worker = Worker("w1", store=store, results=FileResultStore(tmp_path / "results"),
                    generator_factory=lambda: gen, metrics=metrics,
                    config=WorkerConfig(overlap=False))
    worker.generator = gen
    with caplog.at_level(logging.WARNING):
        assert not worker.run_once()
    assert not lease_expired(metrics)
    assert not [r for r in caplog.records if "lease_expired" in r.getMessage()]
    worker.stop()


def test_the_sweeper_requeueing_an_expired_lease_counts_and_logs_it(tmp_path, caplog):
    from app.jobs.sweeper import sweep
    from tests.helpers import make_settings

    store, metrics = MemoryJobStore(), Metrics()
    j = dead_workers_job(store)
    with caplog.at_level(logging.WARNING):
        sweep(store, FileResultStore(tmp_path / "results"), make_settings(tmp_path), metrics)
    assert store.get(j.id).state == JobState.QUEUED
    assert lease_expired(metrics) == 1
    assert [r for r in caplog.records if "event=lease_expired" in r.getMessage()]
