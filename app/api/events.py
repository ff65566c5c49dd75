"""Server-Sent Events for one generation: queued (position), progress (stage, step), then one
of done, failed, cancelled. Event ids only grow, and follow the job's state (not the
connection), so a client that reconnects with Last-Event-ID gets only what is new."""
from __future__ import annotations

import asyncio
import json
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.jobs.model import Job, JobState

POLL_S = 0.25
KEEPALIVE_S = 15.0


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


async def event_stream(request: Request, owner: str, job_id: str, last_seen: int):
    service = request.app.state.service
    quiet_since = time.monotonic()
    while True:
        view = await run_in_threadpool(service.find, owner, job_id)
        if view is None:                      # expired or removed while we watched
            yield _event(2001, "failed", {"error": "the generation no longer exists"})
            return
        job = view.job
        extra = {}
        if not job.state.finished:
            extra = await run_in_threadpool(service.progress, job)
        event_id, name, data = snapshot(job, extra)
        if event_id > last_seen:
            last_seen = event_id
            quiet_since = time.monotonic()
            yield _event(event_id, name, data)
        if job.state.finished:
            return
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"           # proxies close silent connections
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)


def _event(event_id: int, name: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
