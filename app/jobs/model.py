"""A generation job and its states.

    queued ──claim──▶ running ──▶ succeeded | failed | content_filtered | cancelled
       ▲                 │
       └── lease expired ┘   (worker died; at most `max_attempts` claims, then failed)
"""
from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CONTENT_FILTERED = "content_filtered"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


FINISHED_STATES = tuple(s for s in JobState if s.finished)
CANCELLED_BY_OWNER = "cancelled by its owner"     # the error of a running job cancelled


class WebhookStatus(str, enum.Enum):
    """Where a finished job's webhook delivery stands (None: the job named no webhook)."""
    PENDING = "pending"        # not delivered yet: sent, retried, or re-sent after a crash
    DELIVERED = "delivered"
    FAILED = "failed"          # given up on, or its target is no longer allowed


def new_job_id() -> str:
    """64 lowercase hex characters from the OS's CSPRNG, as the hosted API's ids look."""
    return secrets.token_hex(32)


@dataclass
class Job:
    id: str
    owner: str                 # SHA-256 of the API key that made it
    seed: int
    cfg_scale: float
    motion_bucket_id: int
    width: int
    height: int
    created_at: float
    state: JobState = JobState.QUEUED
    num_frames: int | None = None      # None: the model's default
    steps: int | None = None
    progress: float = 0.0
    attempts: int = 0
    worker: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None    # set when finished: results are kept until then
    error: str | None = None
    finish_reason: str | None = None   # SUCCESS | CONTENT_FILTERED
    result_key: str | None = None      # name of the result in the result store
    result_bytes: int | None = None    # its size
    step: int | None = None            # denoising steps done, of total_steps
    total_steps: int | None = None
    cancel_requested: bool = False     # a running job stops at its next step
    output_fps: int | None = None      # None: SVD_OUTPUT_FPS
    noise_aug_strength: float | None = None
    output_format: str | None = None   # mp4 (None) | webm | gif
    webhook_url: str | None = None
    webhook_status: WebhookStatus | None = None
    webhook_attempts: int | None = None
    image: bytes | None = field(default=None, repr=False)   # only loaded when asked for
