"""One watcher per process for all the event streams (app/api/events.py).

A stream never queries the database itself: it subscribes to its job here. One asyncio task
looks up every watched job in one query per tick (POLL_S), works out each job's event once
(the queue position and ETA cost a query or two per job, never per stream), and hands it to
all the streams on that job. The task runs only while some stream watches.

On PostgreSQL, workers in any process NOTIFY `svd_job_changed` with a job's id when they
claim it, advance it, finish it or cancel it (app/jobs/sql.py). The hub LISTENs, looks up a
watched job as soon as it changes, and refreshes queue positions when another job leaves the
queue; the regular tick slows to FALLBACK_S, which catches whatever a dropped LISTEN
connection missed.

Open streams are also counted here, per key and per process: `admit` refuses a key that
already holds `max_streams_per_key` of them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from app.api.events import GONE_EVENT, snapshot
from app.jobs.model import JobState

log = logging.getLogger(__name__)

POLL_S = 0.25          # between lookups of all watched jobs
FALLBACK_S = 1.0       # the same while LISTEN/NOTIFY tells of changes (PostgreSQL)
MIN_GAP_S = 0.05       # between any two lookups, however many changes are announced


@dataclass(frozen=True)
class Seen:
    """A job as its streams see it: the event for its state now; owner None when it no longer
    exists (deleted, expired, or its result is gone)."""
    owner: str | None
    event: tuple[int, str, dict]
    finished: bool
    queued: bool = False


GONE = Seen(None, GONE_EVENT, True)


class Watch:
    """One watched job: its latest Seen, shared by every stream on it. `changed` is set (and
    replaced) when the event changes; the data alone changing (an ETA) wakes nobody."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.streams = 0
        self.seen: Seen | None = None          # None until the first lookup
        self.changed = asyncio.Event()

    def update(self, seen: Seen) -> None:
        old, self.seen = self.seen, seen
        if old is None or (old.event[:2], old.owner) != (seen.event[:2], seen.owner):
            self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class EventHub:
    def __init__(self, service, max_streams_per_key: int = 0, listen_url: str | None = None,
                 poll_s: float = POLL_S, fallback_s: float = FALLBACK_S):
        self.service = service
        self.max_streams_per_key = max_streams_per_key       # 0: no limit
        self.listen_url = listen_url                         # PostgreSQL: LISTEN there
        self.poll_s, self.fallback_s = poll_s, fallback_s
        self.closed = False
        self.lookups = 0                                     # batched lookups so far
        self._streams: Counter[str] = Counter()              # owner -> open streams
        self._watches: dict[str, Watch] = {}
        self._urgent: set[str] = set()                       # look up at once: new or changed
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener = None
        self._due = 0.0                                      # next lookup of every watched job
        self._last_all = self._last_any = 0.0
        self._queue_watched = False                          # some watched job is queued
        self._failing = False

    # Streams per key.

    def admit(self, owner: str) -> bool:
        """Count one more open stream for this key, unless it holds its limit already."""
        if self.max_streams_per_key and self._streams[owner] >= self.max_streams_per_key:
            return False
        self._streams[owner] += 1
        return True

    def release(self, owner: str) -> None:
        self._streams[owner] -= 1
        if self._streams[owner] <= 0:
            del self._streams[owner]

    def open_streams(self, owner: str | None = None) -> int:
        return self._streams[owner] if owner is not None else sum(self._streams.values())

    # Watching.

    @property
    def running(self) -> bool:
        return self._task is not None

    def subscribe(self, job_id: str) -> Watch:
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = Watch(job_id)
            self._urgent.add(job_id)                         # its first event without a wait
            self._kick.set()
        watch.streams += 1
        if self._task is None and not self.closed:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="event-hub")
            if self.listen_url and self._listener is None:
                self._start_listener()
        return watch

    def unsubscribe(self, watch: Watch) -> None:
        watch.streams -= 1
        if watch.streams <= 0 and self._watches.get(watch.job_id) is watch:
            del self._watches[watch.job_id]
            if not self._watches:
                self._kick.set()                             # the task ends now, not later

    async def close(self) -> None:
        """Stop the task and the listener; streams still open end."""
        self.closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for watch in self._watches.values():
            watch.wake()
        if self._listener is not None:
            await run_in_threadpool(self._listener.stop)

    async def _run(self) -> None:
        try:
            while self._watches and not self.closed:
                now = time.monotonic()
                every = now >= self._due
                if not every and not self._urgent:
                    self._kick.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), self._due - now)
                    continue
                if now < self._last_any + MIN_GAP_S:
                    await asyncio.sleep(self._last_any + MIN_GAP_S - now)
                    continue
                if every:
                    ids = list(self._watches)
                    self._last_all = now
                    self._due = now + (self.fallback_s if self._listening() else self.poll_s)
                else:
                    ids = [i for i in self._urgent if i in self._watches]
                self._urgent.clear()
                self._last_any = now
                if ids:
                    await self._refresh(ids)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _refresh(self, ids: list[str]) -> None:
        try:
            seen = await run_in_threadpool(self._look, ids)
        except Exception:                                    # the database hiccuped: next tick
            if not self._failing:
                log.exception("event streams: looking up %d job(s) failed; retrying", len(ids))
            self._failing = True
            return
        self._failing = False
        for job_id, s in seen.items():
            watch = self._watches.get(job_id)
            if watch is not None:
                watch.update(s)
        self._queue_watched = any(w.seen is not None and w.seen.queued
                                  for w in self._watches.values())

    def _look(self, ids: list[str]) -> dict[str, Seen]:
        """In a thread: one query for all the jobs, then each one's event."""
        service = self.service
        jobs = service.store.get_many(ids)
        self.lookups += 1
        out = {}
        for job_id in ids:
            job = jobs.get(job_id)
            if job is not None and job.state.finished:
                # Once per job: expired, or succeeded with its result missing, reads as gone,
                # as for a poll.
                view = service.find(job.owner, job_id)
                job = view.job if view is not None else None
            if job is None:
                out[job_id] = GONE
                continue
            extra = {} if job.state.finished else service.progress(job)
            out[job_id] = Seen(job.owner, snapshot(job, extra), job.state.finished,
                               job.state == JobState.QUEUED)
        return out

    # LISTEN/NOTIFY (PostgreSQL).

    def _start_listener(self) -> None:
        from app.jobs.notify import Listener
        from app.jobs.sql import CHANGED_CHANNEL
        self._listener = Listener(self.listen_url, channel=CHANGED_CHANNEL,
                                  on_notify=self._notified_from_thread).start()

    def _listening(self) -> bool:
        return self._listener is not None and self._listener.connected.is_set()

    def _notified_from_thread(self, job_id: str | None) -> None:
        loop = self._loop
        if loop is not None and not self.closed:
            with contextlib.suppress(RuntimeError):         # the loop has closed
                loop.call_soon_threadsafe(self._notified, job_id)

    def _notified(self, job_id: str | None) -> None:
        if not self._watches:
            return
        if job_id is None:                                   # (re)connected: anything changed
            self._due = 0.0
        elif job_id in self._watches:
            self._urgent.add(job_id)
        elif self._queue_watched:                            # another job left the queue
            self._due = min(self._due, self._last_all + self.poll_s)
        else:
            return
        self._kick.set()
