"""What follows the end of a job, whoever ended it (a worker, or the cancel of a queued job
in the API): the finished-jobs metric and the webhook announcement. One path, so that no
ending is counted twice or announced never."""
from __future__ import annotations

from typing import Callable

from app.jobs.model import JobState


class Outcomes:
    def __init__(self, metrics=None, announce: Callable[[str], None] | None = None):
        self.metrics = metrics
        self.announce = announce              # e.g. WebhookSender.submit, given the job id

    def ended(self, job_id: str, state: JobState, has_webhook: bool = True, *,
              started: bool = True) -> None:
        """`job_id` reached `state` (a finished one) just now, in this process; `started`:
        a worker had claimed it (False: cancelled while queued)."""
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(state.value, "true" if started else "false").inc()
        if has_webhook and self.announce is not None:
            self.announce(job_id)
