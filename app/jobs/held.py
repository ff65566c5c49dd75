"""The jobs a worker holds: their leases, renewed by one heartbeat loop until each job's
outcome is recorded; their progress; and how each ends (finished, handed back, abandoned).

Shared by the worker thread (claims, generation) and the finisher (encode, store, finish):
a job stays held, its lease renewed, until whichever of them records its outcome closes it.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from app.jobs.model import CANCELLED_BY_OWNER, Job, JobState
from app.jobs.outcomes import Outcomes
from app.jobs.store import JobStore
from app.logs import kv
from inference.base import GenerationRequest
from inference.images import decode_rgb, probe

log = logging.getLogger("app.jobs.worker")


class AbortReason(str, enum.Enum):
    """Why a held job must stop before its outcome is recorded."""
    STOPPING = "stopping"        # the worker stops: the job goes back to the queue
    CANCELLED = "cancelled"      # its owner cancelled it: it ends cancelled
    TIMED_OUT = "timed out"      # SVD_JOB_TIMEOUT_S passed: already recorded failed
    LEASE_LOST = "lease lost"    # no longer ours (the lease ran out): left to its new holder


class Stop(Exception):
    """Abort the current generation; the message is the AbortReason."""


@dataclass(frozen=True)
class Prepared:
    """A job's input image decoded into its generation request, or why it could not be."""
    job_id: str
    request: GenerationRequest | None = None
    error: Exception | None = None


def prepare(job: Job) -> Prepared:
    try:
        request = GenerationRequest(image=decode_rgb(job.image, probe(job.image)),
                                    seed=job.seed, cfg_scale=job.cfg_scale,
                                    motion_bucket_id=job.motion_bucket_id,
                                    num_frames=job.num_frames, steps=job.steps)
        if job.noise_aug_strength is not None:
            request = replace(request, noise_aug_strength=job.noise_aug_strength)
        return Prepared(job.id, request=request)
    except Exception as exc:                   # noqa: BLE001 - recorded as the job's failure
        return Prepared(job.id, error=exc)


class Held:
    """One claimed job: its request once decoded, and why it must stop (if it must)."""

    def __init__(self, job: Job, deadline: float, next_beat: float):
        self.job = job
        self.request: GenerationRequest | None = None
        self.error: Exception | None = None         # the image could not be decoded
        self.abort_reason: AbortReason | None = None   # set → the next step drops this job
        self.generate_s = 0.0
        self.t0 = time.monotonic()                  # reset when its generation starts
        self.deadline = deadline                    # wall clock: SVD_JOB_TIMEOUT_S from the claim
        self.next_beat = next_beat                  # wall clock: its next lease renewal
        self.done = threading.Event()               # its outcome is recorded (or left)
        self.holder: Holder | None = None

    @property
    def closed(self) -> bool:
        return self.done.is_set()

    def prepare(self, ahead: Prepared | None = None) -> None:
        """Decode the input image into a generation request (errors are kept for later),
        unless `ahead` already holds this job's."""
        ready = ahead if ahead is not None and ahead.job_id == self.job.id else prepare(self.job)
        self.request, self.error = ready.request, ready.error

    def close(self) -> None:
        """Its outcome is recorded (or it is left to the lease): no more heartbeats."""
        self.done.set()
        if self.holder is not None:
            self.holder.let_go(self)


class Holder:
    """Leases, progress and outcomes of the jobs one worker holds. One heartbeat thread
    serves them all; it runs while at least one job is held."""

    def __init__(self, name: str, store: JobStore, config, is_stopping: Callable[[], bool],
                 metrics=None, outcomes: Outcomes | None = None):
        self.name = name
        self.store = store
        self.cfg = config
        self.is_stopping = is_stopping
        self.metrics = metrics
        self.outcomes = outcomes or Outcomes(metrics)
        self._held: set[Held] = set()
        self._cond = threading.Condition()
        self._beating: Held | None = None        # the job the heartbeat loop works on now
        self._thread: threading.Thread | None = None

    def hold(self, job: Job) -> Held:
        """Keep the lease of a job just claimed, until it is closed."""
        now = time.time()
        deadline = now + self.cfg.job_timeout_s
        held = Held(job, deadline, min(now + self.cfg.heartbeat_s, deadline))
        held.holder = self
        with self._cond:
            self._held.add(held)
            if self._thread is None:
                self._thread = threading.Thread(target=self._heartbeats, daemon=True,
                                                name=f"heartbeat-{self.name}")
                self._thread.start()
            self._cond.notify_all()
        return held

    def let_go(self, held: Held) -> None:
        """No more heartbeats for `held`; waits while the loop is renewing it right now."""
        with self._cond:
            self._held.discard(held)
            self._cond.notify_all()
            if threading.current_thread() is not self._thread:
                self._cond.wait_for(lambda: self._beating is not held)

    @property
    def holding(self) -> int:
        with self._cond:
            return len(self._held)

    def report(self, held: Held, progress: float, step: int | None = None,
               total: int | None = None) -> None:
        """Record progress; raise Stop if the owner cancelled or the job is no longer ours."""
        if self.store.set_progress(held.job, progress, step, total):
            return
        held.abort_reason = self._why_lost(held.job)
        raise Stop(held.abort_reason.value)

    def _why_lost(self, job: Job) -> AbortReason:
        """A job no longer ours to record: its owner cancelled it (a cancel past denoising
        is recorded at once by the API), or its lease ran out."""
        current = self.store.get(job.id)
        cancelled = current is not None and current.cancel_requested
        return AbortReason.CANCELLED if cancelled else AbortReason.LEASE_LOST

    def check_abort(self, held: Held, stopping: bool = True) -> None:
        """Raise Stop if the job must stop; with `stopping`, also when the worker stops."""
        if stopping and self.is_stopping() and held.abort_reason is None:
            held.abort_reason = AbortReason.STOPPING
        if held.abort_reason:
            raise Stop(held.abort_reason.value)

    def finish(self, job: Job, state: JobState, **fields) -> bool:
        now = time.time()
        done = self.store.finish(job, state, now, now + self.cfg.result_ttl_s, **fields)
        if done:
            if state != JobState.SUCCEEDED:
                log.info(kv(job=job.id, event=state.value, worker=self.name,
                            error=fields.get("error")))
            self.outcomes.ended(job.id, state, bool(job.webhook_url))
        return done

    def stopped(self, held: Held) -> None:
        """The job stopped on purpose: cancelled, handed back (stopping) or abandoned."""
        job = held.job
        if held.abort_reason == AbortReason.CANCELLED:
            if not self.finish(job, JobState.CANCELLED, error=CANCELLED_BY_OWNER):
                # cancelled at once past denoising: recorded by the API already
                log.info(kv(job=job.id, event="dropped", worker=self.name, reason="cancelled"))
        elif held.abort_reason == AbortReason.STOPPING and self.store.release(job):
            log.info(kv(job=job.id, event="released", worker=self.name, reason="worker stopping"))
        else:
            log.warning(kv(job=job.id, event="abandoned",
                           reason=held.abort_reason.value if held.abort_reason else None))

    def observe(self, phase: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.job_phase_seconds.labels(phase).observe(seconds)

    # -- the heartbeat loop ------------------------------------------------------------------
    def _heartbeats(self) -> None:
        while True:
            with self._cond:
                if not self._held:
                    self._thread = None
                    return
                held = min(self._held, key=lambda h: h.next_beat)
                wait = held.next_beat - time.time()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._beating = held
            try:
                self._beat(held)
            except Exception:                  # noqa: BLE001 - the loop serves every job
                log.exception("job %s: heartbeat failed", held.job.id)
            finally:
                with self._cond:
                    self._beating = None
                    self._cond.notify_all()

    def _beat(self, held: Held) -> None:
        """Renew one lease, or fail the job past its deadline, or notice it was lost."""
        job, now = held.job, time.time()
        if now >= held.deadline:
            # Fail it now so the client hears at once, even if the model is stuck in a call
            # that never returns to a step callback.
            held.abort_reason = AbortReason.TIMED_OUT
            self._forget(held)
            self.finish(job, JobState.FAILED,
                        error=f"timed out after {self.cfg.job_timeout_s:.0f} s")
            log.warning(kv(job=job.id, event="timed_out", worker=self.name,
                           worker_busy="until the model's call returns"))
            return
        held.next_beat = min(now + self.cfg.heartbeat_s, held.deadline)
        try:
            kept = self.store.heartbeat(job, now + self.cfg.lease_s)
        except Exception:                      # the database blinked: try again next beat
            log.exception("job %s: heartbeat failed", job.id)
            return
        if not kept and not held.closed:
            held.abort_reason = self._why_lost(job)
            if held.abort_reason == AbortReason.LEASE_LOST:
                log.warning(kv(job=job.id, event="lease_lost", worker=self.name))
            self._forget(held)

    def _forget(self, held: Held) -> None:
        with self._cond:
            self._held.discard(held)
