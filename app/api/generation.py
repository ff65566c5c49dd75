"""The Stability image-to-video endpoints: start a generation, poll for its result."""
from __future__ import annotations

import base64
import logging
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import require_owner
from app.api.errors import ApiError
from app.api.forms import parse_generation
from app.api.events import open_stream
from app.api.schemas import (IMAGE_TO_VIDEO_FORM, AsyncGenerationResponse,
                             VideoGenerationResponse, error_responses)
from app.jobs.model import JobState
from app.jobs.service import SubmitRefused
from app.jobs.store import CancelOutcome
from app.logs import kv, request_id
from inference.base import FORMATS

log = logging.getLogger(__name__)
router = APIRouter()

JOB_ID_RE = re.compile(r"^[0-9a-f]{64}$")
CLIENT_HEADERS = ("stability-client-id", "stability-client-user-id", "stability-client-version")
QUEUE_FULL_RETRY_S = 10     # a video takes seconds to minutes; sooner retries only spin
DRAINING_RETRY_S = 30


def wants_json(accept: str | None) -> bool:
    """JSON when Accept names application/json with no video/ type before it; else the MP4
    (no Accept, */*, video/*, video/mp4, or anything else — never a 406)."""
    for part in (accept or "").split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media.startswith("video/"):
            return False
        if media == "application/json":
            return True
    return False


async def start(request: Request, owner: str = Depends(require_owner)):
    state = request.app.state
    metrics = state.metrics
    # Cheap refusals first, before the body is read.
    if state.runtime.draining:
        metrics.rejected.labels("draining").inc()
        raise ApiError.unavailable(DRAINING_RETRY_S, "it is shutting down")
    # Only generations that start count against the rate (see app/api/limits.py): a slot is
    # reserved before the body is read, so a key at its limit gets its 429 at once and a
    # concurrent burst cannot pass the limit; it is kept once the job is queued and given
    # back on any refusal (400, 413, queue or storage full, a dropped connection).
    limiter = state.limiter
    slot = limiter.reserve(owner) if limiter is not None else None
    if slot is not None and slot.wait is not None:
        metrics.rejected.labels("rate").inc()
        limit, window = state.settings.rate
        raise ApiError.rate_limited(slot.wait, f"more than {limit} generations in {window:g} s")
    started = False
    try:
        params = await parse_generation(request, state.settings)
        try:
            job = await run_in_threadpool(state.service.submit, owner, params)
        except SubmitRefused as refused:
            metrics.rejected.labels(refused.reason.value).inc()
            raise ApiError.rate_limited(refused.retry_after or QUEUE_FULL_RETRY_S,
                                        refused.what) from None
        started = True
    finally:
        if slot is not None and started:
            limiter.keep(slot)
        elif slot is not None:
            limiter.release(slot)
    client = {h.removeprefix("stability-"): request.headers[h][:256]
              for h in CLIENT_HEADERS if h in request.headers}
    log.info(kv(request_id=request_id.get(), job=job.id, event="queued",
                size=f"{job.width}x{job.height}", seed=job.seed, cfg_scale=job.cfg_scale,
                motion_bucket_id=job.motion_bucket_id, **client))
    return JSONResponse({"id": job.id}, status_code=200)


async def result(id: str, request: Request, owner: str = Depends(require_owner)):
    if not JOB_ID_RE.match(id):
        raise ApiError.generation_not_found()
    state = request.app.state
    view = await run_in_threadpool(state.service.find, owner, id)
    if view is None:
        raise ApiError.generation_not_found()
    job = view.job
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        # `status` stays exactly "in-progress" (clients test that value); the rest is extra.
        extra = await run_in_threadpool(state.service.progress, job)
        return JSONResponse({"id": job.id, "status": "in-progress", **extra}, status_code=202)
    if job.state == JobState.CANCELLED:
        raise ApiError.generation_cancelled()
    if job.state == JobState.FAILED:
        raise ApiError(500, "internal_error", ["generation: the video could not be generated"],
                       f"Generation failed: {(job.error or 'unknown error')[:200]}")
    headers = {"finish-reason": job.finish_reason or "SUCCESS", "seed": str(job.seed)}
    results = state.results
    media_type = FORMATS[job.result_key.rsplit(".", 1)[-1]]
    if wants_json(request.headers.get("accept")):
        data = await run_in_threadpool(results.read, job.result_key)
        body = {"video": base64.b64encode(data).decode("ascii"),
                "finish_reason": job.finish_reason or "SUCCESS", "seed": job.seed}
        return JSONResponse(body, media_type=f"application/json; type={media_type}", headers=headers)
    path = results.local_path(job.result_key)
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=headers)
    data = await run_in_threadpool(results.read, job.result_key)
    return Response(data, media_type=media_type, headers=headers)


async def cancel(id: str, request: Request, owner: str = Depends(require_owner)):
    if not JOB_ID_RE.match(id):
        raise ApiError.generation_not_found()
    state = request.app.state
    outcome = await run_in_threadpool(state.service.cancel, owner, id, state.settings.result_ttl_s)
    if outcome is None:
        raise ApiError.generation_not_found()
    if outcome == CancelOutcome.FINISHED:
        raise ApiError(409, "generation_finished", ["id: the generation has already finished"],
                       "Too late to cancel: the generation has finished.")
    log.info(kv(request_id=request_id.get(), job=id, event="cancel_requested",
                outcome=outcome.value))
    # "cancelled": done now (queued, or past denoising); "cancelling": it is denoising and
    # stops at its next step.
    return JSONResponse({"id": id, "status": "cancelled" if outcome.done else "cancelling"})


async def events(id: str, request: Request, owner: str = Depends(require_owner)):
    if not JOB_ID_RE.match(id):
        raise ApiError.generation_not_found()
    state = request.app.state
    if await run_in_threadpool(state.service.find, owner, id) is None:
        raise ApiError.generation_not_found()
    try:
        last_seen = int(request.headers.get("last-event-id", "-1"))
    except ValueError:
        last_seen = -1
    return open_stream(request, owner, id, last_seen)      # 429 beyond the key's open streams


POLL_RESPONSES = {
    200: {"description": "The video: MP4 bytes, or JSON with base64 when Accept is application/json.",
          "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}},
                      "application/json": {"schema": VideoGenerationResponse.model_json_schema()}},
          "headers": {"finish-reason": {"required": True, "schema": {
                          "type": "string", "enum": ["SUCCESS", "CONTENT_FILTERED"]}},
                      "seed": {"required": True, "schema": {"type": "string"}}}},
    202: {"model": AsyncGenerationResponse, "description": "Still queued or running."},
    **error_responses(401, 404, 500),
}

for prefix, visible in (("/v2beta/image-to-video", True), ("/v2alpha/generation/image-to-video", False)):
    # Before the catch-all {id:path} routes below, which would swallow "/events".
    router.add_api_route(
        prefix + "/result/{id}/events", events, methods=["GET"], include_in_schema=visible,
        tags=["Extensions"], summary="Live progress as Server-Sent Events (resumable with "
                                     "Last-Event-ID)", response_class=StreamingResponse,
        responses={200: {"description": "events: queued, progress, done, failed, cancelled",
                         "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                   **error_responses(401, 404, 429)})
    router.add_api_route(
        prefix + "/result/{id:path}", cancel, methods=["DELETE"], include_in_schema=visible,
        tags=["Extensions"], summary="Cancel a generation: at once when queued, at the next "
                                     "denoising step when running",
        responses={200: {"description": "Cancelled, or cancelling (running)"},
                   **error_responses(401, 404, 409)})
    router.add_api_route(
        prefix, start, methods=["POST"], include_in_schema=visible,
        operation_id="startImageToVideo" if visible else None, tags=["Image to Video"],
        summary="Start an image-to-video generation",
        response_model=AsyncGenerationResponse, response_model_exclude_none=True,
        responses={200: {"description": "Started; poll the result with this id."},
                   **error_responses(400, 401, 413, 429, 500, 503)},
        openapi_extra={"requestBody": IMAGE_TO_VIDEO_FORM})
    # {id:path} so that ids with slashes or traversal attempts still reach the handler and
    # get the same 404 generation_not_found as any other unknown id.
    router.add_api_route(
        prefix + "/result/{id:path}", result, methods=["GET"], include_in_schema=visible,
        operation_id="getImageToVideoResult" if visible else None, tags=["Image to Video"],
        summary="Get the result of a video generation", response_class=Response,
        responses=POLL_RESPONSES)
