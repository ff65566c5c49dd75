"""The worker: claims jobs, runs them, stores the MP4s, records the outcomes.

The same code runs as a thread inside `serve` and, scaled out, in worker processes. It holds
each job under a lease that one heartbeat loop extends (app/jobs/held.py); if this process dies, the lease runs
out and the job is claimed again (at most `max_attempts` times). torch is only imported by
the generator factory, inside the worker thread.

- Batching (`max_batch` > 1): queued jobs compatible with the one claimed (same size, frames,
  steps, guidance on or off) are claimed with it and run in one generator call
  (app/jobs/generator_call.py).
- Overlap (`overlap`): the generator never waits for the rest of a job. Encoding, storing and
  recording a video happen on the finisher's thread (app/jobs/finisher.py) while the next job
  generates, and the image of the oldest queued job is read and decoded while the current
  one's VAE decode runs. That job stays queued (its queue position shown, a cancel at once)
  until the GPU is free and it is claimed; if another worker or a cancel took it meanwhile,
  the decoded image is dropped. A worker that drains or stops waits for the videos being
  finished.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from app.jobs.content_filter import load_filter
from app.jobs.failures import crash_here, describe_failure
from app.jobs.finisher import Finisher
from app.jobs.generator_call import GeneratorCall
from app.jobs.held import AbortReason, Held, Holder, Prepared, prepare
from app.jobs.model import JobState
from app.jobs.outcomes import Outcomes
from app.jobs.store import JobStore
from app.jobs.sweeper import requeue_expired
from app.logs import kv
from app.results.base import ResultStore
from inference.base import VideoGenerator

log = logging.getLogger(__name__)


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
    content_filter: str = ""          # package.module:function; see app/jobs/content_filter.py
    overlap: bool = True              # finish a video while the next one generates
    max_batch: int = 1                # compatible queued jobs run in one generator call

    @classmethod
    def from_settings(cls, settings) -> "WorkerConfig":
        return cls(lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s,
                   max_attempts=settings.max_attempts, job_timeout_s=settings.job_timeout_s,
                   result_ttl_s=settings.result_ttl_s, output_fps=settings.output_fps,
                   crash_at=settings.fault_crash_at, content_filter=settings.content_filter,
                   overlap=settings.overlap, max_batch=settings.max_batch)


class Life(str, enum.Enum):
    """A worker's life. LOADING → READY → DRAINING → STOPPING, or LOADING → FAILED; a stop
    may come at any point. It only ever moves forward."""
    LOADING = "loading"      # the model is loading
    READY = "ready"          # claims and runs jobs
    DRAINING = "draining"    # claims nothing new; the jobs in hand finish
    STOPPING = "stopping"    # a job generating goes back to the queue; the thread ends
    FAILED = "failed"        # the model could not be loaded; the thread has ended


class Activity(str, enum.Enum):
    """What the worker thread does right now."""
    IDLE = "idle"
    CLAIMING = "claiming"    # a claim is under way: a drain waits for its outcome
    GENERATING = "generating"


_ORDER = list(Life)


class Worker:
    def __init__(self, name: str, *, store: JobStore, results: ResultStore,
                 generator_factory: Callable[[], VideoGenerator],
                 config: WorkerConfig = WorkerConfig(), wake: threading.Event | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None, metrics=None,
                 outcomes: Outcomes | None = None):
        self.name = name
        self.store = store
        self.results = results
        self.factory = generator_factory
        self.cfg = config
        self.wake = wake or threading.Event()
        self.on_fatal = on_fatal
        self.metrics = metrics
        self.life = Life.LOADING
        self.activity = Activity.IDLE
        self._life_lock = threading.Lock()
        self._stopped = threading.Event()        # set with Life.STOPPING: ends the waits
        self.generator: VideoGenerator | None = None
        self.holder = Holder(name, store, config, self.is_stopping, metrics,
                             outcomes or Outcomes(metrics))
        self.finisher = Finisher(self.holder, results, config, load_filter(config.content_filter))
        self._thread: threading.Thread | None = None
        self._ahead: Prepared | None = None        # the next queued job's image, decoded
        self._prefetch: threading.Thread | None = None
        self._last_requeue = 0.0

    @property
    def loaded(self) -> bool:
        """The model is loaded (the worker may be draining or stopping since)."""
        return self.generator is not None and self.life != Life.FAILED

    @property
    def busy(self) -> bool:
        """A job is in hand: being claimed or generated, or its video still being finished."""
        return self.activity != Activity.IDLE or self.finisher.pending > 0

    def is_stopping(self) -> bool:
        return self.life == Life.STOPPING

    def _claims_allowed(self) -> bool:
        return self.life == Life.READY

    def _move(self, life: Life) -> bool:
        """Move forward to `life` (never back); False when already there or past it."""
        with self._life_lock:
            if _ORDER.index(life) <= _ORDER.index(self.life) or self.life == Life.FAILED:
                return False
            self.life = life
        if life == Life.STOPPING:
            self._stopped.set()
            self.wake.set()
        return True

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"worker-{self.name}", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Claim nothing new; let the jobs in hand finish."""
        self._move(Life.DRAINING)

    def stop_soon(self) -> None:
        """A job generating stops at its next step and goes back to the queue; returns at
        once (see `stop` to wait)."""
        self._move(Life.STOPPING)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; a job generating stops at its next step and goes back to the
        queue, videos being finished are finished."""
        self.stop_soon()
        if self._thread is not None:
            self._thread.join(timeout)
        else:                                # driven by run_once (tests, benchmarks)
            self.finisher.close(timeout)

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until the videos handed to the finisher are recorded; False on timeout."""
        return self.finisher.flush(timeout)

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            generator = self.factory()
            log.info(kv(event="worker_ready", worker=self.name, load_s=time.monotonic() - t0,
                        model=getattr(generator, "description", "?")))
        except BaseException as exc:            # noqa: BLE001 - reported, then the server stops
            log.critical("worker %s could not load the model: %s", self.name, exc)
            with self._life_lock:
                self.life = Life.FAILED
            if self.on_fatal:
                self.on_fatal(exc)
            return
        self.generator = generator
        self._move(Life.READY)                   # unless a drain or stop came first
        while not self.is_stopping():
            if not self._claims_allowed():       # draining
                self._ahead = None
                self._stopped.wait(0.2)
                continue
            try:
                if not self.run_once():
                    self.wake.wait(self.cfg.idle_poll_s)
                    self.wake.clear()
            except Exception:                  # a database hiccup must not kill the worker
                log.exception("worker %s: unexpected error; retrying in 1 s", self.name)
                if self.metrics is not None:
                    self.metrics.worker_restarts.labels("error").inc()
                self._stopped.wait(1.0)
        self.finisher.close()

    # -- one generation --------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim and run a job (with compatible ones up to `max_batch`). False when there
        was nothing to do. With overlap, the videos may still be being finished when this
        returns (see `wait_finished`)."""
        if self.life == Life.LOADING and self.generator is not None:
            self._move(Life.READY)      # driven by run_once with its generator set (tests)
        if not self._claims_allowed():
            self._ahead = None
            return False
        try:
            self.activity = Activity.CLAIMING
            batch = self._claim()
            ahead, self._ahead = self._ahead, None
            for held in batch:
                held.prepare(ahead)
            if not batch:
                return False
            self.activity = Activity.GENERATING
            self._generate(batch)
        finally:
            self.activity = Activity.IDLE
        return True

    def _generate(self, batch: list[Held]) -> None:
        ready = []
        for held in batch:
            if held.error is None:
                ready.append(held)
                continue
            log.error("job %s failed: %s", held.job.id, held.error)
            self.holder.finish(held.job, JobState.FAILED, error=describe_failure(held.error))
            held.close()
        t0 = time.monotonic()
        for held in ready:
            held.t0 = t0
        generation = GeneratorCall(self.generator, self.holder, self.cfg.crash_at, self.metrics,
                                   self._start_prefetch)
        videos = []
        try:
            videos = generation.run(ready) if ready else []
        finally:
            self._say_if_late(ready)
            self._join_prefetch()
            handed = {id(h) for h, _ in videos}
            for held in ready:             # an unexpected error: leave them to their leases
                if id(held) not in handed:
                    held.close()
        for held, _ in videos:
            held.generate_s = time.monotonic() - t0
        self.finisher.submit(videos)       # may wait while the finisher is full

    def _say_if_late(self, batch: list[Held]) -> None:
        """A job that timed out failed at its deadline, but the worker (and its GPU) could
        not take another job until the model's call returned: say how long that took."""
        late = [h for h in batch if h.abort_reason == AbortReason.TIMED_OUT]
        if late:
            log.warning(kv(event="worker_free", worker=self.name, jobs=len(late),
                           after_timeout_s=time.time() - min(h.deadline for h in late)))

    # -- claiming --------------------------------------------------------------------------
    def _claim(self) -> list[Held]:
        """Claim the oldest queued job and, up to `max_batch`, queued jobs compatible with it;
        each is held (heartbeating) from here on."""
        now = time.time()
        # Jobs of dead workers: checked a few times per lease, not before every claim.
        if now - self._last_requeue >= self.cfg.lease_s / 3:
            self._last_requeue = now
            requeue_expired(self.store, now, self.cfg.max_attempts, self.cfg.result_ttl_s,
                            self.metrics)
        if self.cfg.crash_at == "queued" and self.store.count(JobState.QUEUED):
            crash_here("queued")          # with a job accepted and not yet claimed
        job = self.store.claim(self.name, now, self.cfg.lease_s)
        if job is None:
            return []
        batch = [self._hold(job, now)]
        if self.cfg.max_batch > 1 and self.generator.can_batch:
            try:
                more = self.store.claim_compatible(job, self.name, now, self.cfg.lease_s,
                                                   self.cfg.max_batch - 1)
            except Exception:              # the first job is claimed: run it alone
                log.exception("worker %s: could not claim a batch", self.name)
                more = []
            batch += [self._hold(j, now) for j in more]
        return batch

    def _hold(self, job, now: float) -> Held:
        log.info(kv(job=job.id, event="running", worker=self.name, attempt=job.attempts,
                    waited_s=now - job.created_at))
        self.holder.observe("queue_wait", now - job.created_at)
        return self.holder.hold(job)

    # -- prefetch (overlap) ----------------------------------------------------------------
    def _start_prefetch(self) -> None:
        """The last denoising step is done (VAE decode next): decode the image of the job
        the next claim will likely take, leaving it queued."""
        if not self.cfg.overlap or self._prefetch is not None or not self._claims_allowed():
            return
        self._prefetch = threading.Thread(target=self._prefetch_run, daemon=True,
                                          name=f"prefetch-{self.name}")
        self._prefetch.start()

    def _prefetch_run(self) -> None:
        try:
            job = self.store.next_queued()
        except Exception:                  # the claim will read it again
            log.exception("worker %s: prefetch failed", self.name)
            return
        self._ahead = prepare(job) if job is not None else None

    def _join_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.join()
            self._prefetch = None
