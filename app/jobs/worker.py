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
from dataclasses import dataclass
from typing import Callable

from app.jobs.model import Job, JobState
from app.jobs.store import JobStore
from app.storage import FileResultStore
from inference.base import GenerationRequest          # these three never import torch
from inference.encode import encode_mp4
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


class _Stop(Exception):
    """Internal: abort the current generation (shutdown, timeout or lost lease)."""


class _Running:
    """What the heartbeat thread and the step callback share about the job in hand."""

    def __init__(self, job: Job):
        self.job = job
        self.abort_reason: str | None = None      # set → the next step stops the generation
        self.done = threading.Event()


class Worker:
    def __init__(self, name: str, store: JobStore, results: FileResultStore,
                 generator_factory: Callable[[], object], config: WorkerConfig,
                 wake: threading.Event | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.name = name
        self.store = store
        self.results = results
        self.factory = generator_factory
        self.cfg = config
        self.wake = wake or threading.Event()
        self.on_fatal = on_fatal
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.generator = None
        self._thread: threading.Thread | None = None
        self._current: _Running | None = None

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
            log.info("worker %s ready in %.1f s: %s", self.name, time.monotonic() - t0,
                     getattr(self.generator, "description", "?"))
        except BaseException as exc:            # noqa: BLE001 - reported, then the server stops
            log.critical("worker %s could not load the model: %s", self.name, exc)
            if self.on_fatal:
                self.on_fatal(exc)
            return
        self.ready.set()
        while not self.stopping.is_set():
            try:
                if not self.run_once():
                    self.wake.wait(self.cfg.idle_poll_s)
                    self.wake.clear()
            except Exception:                  # a database hiccup must not kill the worker
                log.exception("worker %s: unexpected error; retrying in 1 s", self.name)
                time.sleep(1.0)

    # -- one job ---------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim and run one job. False when there was nothing to do."""
        now = time.time()
        self.store.requeue_expired(now, self.cfg.max_attempts, now + self.cfg.result_ttl_s)
        job = self.store.claim(self.name, now, self.cfg.lease_s)
        if job is None:
            return False
        log.info("job %s running (worker %s, attempt %d, waited %.2f s)",
                 job.id, self.name, job.attempts, now - job.created_at)
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
        timings = {}
        try:
            image = decode_rgb(job.image, probe(job.image))
            request = GenerationRequest(image=image, seed=job.seed, cfg_scale=job.cfg_scale,
                                        motion_bucket_id=job.motion_bucket_id,
                                        num_frames=job.num_frames, steps=job.steps)
            last_progress = [0.0]

            def on_step(done: int, total: int) -> None:
                self._check_abort(running)
                now = time.monotonic()
                if done == total or now - last_progress[0] >= 0.25:   # spare the database
                    last_progress[0] = now
                    self.store.set_progress(job, DENOISE_SHARE * done / total)

            frames = self.generator.generate(request, on_step)
            timings["generate"] = time.monotonic() - t0
            self._check_abort(running)
            self.store.set_progress(job, 0.95)
            key = self.results.key_for(job.id)
            temp = self.results.temp_path(key)
            t1 = time.monotonic()
            try:
                encode_mp4(frames, temp, fps=self.cfg.output_fps)
                self._check_abort(running)
                self.results.commit(temp, key)
            finally:
                temp.unlink(missing_ok=True)
            timings["encode"] = time.monotonic() - t1
        except _Stop:
            self._stopped(running)
            return
        except Exception as exc:
            if running.abort_reason:       # e.g. timed out, then the model raised as well
                self._stopped(running)
                return
            log.error("job %s failed: %s\n%s", job.id, exc, traceback.format_exc())
            self._finish(job, JobState.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
            return
        if self._finish(job, JobState.SUCCEEDED, finish_reason="SUCCESS", result_key=key):
            log.info("job %s succeeded in %.2f s (generate %.2f s, encode %.2f s, %d frames)",
                     job.id, time.monotonic() - t0, timings["generate"], timings["encode"],
                     len(frames))
        else:
            self.results.delete(key)       # someone else owns the job now; keep nothing
            log.warning("job %s finished here but was no longer held by %s", job.id, self.name)

    def _finish(self, job: Job, state: JobState, **fields) -> bool:
        now = time.time()
        return self.store.finish(job, state, now, now + self.cfg.result_ttl_s, **fields)

    def _check_abort(self, running: _Running) -> None:
        if self.stopping.is_set() and running.abort_reason is None:
            running.abort_reason = "stopping"
        if running.abort_reason:
            raise _Stop(running.abort_reason)

    def _stopped(self, running: _Running) -> None:
        job = running.job
        if running.abort_reason == "stopping" and self.store.release(job):
            log.info("job %s handed back to the queue (worker stopping)", job.id)
        else:
            log.warning("job %s abandoned: %s", job.id, running.abort_reason)

    def _heartbeat(self, running: _Running) -> None:
        job = running.job
        deadline = time.time() + self.cfg.job_timeout_s
        while not running.done.wait(min(self.cfg.heartbeat_s, max(0.0, deadline - time.time()))):
            if time.time() >= deadline:
                # Fail it now so the client hears at once, even if the model is stuck in a
                # call that never returns to a step callback.
                running.abort_reason = "timed out"
                if self._finish(job, JobState.FAILED,
                                error=f"timed out after {self.cfg.job_timeout_s:.0f} s"):
                    log.error("job %s timed out after %.0f s", job.id, self.cfg.job_timeout_s)
                return
            try:
                held = self.store.heartbeat(job, time.time() + self.cfg.lease_s)
            except Exception:              # the database blinked: try again next beat
                log.exception("job %s: heartbeat failed", job.id)
                continue
            if not held:
                running.abort_reason = "lease lost"
                log.warning("job %s: lease lost; stopping it here", job.id)
                return
