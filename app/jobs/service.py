"""What the API can do with jobs: submit, look up, find the result. No HTTP, no torch."""
from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from app.jobs.model import Job, JobState, WebhookStatus, new_job_id
from app.jobs.outcomes import Outcomes
from app.jobs.params import GenerationParams, random_seed
from app.jobs.store import CancelOutcome, JobStore, Refusal
from app.results.base import ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobView:
    """What a poll needs to answer."""
    job: Job


class RefusalReason(str, enum.Enum):
    """Why a submit was refused; the svd_requests_rejected_total label."""
    QUEUE_FULL = "queue_full"          # too many queued, in total or for this key
    STORAGE_FULL = "storage_full"      # this key keeps too many bytes until they expire


class SubmitRefused(Exception):
    """The generation was not queued: `what` says why in words, `retry_after` when trying
    again makes sense (None: the caller's default)."""

    def __init__(self, what: str, retry_after: float | None = None,
                 reason: RefusalReason = RefusalReason.QUEUE_FULL):
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after
        self.reason = reason


class JobService:
    def __init__(self, store: JobStore, results: ResultStore, wake: threading.Event | None = None,
                 max_queued: int = 0, max_queued_per_key: int = 0, max_stored_per_key: int = 0,
                 outcomes: Outcomes | None = None):
        self.store = store
        self.results = results
        self.wake = wake or threading.Event()     # set on submit: idle workers claim at once
        self.outcomes = outcomes or Outcomes()
        self.max_queued = max_queued              # 0: no limit
        self.max_queued_per_key = max_queued_per_key
        self.max_stored_per_key = max_stored_per_key   # bytes; 0: no limit

    def submit(self, owner: str, params: GenerationParams) -> Job:
        """Queue a generation. Raises SubmitRefused instead of letting the queue grow without
        bound; the store checks the bounds and inserts in one atomic step. The storage bound
        is checked just before: submits racing each other may pass it by their own images."""
        if self.max_stored_per_key:
            self._check_storage(owner, len(params.image))
        job = Job(id=new_job_id(), owner=owner, seed=params.seed or random_seed(),
                  cfg_scale=params.cfg_scale, motion_bucket_id=params.motion_bucket_id,
                  width=params.width, height=params.height, created_at=time.time(),
                  image=params.image, num_frames=params.num_frames, steps=params.steps,
                  output_fps=params.output_fps, noise_aug_strength=params.noise_aug_strength,
                  output_format=params.output_format, webhook_url=params.webhook_url,
                  webhook_status=WebhookStatus.PENDING if params.webhook_url else None)
        refused = self.store.create(job, self.max_queued, self.max_queued_per_key)
        if refused == Refusal.OWNER:
            raise SubmitRefused(f"this key already has {self.max_queued_per_key} generations queued")
        if refused == Refusal.TOTAL:
            raise SubmitRefused(f"the server's queue is full ({self.max_queued} generations)")
        self.wake.set()
        return job

    def _check_storage(self, owner: str, incoming: int) -> None:
        now = time.time()
        stored = self.store.stored(owner, now)
        if stored.bytes + incoming <= self.max_stored_per_key:
            return
        limit_mb = self.max_stored_per_key / (1024 * 1024)
        wait = stored.first_expiry - now if stored.first_expiry else None
        raise SubmitRefused(f"this key keeps {stored.bytes / (1024 * 1024):.0f} MiB of inputs and "
                        f"results on the server (limit {limit_mb:g} MiB) until they expire",
                        retry_after=wait, reason=RefusalReason.STORAGE_FULL)

    def cancel(self, owner: str, job_id: str, ttl_s: float) -> CancelOutcome | None:
        """See JobStore.cancel; a job not on the GPU (queued, or past denoising) is
        cancelled at once, and its end recorded here; one denoising by its worker at its
        next step."""
        now = time.time()
        outcome = self.store.cancel(job_id, owner, now, now + ttl_s)
        if outcome is not None and outcome.done:
            self.outcomes.ended(job_id, JobState.CANCELLED,
                                started=outcome == CancelOutcome.CANCELLED_RUNNING)
        return outcome

    def progress(self, job: Job) -> dict:
        """The optional 202 fields: stage, progress, queue_position, eta_seconds."""
        mean_run = self.store.recent_run_seconds()
        if job.state == JobState.QUEUED:
            position = self.store.queue_position(job)
            out = {"stage": "queued", "progress": 0.0, "queue_position": position}
            if mean_run:
                out["eta_seconds"] = round(mean_run * position, 1)
            return out
        stage = "starting" if not job.step else "denoising"
        if job.progress >= 0.95:
            stage = "encoding"
        elif job.total_steps and job.step == job.total_steps:
            stage = "decoding"
        out = {"stage": stage, "progress": round(job.progress, 3)}
        if job.step is not None:
            out.update(step=job.step, steps=job.total_steps)
        if mean_run:
            elapsed = time.time() - (job.started_at or time.time())
            out["eta_seconds"] = round(max(0.0, mean_run - elapsed), 1)
        return out

    def find(self, owner: str, job_id: str) -> JobView | None:
        """The caller's job, or None when it does not exist, expired, or is someone else's."""
        job = self.store.get(job_id)
        if job is None or not secrets.compare_digest(job.owner, owner):
            return None
        if job.expires_at is not None and job.expires_at < time.time():
            return None
        if job.state in (JobState.SUCCEEDED, JobState.CONTENT_FILTERED):
            if not job.result_key or not self.results.exists(job.result_key):
                log.error("job %s succeeded but its result is missing", job.id)
                return None
        return JobView(job)
