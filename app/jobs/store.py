"""The job store interface (the SQL store in app/jobs/sql.py; its in-memory twin for tests in
app/jobs/memory.py).

Every state change is conditional on the state (and, once running, on the worker that holds
the lease), so two workers can never both finish a job and a worker that wakes up after its
lease expired cannot overwrite anything.
"""
from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from app.jobs.model import Job, JobState, WebhookStatus
from inference.base import batch_key


class Refusal(str, enum.Enum):
    """Why `create` did not insert a job: the queue bound it would pass."""
    OWNER = "owner"            # the owner's queued jobs
    TOTAL = "total"            # all queued jobs


class CancelOutcome(str, enum.Enum):
    CANCELLED = "cancelled"                  # it was queued: cancelled now
    CANCELLED_RUNNING = "cancelled_running"  # past denoising (VAE decode, encode): cancelled
                                             # now; its worker drops the video
    REQUESTED = "requested"                  # it is denoising: its worker stops it at the
                                             # next step
    FINISHED = "finished"                    # too late

    @property
    def done(self) -> bool:
        """Cancelled now: the job's end is recorded by the canceller."""
        return self in (CancelOutcome.CANCELLED, CancelOutcome.CANCELLED_RUNNING)


class Stored(NamedTuple):
    """What an owner keeps on the server: input images of unfinished jobs and results not
    yet expired, in bytes; and when the first of them expires (None: none will yet)."""
    bytes: int
    first_expiry: float | None


class JobStore(Protocol):
    def create(self, job: Job, max_queued: int = 0,
               max_queued_per_owner: int = 0) -> Refusal | None:
        """Insert a queued job, unless that would put more than `max_queued` jobs in the queue
        or more than `max_queued_per_owner` of its owner's (0 = no bound). Check and insert
        are one atomic step. Returns None when inserted, else the bound it would pass."""

    def get(self, job_id: str, with_image: bool = False) -> Job | None: ...

    def get_many(self, job_ids) -> dict[str, Job]:
        """The jobs among `job_ids` that exist, by id, without their images; in one query."""

    def claim(self, worker: str, now: float, lease_s: float) -> Job | None:
        """Oldest queued job → running, held by `worker` until now + lease_s; with its image."""

    def next_queued(self) -> Job | None:
        """The job `claim` would take now, with its image, left queued (the worker decodes
        its image ahead while the GPU finishes the job before)."""

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

    def cancel(self, job_id: str, owner: str, now: float,
               expires_at: float) -> CancelOutcome | None:
        """A queued job → cancelled; a running one past denoising (its step is its last: VAE
        decode or encode) → cancelled too, its worker's video to be dropped; one denoising
        gets a cancel request; None when not the owner's or unknown."""

    def set_webhook_status(self, job_id: str, status: WebhookStatus, attempts: int) -> None: ...

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


def job_batch_key(job: Job):
    """The job's inference.base.BatchKey: jobs with equal keys can share one generator call
    (frames and steps unset, the model's default, only match unset)."""
    return batch_key(job.width, job.height, job.num_frames, job.steps, job.cfg_scale)


def compatible(a: Job, b: Job) -> bool:
    return job_batch_key(a) == job_batch_key(b)
