"""After generation: content filter, encode, store the video, record the outcome.

Without overlap this runs in the worker thread, as part of the job. With overlap
(SVD_OVERLAP) it runs on a thread of its own while the generator goes on with the next job.
The queue between them holds one generation's videos, so at most two generations' frames
(one being finished, one waiting) are ever kept in memory; the worker waits when it is full.
A job stays held (its lease renewed) until its outcome is recorded here.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import traceback

from app.jobs.content_filter import flagged
from app.jobs.failures import crash_here, describe_failure
from app.jobs.held import Held, Holder, Stop
from app.jobs.model import JobState
from app.logs import kv
from app.results.base import ResultStore
from inference.encode import encode_video, yield_cpu_to_the_gpu_feed

log = logging.getLogger("app.jobs.worker")

_CLOSE = object()


class Finisher:
    def __init__(self, holder: Holder, results: ResultStore, config, content_filter=None):
        self.holder = holder
        self.results = results
        self.cfg = config
        self.content_filter = content_filter
        self.overlap = config.overlap
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Generations handed over whose videos are not all recorded yet."""
        return self._pending

    def submit(self, videos: list[tuple[Held, object]]) -> None:
        """Finish these jobs: now (no overlap) or on the finisher thread. Blocks while the
        finisher is busy and one generation already waits."""
        if not videos:
            return
        if not self.overlap:
            self._finish_all(videos)
            return
        with self._idle:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"finisher-{self.holder.name}")
                self._thread.start()
        self._queue.put(videos)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is recorded; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish what was handed over, then end the thread."""
        if self.flush(timeout) and self._thread is not None:
            self._queue.put(_CLOSE)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        yield_cpu_to_the_gpu_feed()    # the encoder takes idle cores, never the GPU feed's
        while (videos := self._queue.get()) is not _CLOSE:
            try:
                self._finish_all(videos)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _finish_all(self, videos) -> None:
        for held, frames in videos:
            try:
                self._finish(held, frames)
            except Exception:          # the database blinked: the lease will hand it back
                log.exception("job %s: could not record its outcome", held.job.id)
            finally:
                held.close()

    def _finish(self, held: Held, frames) -> None:
        job, holder = held.job, self.holder
        t0 = time.monotonic()
        # Without overlap, a worker told to stop hands the job back, as it always did; with
        # overlap the generator's work is done, and stopping waits for it to be stored.
        stop_too = not self.overlap
        try:
            filtered = bool(self.content_filter) and flagged(
                self.content_filter(frames, held.request.image))
            if filtered:
                frames = frames * 0            # nothing flagged is ever served
            holder.check_abort(held, stop_too)
            holder.report(held, 0.95)
            key, size = self._store_video(held, frames, stop_too)
        except Stop:
            holder.stopped(held)
            return
        except Exception as exc:
            if held.abort_reason:          # e.g. timed out, then the encoder raised as well
                holder.stopped(held)
                return
            log.error("job %s failed: %s\n%s", job.id, exc, traceback.format_exc())
            holder.finish(job, JobState.FAILED, error=describe_failure(exc))
            return
        encode_s = time.monotonic() - t0
        outcome = JobState.CONTENT_FILTERED if filtered else JobState.SUCCEEDED
        reason = "CONTENT_FILTERED" if filtered else "SUCCESS"
        if holder.finish(job, outcome, finish_reason=reason, result_key=key, result_bytes=size):
            total = time.monotonic() - held.t0
            log.info(kv(job=job.id, event="succeeded", worker=holder.name, total_s=total,
                        generate_s=held.generate_s, encode_s=encode_s, frames=len(frames)))
            holder.observe("generate", held.generate_s)
            holder.observe("encode", encode_s)
            holder.observe("run", total)
            if holder.metrics is not None:
                holder.metrics.videos.inc()
        else:
            self.results.delete(key)       # someone else owns the job now; keep nothing
            log.warning(kv(job=job.id, event="result_dropped", worker=holder.name,
                           reason="no longer held"))

    def _store_video(self, held: Held, frames, stop_too: bool) -> tuple[str, int]:
        """Encode to a temp file, make it durable, rename it into place; return its key and
        size."""
        job = held.job
        fmt = job.output_format or "mp4"
        key = self.results.key_for(job.id, fmt)
        temp = self.results.temp_path(key)
        try:
            if self.cfg.crash_at == "encode":
                crash_here("encode")
            encode_video(frames, temp, job.output_fps or self.cfg.output_fps, fmt)
            self.holder.check_abort(held, stop_too)
            self.holder.report(held, 0.98)     # cancelled while encoding: stop here
            if self.cfg.crash_at == "write":
                crash_here("write")
            size = temp.stat().st_size
            self.results.commit(temp, key)
        finally:
            temp.unlink(missing_ok=True)
        return key, size
