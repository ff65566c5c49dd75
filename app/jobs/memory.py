"""The job store's in-memory twin: the same contract as the SQL store (tests/unit/test_store.py
runs both), for tests and benchmarks that need no real database."""
from __future__ import annotations

import contextlib
import copy
import threading

from app.jobs.model import CANCELLED_BY_OWNER, Job, JobState, WebhookStatus
from app.jobs.store import CRASHED, CancelOutcome, Refusal, Stored, compatible


class MemoryJobStore:
    """Same semantics as the SQL store, in a dict; a lock makes each call atomic."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, job, max_queued=0, max_queued_per_owner=0):
        with self._lock:
            queued = [j for j in self._jobs.values() if j.state == JobState.QUEUED]
            if max_queued_per_owner and \
                    sum(j.owner == job.owner for j in queued) >= max_queued_per_owner:
                return Refusal.OWNER
            if max_queued and len(queued) >= max_queued:
                return Refusal.TOTAL
            self._jobs[job.id] = copy.copy(job)
            return None

    def get(self, job_id, with_image=False):
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            out = copy.copy(job)
            if not with_image:
                out.image = None
            return out

    def get_many(self, job_ids):
        with self._lock:
            out = {i: copy.copy(self._jobs[i]) for i in set(job_ids) if i in self._jobs}
        for job in out.values():
            job.image = None
        return out

    def next_queued(self):
        with self._lock:
            queued = [j for j in self._jobs.values() if j.state == JobState.QUEUED]
            return copy.copy(min(queued, key=lambda j: (j.created_at, j.id))) if queued else None

    def claim(self, worker, now, lease_s):
        with self._lock:
            queued = [j for j in self._jobs.values() if j.state == JobState.QUEUED]
            if not queued:
                return None
            job = min(queued, key=lambda j: (j.created_at, j.id))
            return self._take(job, worker, now, lease_s)

    def claim_compatible(self, claimed, worker, now, lease_s, limit):
        with self._lock:
            fits = sorted((j for j in self._jobs.values()
                           if j.state == JobState.QUEUED and compatible(j, claimed)),
                          key=lambda j: (j.created_at, j.id))
            return [self._take(j, worker, now, lease_s) for j in fits[:max(limit, 0)]]

    @staticmethod
    def _take(job, worker, now, lease_s):
        job.state, job.worker, job.lease_until = JobState.RUNNING, worker, now + lease_s
        job.attempts += 1
        job.started_at = now
        return copy.copy(job)

    def _held(self, claimed):
        job = self._jobs.get(claimed.id)
        if (job and job.state == JobState.RUNNING and job.worker == claimed.worker
                and job.attempts == claimed.attempts):
            return job
        return None

    def heartbeat(self, claimed, lease_until):
        with self._lock:
            job = self._held(claimed)
            if job:
                job.lease_until = lease_until
            return job is not None

    def set_progress(self, claimed, progress, step=None, total_steps=None):
        with self._lock:
            job = self._held(claimed)
            if job and not job.cancel_requested:
                job.progress = progress
                if step is not None:
                    job.step, job.total_steps = step, total_steps
                return True
            return False

    def cancel(self, job_id, owner, now, expires_at):
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.owner != owner:
                return None
            if job.state == JobState.QUEUED:
                job.state, job.finished_at, job.expires_at = JobState.CANCELLED, now, expires_at
                job.image = None
                return CancelOutcome.CANCELLED
            if job.state == JobState.RUNNING:
                job.cancel_requested = True
                if job.step is None or job.total_steps is None or job.step < job.total_steps:
                    return CancelOutcome.REQUESTED
                job.state, job.finished_at, job.expires_at = JobState.CANCELLED, now, expires_at
                job.lease_until, job.error, job.image = None, CANCELLED_BY_OWNER, None
                return CancelOutcome.CANCELLED_RUNNING
            return CancelOutcome.FINISHED

    def set_webhook_status(self, job_id, status, attempts):
        with self._lock:
            job = self._jobs.get(job_id)
            if job:
                job.webhook_status, job.webhook_attempts = WebhookStatus(status), attempts

    def pending_webhooks(self, finished_before, limit=100):
        with self._lock:
            return [j.id for j in self._jobs.values() if j.state.finished
                    and j.webhook_status == WebhookStatus.PENDING and (j.finished_at or 0) < finished_before][:limit]

    def queue_position(self, job):
        with self._lock:
            return 1 + sum(1 for j in self._jobs.values() if j.state == JobState.QUEUED
                           and (j.created_at, j.id) < (job.created_at, job.id))

    def recent_run_seconds(self, limit=20):
        with self._lock:
            done = sorted((j for j in self._jobs.values() if j.state == JobState.SUCCEEDED),
                          key=lambda j: j.finished_at, reverse=True)[:limit]
            return sum(j.finished_at - j.started_at for j in done) / len(done) if done else None

    def finish(self, claimed, state, now, expires_at, *, error=None, finish_reason=None,
               result_key=None, result_bytes=None):
        with self._lock:
            job = self._held(claimed)
            if not job:
                return False
            self._finish(job, state, now, expires_at, error, finish_reason, result_key)
            job.result_bytes = result_bytes
            return True

    @staticmethod
    def _finish(job, state, now, expires_at, error=None, finish_reason=None, result_key=None):
        job.state, job.finished_at, job.expires_at = state, now, expires_at
        job.error, job.finish_reason, job.result_key = error, finish_reason, result_key
        job.lease_until, job.image = None, None
        if state == JobState.SUCCEEDED:
            job.progress = 1.0

    def release(self, claimed):
        with self._lock:
            job = self._held(claimed)
            if job:
                job.state, job.worker, job.lease_until = JobState.QUEUED, None, None
            return job is not None

    def _requeue(self, jobs, max_attempts, now, expires_at):
        for job in jobs:
            if job.attempts >= max_attempts:
                self._finish(job, JobState.FAILED, now, expires_at,
                             error=CRASHED.format(n=max_attempts))
            else:
                job.state, job.worker, job.lease_until = JobState.QUEUED, None, None
        return len(jobs)

    def requeue_expired(self, now, max_attempts, expires_at):
        with self._lock:
            stale = [j for j in self._jobs.values()
                     if j.state == JobState.RUNNING and (j.lease_until or 0) < now]
            return self._requeue(stale, max_attempts, now, expires_at)

    def requeue_worker(self, worker, max_attempts, now, expires_at):
        with self._lock:
            mine = [j for j in self._jobs.values()
                    if j.state == JobState.RUNNING and j.worker == worker]
            return self._requeue(mine, max_attempts, now, expires_at)

    def expired(self, now, limit=100):
        with self._lock:
            done = [copy.copy(j) for j in self._jobs.values()
                    if j.expires_at is not None and j.expires_at < now]
            for j in done:
                j.image = None
            return done[:limit]

    def delete(self, job_id):
        with self._lock:
            self._jobs.pop(job_id, None)

    def stored(self, owner, now):
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == owner
                    and (j.expires_at is None or j.expires_at >= now)]
            size = sum((j.result_bytes or 0) + len(j.image or b"") for j in mine)
            expiries = [j.expires_at for j in mine if j.expires_at is not None]
            return Stored(size, min(expiries) if expiries else None)

    def count(self, state, owner=None):
        with self._lock:
            return sum(1 for j in self._jobs.values()
                       if j.state == state and (owner is None or j.owner == owner))

    @contextlib.contextmanager
    def exclusive(self, name):
        yield True

    def checkpoint(self):
        pass

    def close(self):
        pass
