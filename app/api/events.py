"""Server-Sent Events for one generation: queued (position), progress (stage, step), then one
of done, failed, cancelled. Event ids only grow, and follow the job's state (not the
connection), so a client that reconnects with Last-Event-ID gets only what is new.

Streams share one watcher per process (app/api/event_hub.py): a stream costs no query of its
own, and a key may hold at most SVD_MAX_STREAMS_PER_KEY of them in a process."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

from starlette.requests import Request
from starlette.responses import StreamingResponse

from app.api.errors import ApiError
from app.jobs.model import Job, JobState

KEEPALIVE_S = 15.0
# A waiting stream wakes when its job's event changes, for the keep-alive, and at least this
# often to check that its client is still there (Starlette also ends it at once on a disconnect).
CHECK_S = 5.0
STREAMS_RETRY_S = 5     # Retry-After for a key at its stream limit
GONE_EVENT = (2001, "failed", {"error": "the generation no longer exists"})


def snapshot(job: Job, extra: dict) -> tuple[int, str, dict]:
    """(event id, event name, data) for the job as it is now."""
    if job.state == JobState.QUEUED:
        position = extra.get("queue_position", 1)
        return 1000 - min(position, 999), "queued", {"position": position, **extra}
    if job.state == JobState.RUNNING:
        stage = extra.get("stage")
        offset = {"decoding": 900, "encoding": 950}.get(stage, min(job.step or 0, 899))
        return 1000 + offset, "progress", extra
    if job.state in (JobState.SUCCEEDED, JobState.CONTENT_FILTERED):
        return 2000, "done", {"finish_reason": job.finish_reason or "SUCCESS", "seed": job.seed}
    if job.state == JobState.CANCELLED:
        return 2000, "cancelled", {}
    return 2000, "failed", {"error": (job.error or "the video could not be generated")[:200]}


class EventStreamResponse(StreamingResponse):
    """Frees the key's stream slot when the response ends, however it ends (a client gone
    before the first byte included)."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            with contextlib.suppress(Exception):   # unsubscribes a stream stopped mid-send
                await self.body_iterator.aclose()


def open_stream(request: Request, owner: str, job_id: str, last_seen: int) -> StreamingResponse:
    """The response for a job the caller owns, or 429 when the key holds its limit of open
    streams in this process."""
    state = request.app.state
    hub = state.event_hub
    if not hub.admit(owner):
        state.metrics.rejected.labels("streams").inc()
        raise ApiError.rate_limited(STREAMS_RETRY_S, f"this key already has "
                                    f"{hub.max_streams_per_key} event streams open")
    return EventStreamResponse(event_stream(request, owner, job_id, last_seen),
                               lambda: hub.release(owner), media_type="text/event-stream",
                               headers={"x-accel-buffering": "no"})


async def event_stream(request: Request, owner: str, job_id: str, last_seen: int):
    hub = request.app.state.event_hub
    watch = hub.subscribe(job_id)
    try:
        quiet_since = time.monotonic()
        while True:
            seen, changed = watch.seen, watch.changed
            if seen is not None:                   # None until the hub's first lookup
                if seen.owner is None or not secrets.compare_digest(seen.owner, owner):
                    yield _event(*GONE_EVENT)       # expired or removed while we watched
                    return
                event_id, name, data = seen.event
                if event_id > last_seen:
                    last_seen = event_id
                    quiet_since = time.monotonic()
                    yield _event(event_id, name, data)
                if seen.finished:
                    return
            if hub.closed:                         # shutting down
                return
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"           # proxies close silent connections
            if await request.is_disconnected():
                return
            wait = min(CHECK_S, quiet_since + KEEPALIVE_S - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), max(wait, 0.01))
    finally:
        hub.unsubscribe(watch)


def _event(event_id: int, name: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
