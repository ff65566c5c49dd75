"""The job store interface, and its in-memory twin for tests that need no real database.

Every state change is conditional on the state (and, once running, on the worker that holds
the lease), so two workers can never both finish a job and a worker that wakes up after its
lease expired cannot overwrite anything.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from typing import NamedTuple, Protocol

from app.jobs.model import Job, JobState


class Stored(NamedTuple):
    """What an owner keeps on the server: input images of unfinished jobs and results not
    yet expired, in bytes; and when the first of them expires (None: none will yet)."""
    bytes: int
    first_expiry: float | None


class JobStore(Protocol):
    def create(self, job: Job, max_queued: int = 0, max_queued_per_owner: int = 0) -> str | None:
        """Insert a queued job, unless that would put more than `max_queued` jobs in the queue
        or more than `max_queued_per_owner` of its owner's (0 = no bound). Check and insert
        are one atomic step. Returns None when inserted, else "owner" or "total"."""

    def get(self, job_id: str, with_image: bool = False) -> Job | None: ...

    def get_many(self, job_ids) -> dict[str, Job]:
        """The jobs among `job_ids` that exist, by id, without their images; in one query."""

    def claim(self, worker: str, now: float, lease_s: float) -> Job | None:
        """Oldest queued job → running, held by `worker` until now + lease_s; with its image."""

    def claim_compatible(self, claimed: Job, worker: str, now: float, lease_s: float,
                         limit: int) -> list[Job]:
        """Up to `limit` more queued jobs that can share one generator call with `claimed`
        (see `compatible`), oldest first, each claimed as `claim` does; in one atomic step."""

    # The calls below take the Job that `claim` returned: they change it only while it is
    # still running under that claim (same worker, same attempt), and return False otherwise.

    def heartbeat(self, claimed: Job, lease_until: float) -> bool: ...

    def set_progress(self, claimed: Job, progress: float, step: int | None = None,
                     total_steps: int | None = None) -> bool:
        """False when the job is no longer ours, or its owner asked to cancel it."""

    def cancel(self, job_id: str, owner: str, now: float, expires_at: float) -> str | None:
        """A queued job → cancelled ("cancelled"); a running one gets a cancel request
        ("requested"); "finished" when too late; None when not the owner's or unknown."""

    def set_webhook_status(self, job_id: str, status: str, attempts: int) -> None: ...

    def pending_webhooks(self, finished_before: float, limit: int = 100) -> list[str]:
        """Ids of finished jobs whose webhook was never delivered nor given up on."""

    def queue_position(self, job: Job) -> int:
        """1 for the next job to be claimed."""

    def recent_run_seconds(self, limit: int = 20) -> float | None:
        """Mean run time of recent successful jobs, for ETAs."""

    def finish(self, claimed: Job, state: JobState, now: float, expires_at: float,
               *, error: str | None = None, finish_reason: str | None = None,
               result_key: str | None = None, result_bytes: int | None = None) -> bool:
        """running → a finished state; the input image is dropped."""

    def release(self, claimed: Job) -> bool:
        """running → queued at once (a worker stopping on purpose hands the job back)."""

    def requeue_expired(self, now: float, max_attempts: int, expires_at: float) -> int:
        """Running jobs whose lease ran out → queued, or failed after max_attempts claims."""

    def requeue_worker(self, worker: str, max_attempts: int, now: float, expires_at: float) -> int:
        """At start: jobs this worker held when it died are queued again at once."""

    def expired(self, now: float, limit: int = 100) -> list[Job]:
        """Finished jobs whose retention ran out."""

    def delete(self, job_id: str) -> None: ...

    def count(self, state: JobState, owner: str | None = None) -> int: ...

    def stored(self, owner: str, now: float) -> Stored:
        """The owner's bytes kept until they expire (the per-key storage bound)."""

    def exclusive(self, name: str):
        """Context manager yielding True in one process at a time (for housekeeping)."""

    def checkpoint(self) -> None:
        """After deleting: leave no copy of removed rows in a write-ahead log."""

    def close(self) -> None: ...


CRASHED = "the worker stopped while running this job {n} times; giving up"


def compatible(a: Job, b: Job) -> bool:
    """Whether two jobs can run in one batch: same size, frames and steps (unset only
    matches unset), and classifier-free guidance on for both (cfg_scale > 1) or off for both."""
    return ((a.width, a.height, a.num_frames, a.steps) == (b.width, b.height, b.num_frames, b.steps)
            and (a.cfg_scale > 1) == (b.cfg_scale > 1))


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
                return "owner"
            if max_queued and len(queued) >= max_queued:
                return "total"
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
                return "cancelled"
            if job.state == JobState.RUNNING:
                job.cancel_requested = True
                return "requested"
            return "finished"

    def set_webhook_status(self, job_id, status, attempts):
        with self._lock:
            job = self._jobs.get(job_id)
            if job:
                job.webhook_status, job.webhook_attempts = status, attempts

    def pending_webhooks(self, finished_before, limit=100):
        with self._lock:
            return [j.id for j in self._jobs.values() if j.state.finished
                    and j.webhook_status == "pending" and (j.finished_at or 0) < finished_before][:limit]

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
