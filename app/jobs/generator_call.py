"""One generator call for one job, or for a batch of compatible jobs (SVD_MAX_BATCH).

The step callback reports progress to every job of the call and drops a job that was
cancelled, timed out or lost its lease (its outcome is recorded at once, as for a single
job); the others go on, and the call stops when none is left or the worker stops (then every
job still in it is handed back). A batch that fails (out of GPU memory, say) is run again one
job at a time, each with the usual lower-memory retries.
"""
from __future__ import annotations

import logging
import time
import traceback
from typing import Callable

import numpy as np

from app.jobs.failures import crash_here, describe_failure
from app.jobs.held import AbortReason, Held, Holder, Stop
from app.jobs.model import JobState
from app.logs import kv
from inference.base import VideoGenerator, is_out_of_memory, with_less_memory  # no torch

log = logging.getLogger("app.jobs.worker")

# Share of the progress bar given to denoising; decode and encode share the rest.
DENOISE_SHARE = 0.9


class GeneratorCall:
    def __init__(self, generator: VideoGenerator, holder: Holder, crash_at: str = "",
                 metrics=None, on_last_step: Callable[[], None] | None = None):
        self.generator = generator
        self.holder = holder
        self.crash_at = crash_at
        self.metrics = metrics
        self.on_last_step = on_last_step      # the last denoising step is done: VAE decode next

    def run(self, batch: list[Held]) -> list[tuple[Held, np.ndarray]]:
        """Frames for each job of `batch` that made it through; the others' outcomes are
        recorded (or handed back) and their leases closed."""
        if len(batch) == 1:
            return self._single(batch[0])
        try:
            videos = self._call(batch, lambda on_step: self.generator.generate_batch(
                [h.request for h in batch], on_step))
            return [(h, frames) for h, frames in zip(batch, videos) if not h.closed]
        except Stop:
            self._settle(batch)
            return []
        except Exception as exc:
            oom = is_out_of_memory(exc)
            log.warning(kv(event="out_of_memory" if oom else "batch_failed", jobs=len(batch),
                           error=None if oom else describe_failure(exc),
                           retry="one job at a time"))
            if oom and self.metrics is not None:
                self.metrics.memory_retries.inc()
        out = []
        for held in batch:
            if not held.closed:
                out += self._single(held)
        return out

    def _single(self, held: Held) -> list[tuple[Held, np.ndarray]]:
        """One job, retried with less memory after out-of-memory (not a new attempt)."""
        def attempt(level: int):
            return self._call([held], lambda on_step: self.generator.generate(
                held.request, on_step, low_memory=level))

        def on_retry(level: int) -> None:
            log.warning(kv(job=held.job.id, event="out_of_memory", retry_low_memory=level))
            if self.metrics is not None:
                self.metrics.memory_retries.inc()

        try:
            return [(held, with_less_memory(attempt, on_retry))]    # Stop is not out of memory
        except Stop:
            self._settle([held])
        except Exception as exc:
            if held.abort_reason:          # e.g. timed out, then the model raised as well
                self._settle([held])
            else:
                log.error("job %s failed: %s\n%s", held.job.id, exc, traceback.format_exc())
                self.holder.finish(held.job, JobState.FAILED, error=describe_failure(exc))
                held.close()
        return []

    def _call(self, batch: list[Held], call):
        """`call(on_step)` with a step callback for the jobs of `batch`."""
        last_progress = [0.0]

        def on_step(done: int, total: int) -> None:
            if self.holder.is_stopping():
                raise Stop(AbortReason.STOPPING.value)
            if self.crash_at == "denoise":
                crash_here("denoise")
            now = time.monotonic()
            write = done == total or now - last_progress[0] >= 0.25    # spare the database
            if write:
                last_progress[0] = now
            for held in batch:
                if held.closed:
                    continue
                try:
                    self.holder.check_abort(held)
                    if write:
                        self.holder.report(held, DENOISE_SHARE * done / total, done, total)
                except Stop:
                    if held.abort_reason != AbortReason.STOPPING:
                        self._settle([held])      # only this job stops
            if all(h.closed for h in batch):
                raise Stop("nothing left to generate")
            if done == total and self.on_last_step is not None:
                self.on_last_step()

        try:
            return call(on_step)
        finally:
            if self.metrics is not None:
                for kind, value in self.generator.memory_stats().items():
                    self.metrics.gpu_memory.labels(kind).set(value)

    def _settle(self, batch: list[Held]) -> None:
        """Record how each job still open stopped and close it; with no other reason, the
        worker is stopping and hands it back."""
        for held in batch:
            if not held.closed:
                held.abort_reason = held.abort_reason or AbortReason.STOPPING
                self.holder.stopped(held)
                held.close()
