"""The jobs a worker holds: each one's lease, kept by a heartbeat thread until its outcome is
recorded, its progress, and how it ends (finished, handed back, or abandoned).

Shared by the worker thread (claims, generation) and the finisher (encode, store, finish):
a job stays held, its lease renewed, until whichever of them records its outcome closes it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable

from app.jobs.model import Job, JobState
from app.jobs.store import JobStore
from app.logs import kv
from inference.base import GenerationRequest
from inference.images import decode_rgb, probe

log = logging.getLogger("app.jobs.worker")


class Stop(Exception):
    """Abort the current generation (shutdown, timeout, cancel or lost lease)."""


class Held:
    """One claimed job: its request once decoded, and why it must stop (if it must)."""

    def __init__(self, job: Job):
        self.job = job
        self.request: GenerationRequest | None = None
        self.error: Exception | None = None         # the image could not be decoded
        self.abort_reason: str | None = None        # set → the next step drops this job
        self.generate_s = 0.0
        self.t0 = time.monotonic()                  # reset when its generation starts
        self.done = threading.Event()               # set → the heartbeat stops
        self.beat: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self.done.is_set()

    def prepare(self) -> None:
        """Decode the input image into a generation request (errors are kept for later)."""
        job = self.job
        try:
            request = GenerationRequest(image=decode_rgb(job.image, probe(job.image)),
                                        seed=job.seed, cfg_scale=job.cfg_scale,
                                        motion_bucket_id=job.motion_bucket_id,
                                        num_frames=job.num_frames, steps=job.steps)
            if job.noise_aug_strength is not None:
                request = replace(request, noise_aug_strength=job.noise_aug_strength)
            self.request = request
        except Exception as exc:               # noqa: BLE001 - recorded as the job's failure
            self.error = exc

    def close(self) -> None:
        """Its outcome is recorded (or it is left to the lease): stop heartbeating."""
        self.done.set()
        if self.beat is not None and self.beat is not threading.current_thread():
            self.beat.join()


class Holder:
    """Leases, progress and outcomes of the jobs one worker holds."""

    def __init__(self, name: str, store: JobStore, config, stopping: threading.Event,
                 metrics=None, on_finished: Callable[[str], None] | None = None):
        self.name = name
        self.store = store
        self.cfg = config
        self.stopping = stopping
        self.metrics = metrics
        self.on_finished = on_finished        # e.g. the webhook sender, given the job id

    def hold(self, job: Job) -> Held:
        """Start heartbeating a job just claimed."""
        held = Held(job)
        held.beat = threading.Thread(target=self._heartbeat, args=(held,), daemon=True,
                                     name=f"heartbeat-{self.name}")
        held.beat.start()
        return held

    def report(self, held: Held, progress: float, step: int | None = None,
               total: int | None = None) -> None:
        """Record progress; raise Stop if the owner cancelled or the job is no longer ours."""
        if self.store.set_progress(held.job, progress, step, total):
            return
        current = self.store.get(held.job.id)
        cancelled = current is not None and current.cancel_requested
        held.abort_reason = "cancelled" if cancelled else "lease lost"
        raise Stop(held.abort_reason)

    def check_abort(self, held: Held, stopping: bool = True) -> None:
        """Raise Stop if the job must stop; with `stopping`, also when the worker stops."""
        if stopping and self.stopping.is_set() and held.abort_reason is None:
            held.abort_reason = "stopping"
        if held.abort_reason:
            raise Stop(held.abort_reason)

    def finish(self, job: Job, state: JobState, **fields) -> bool:
        now = time.time()
        done = self.store.finish(job, state, now, now + self.cfg.result_ttl_s, **fields)
        if done and self.metrics is not None:
            self.metrics.jobs_finished.labels(state.value).inc()
        if done and state != JobState.SUCCEEDED:
            log.info(kv(job=job.id, event=state.value, worker=self.name, error=fields.get("error")))
        if done and job.webhook_url and self.on_finished is not None:
            self.on_finished(job.id)
        return done

    def stopped(self, held: Held) -> None:
        """The job stopped on purpose: cancelled, handed back (stopping) or abandoned."""
        job = held.job
        if held.abort_reason == "cancelled":
            self.finish(job, JobState.CANCELLED, error="cancelled by its owner")
        elif held.abort_reason == "stopping" and self.store.release(job):
            log.info(kv(job=job.id, event="released", worker=self.name, reason="worker stopping"))
        else:
            log.warning(kv(job=job.id, event="abandoned", reason=held.abort_reason))

    def observe(self, phase: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.job_phase_seconds.labels(phase).observe(seconds)

    def _heartbeat(self, held: Held) -> None:
        job = held.job
        deadline = time.time() + self.cfg.job_timeout_s
        while not held.done.wait(min(self.cfg.heartbeat_s, max(0.0, deadline - time.time()))):
            if time.time() >= deadline:
                # Fail it now so the client hears at once, even if the model is stuck in a
                # call that never returns to a step callback.
                held.abort_reason = "timed out"
                self.finish(job, JobState.FAILED,
                            error=f"timed out after {self.cfg.job_timeout_s:.0f} s")
                return
            try:
                kept = self.store.heartbeat(job, time.time() + self.cfg.lease_s)
            except Exception:              # the database blinked: try again next beat
                log.exception("job %s: heartbeat failed", job.id)
                continue
            if not kept:
                held.abort_reason = "lease lost"
                log.warning(kv(job=job.id, event="lease_lost", worker=self.name))
                return
