"""The worker: claims one job at a time, runs it, stores the MP4, records the outcome.

The same code runs as a thread inside `serve` and, scaled out, in worker processes. It holds
each job under a lease that a heartbeat thread extends; if this process dies, the lease runs
out and the job is claimed again (at most `max_attempts` times). torch is only imported by
the generator factory, inside the worker thread.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import Callable

from app.content_filter import flagged, load_filter
from app.jobs.failures import crash_here, describe_failure
from app.jobs.model import Job, JobState
from app.jobs.store import JobStore
from app.logs import kv
from app.storage import ResultStore
from inference.base import (LOW_MEMORY_LEVELS, GenerationRequest,  # none of these import torch
                            is_out_of_memory)
from inference.encode import encode_video
from inference.images import decode_rgb, probe

log = logging.getLogger(__name__)

# Share of the progress bar given to denoising; decode and encode share the rest.
DENOISE_SHARE = 0.9


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float = 30.0
    heartbeat_s: float = 10.0
    max_attempts: int = 3
    job_timeout_s: float = 1800.0
    result_ttl_s: float = 86400.0
    output_fps: int = 7
    idle_poll_s: float = 1.0          # fallback when no wake-up arrives
    crash_at: str = ""                # fault hook for tests: "", queued, denoise, encode, write
    content_filter: str = ""          # package.module:function; see app/content_filter.py

    @classmethod
    def from_settings(cls, settings) -> "WorkerConfig":
        return cls(lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s,
                   max_attempts=settings.max_attempts, job_timeout_s=settings.job_timeout_s,
                   result_ttl_s=settings.result_ttl_s, output_fps=settings.output_fps,
                   crash_at=settings.fault_crash_at, content_filter=settings.content_filter)


class _Stop(Exception):
    """Internal: abort the current generation (shutdown, timeout or lost lease)."""


class _Running:
    """What the heartbeat thread and the step callback share about the job in hand."""

    def __init__(self, job: Job):
        self.job = job
        self.abort_reason: str | None = None      # set → the next step stops the generation
        self.done = threading.Event()


class Worker:
    def __init__(self, name: str, store: JobStore, results: ResultStore,
                 generator_factory: Callable[[], object], config: WorkerConfig,
                 wake: threading.Event | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None, metrics=None,
                 on_finished: Callable[[str], None] | None = None):
        self.name = name
        self.store = store
        self.results = results
        self.factory = generator_factory
        self.cfg = config
        self.wake = wake or threading.Event()
        self.on_fatal = on_fatal
        self.metrics = metrics
        self.on_finished = on_finished        # e.g. the webhook sender, given the job id
        self.stopping = threading.Event()   # stop now; a job in hand goes back to the queue
        self.draining = threading.Event()   # claim nothing new; let the job in hand finish
        self.ready = threading.Event()
        self.generator = None
        self.content_filter = load_filter(config.content_filter)
        self._thread: threading.Thread | None = None
        self._current: _Running | None = None
        self._last_requeue = 0.0

    @property
    def busy(self) -> bool:
        return self._current is not None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"worker-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; a job in hand stops at its next step and goes back to the queue."""
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            self.generator = self.factory()
            log.info(kv(event="worker_ready", worker=self.name, load_s=time.monotonic() - t0,
                        model=getattr(self.generator, "description", "?")))
        except BaseException as exc:            # noqa: BLE001 - reported, then the server stops
            log.critical("worker %s could not load the model: %s", self.name, exc)
            if self.on_fatal:
                self.on_fatal(exc)
            return
        self.ready.set()
        while not self.stopping.is_set():
            if self.draining.is_set():
                self.stopping.wait(0.2)
                continue
            try:
                if not self.run_once():
                    self.wake.wait(self.cfg.idle_poll_s)
                    self.wake.clear()
            except Exception:                  # a database hiccup must not kill the worker
                log.exception("worker %s: unexpected error; retrying in 1 s", self.name)
                if self.metrics is not None:
                    self.metrics.worker_restarts.labels("error").inc()
                time.sleep(1.0)

    # -- one job ---------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim and run one job. False when there was nothing to do."""
        now = time.time()
        # Jobs of dead workers: checked a few times per lease, not before every claim.
        if now - self._last_requeue >= self.cfg.lease_s / 3:
            self._last_requeue = now
            self.store.requeue_expired(now, self.cfg.max_attempts, now + self.cfg.result_ttl_s)
        if self.cfg.crash_at == "queued" and self.store.count(JobState.QUEUED):
            crash_here("queued")          # with a job accepted and not yet claimed
        job = self.store.claim(self.name, now, self.cfg.lease_s)
        if job is None:
            return False
        log.info(kv(job=job.id, event="running", worker=self.name, attempt=job.attempts,
                    waited_s=now - job.created_at))
        self._observe("queue_wait", now - job.created_at)
        running = _Running(job)
        self._current = running
        beat = threading.Thread(target=self._heartbeat, args=(running,), daemon=True,
                                name=f"heartbeat-{self.name}")
        beat.start()
        try:
            self._process(running)
        finally:
            running.done.set()
            beat.join()
            self._current = None
        return True

    def _process(self, running: _Running) -> None:
        job = running.job
        t0 = time.monotonic()
        try:
            image = decode_rgb(job.image, probe(job.image))
            request = GenerationRequest(image=image, seed=job.seed, cfg_scale=job.cfg_scale,
                                        motion_bucket_id=job.motion_bucket_id,
                                        num_frames=job.num_frames, steps=job.steps)
            if job.noise_aug_strength is not None:
                request = replace(request, noise_aug_strength=job.noise_aug_strength)
            frames = self._generate(running, request)
            generate_s = time.monotonic() - t0
            filtered = bool(self.content_filter) and flagged(self.content_filter(frames, image))
            if filtered:
                frames = frames * 0            # nothing flagged is ever served
            self._check_abort(running)
            self._report(running, 0.95)
            key = self._store_video(running, frames)
            encode_s = time.monotonic() - t0 - generate_s
        except _Stop:
            self._stopped(running)
            return
        except Exception as exc:
            if running.abort_reason:       # e.g. timed out, then the model raised as well
                self._stopped(running)
                return
            log.error("job %s failed: %s\n%s", job.id, exc, traceback.format_exc())
            self._finish(job, JobState.FAILED, error=describe_failure(exc))
            return
        outcome = JobState.CONTENT_FILTERED if filtered else JobState.SUCCEEDED
        reason = "CONTENT_FILTERED" if filtered else "SUCCESS"
        if self._finish(job, outcome, finish_reason=reason, result_key=key):
            total = time.monotonic() - t0
            log.info(kv(job=job.id, event="succeeded", worker=self.name, total_s=total,
                        generate_s=generate_s, encode_s=encode_s, frames=len(frames)))
            self._observe("generate", generate_s)
            self._observe("encode", encode_s)
            self._observe("run", total)
            if self.metrics is not None:
                self.metrics.videos.inc()
        else:
            self.results.delete(key)       # someone else owns the job now; keep nothing
            log.warning(kv(job=job.id, event="result_dropped", worker=self.name,
                           reason="no longer held"))

    def _generate(self, running: _Running, request: GenerationRequest):
        """Run the model; on out-of-memory, retry with less memory (not a new attempt)."""
        job = running.job
        last_progress = [0.0]

        def on_step(done: int, total: int) -> None:
            self._check_abort(running)
            if self.cfg.crash_at == "denoise":
                crash_here("denoise")
            now = time.monotonic()
            if done == total or now - last_progress[0] >= 0.25:   # spare the database
                last_progress[0] = now
                self._report(running, DENOISE_SHARE * done / total, done, total)

        for level in range(LOW_MEMORY_LEVELS + 1):
            try:
                return self.generator.generate(request, on_step, low_memory=level)
            except Exception as exc:
                if not is_out_of_memory(exc) or level == LOW_MEMORY_LEVELS:
                    raise
                log.warning(kv(job=job.id, event="out_of_memory", retry_low_memory=level + 1))
                if self.metrics is not None:
                    self.metrics.memory_retries.inc()
            finally:
                self._record_gpu_memory()

    def _report(self, running: _Running, progress: float, step: int | None = None,
                total: int | None = None) -> None:
        """Record progress; stop here if the owner cancelled or the job is no longer ours."""
        if self.store.set_progress(running.job, progress, step, total):
            return
        current = self.store.get(running.job.id)
        cancelled = current is not None and current.cancel_requested
        running.abort_reason = "cancelled" if cancelled else "lease lost"
        raise _Stop(running.abort_reason)

    def _store_video(self, running: _Running, frames) -> str:
        """Encode to a temp file, make it durable, rename it into place; return its key."""
        job = running.job
        fmt = job.output_format or "mp4"
        key = self.results.key_for(job.id, fmt)
        temp = self.results.temp_path(key)
        try:
            if self.cfg.crash_at == "encode":
                crash_here("encode")
            encode_video(frames, temp, job.output_fps or self.cfg.output_fps, fmt)
            self._check_abort(running)
            if self.cfg.crash_at == "write":
                crash_here("write")
            self.results.commit(temp, key)
        finally:
            temp.unlink(missing_ok=True)
        return key

    def _finish(self, job: Job, state: JobState, **fields) -> bool:
        now = time.time()
        done = self.store.finish(job, state, now, now + self.cfg.result_ttl_s, **fields)
        if done and self.metrics is not None:
            self.metrics.jobs_finished.labels(state.value).inc()
        if done and state != JobState.SUCCEEDED:
            log.info(kv(job=job.id, event=state.value, worker=self.name, error=fields.get("error")))
        if done and job.webhook_url and self.on_finished is not None:
            self.on_finished(job.id)
        return done

    def _observe(self, phase: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.job_phase_seconds.labels(phase).observe(seconds)

    def _record_gpu_memory(self) -> None:
        stats = getattr(self.generator, "memory_stats", None)
        if self.metrics is not None and stats is not None:
            for kind, value in stats().items():
                self.metrics.gpu_memory.labels(kind).set(value)

    def _check_abort(self, running: _Running) -> None:
        if self.stopping.is_set() and running.abort_reason is None:
            running.abort_reason = "stopping"
        if running.abort_reason:
            raise _Stop(running.abort_reason)

    def _stopped(self, running: _Running) -> None:
        job = running.job
        if running.abort_reason == "cancelled":
            self._finish(job, JobState.CANCELLED, error="cancelled by its owner")
            return
        if running.abort_reason == "stopping" and self.store.release(job):
            log.info(kv(job=job.id, event="released", worker=self.name, reason="worker stopping"))
        else:
            log.warning(kv(job=job.id, event="abandoned", reason=running.abort_reason))

    def _heartbeat(self, running: _Running) -> None:
        job = running.job
        deadline = time.time() + self.cfg.job_timeout_s
        while not running.done.wait(min(self.cfg.heartbeat_s, max(0.0, deadline - time.time()))):
            if time.time() >= deadline:
                # Fail it now so the client hears at once, even if the model is stuck in a
                # call that never returns to a step callback.
                running.abort_reason = "timed out"
                self._finish(job, JobState.FAILED,
                             error=f"timed out after {self.cfg.job_timeout_s:.0f} s")
                return
            try:
                held = self.store.heartbeat(job, time.time() + self.cfg.lease_s)
            except Exception:              # the database blinked: try again next beat
                log.exception("job %s: heartbeat failed", job.id)
                continue
            if not held:
                running.abort_reason = "lease lost"
                log.warning(kv(job=job.id, event="lease_lost", worker=self.name))
                return
