"""Housekeeping: re-queue jobs of dead workers; remove results past their retention."""
from __future__ import annotations

import logging
import time

from app.config import Settings
from app.logs import kv
from app.results.base import ResultStore

log = logging.getLogger(__name__)
BATCH = 100


def sweep(store, results: ResultStore, settings: Settings, metrics=None) -> int:
    """One pass, in one process of the cluster at a time. Returns how many expired
    generations were removed (0 where another process holds the sweep)."""
    with store.exclusive("svd-sweeper") as mine:
        return _sweep(store, results, settings, metrics) if mine else 0


def requeue_expired(store, now: float, max_attempts: int, result_ttl_s: float,
                    metrics=None) -> int:
    """Running jobs whose lease ran out (their worker died) → queued, or failed after
    `max_attempts` claims; logged and counted as svd_worker_restarts_total{kind="lease_expired"}.
    Every place that re-queues expired leases (the sweeper, each worker's claim loop) goes
    through here. Returns how many jobs were re-queued or failed."""
    requeued = store.requeue_expired(now, max_attempts, now + result_ttl_s)
    if requeued:
        log.warning(kv(event="lease_expired", jobs=requeued))
        if metrics is not None:
            metrics.worker_restarts.labels("lease_expired").inc(requeued)
    return requeued


def _sweep(store, results: ResultStore, settings: Settings, metrics) -> int:
    now = time.time()
    requeue_expired(store, now, settings.max_attempts, settings.result_ttl_s, metrics)
    removed = 0
    while True:
        batch = store.expired(now, BATCH)
        for job in batch:
            if job.result_key:
                results.delete(job.result_key)     # the file first: a row never points nowhere
            store.delete(job.id)
            removed += 1
        if len(batch) < BATCH:
            break
    if removed:
        store.checkpoint()
        log.info(kv(event="expired_removed", jobs=removed))
    return removed
