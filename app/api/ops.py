"""Operations endpoints: liveness, readiness, metrics. Never rate limited."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.api.generation import DRAINING_RETRY_S
from app.api.schemas import RETRY_AFTER

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="200 while the process lives")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="200 once the model is loaded and a worker runs; 503 before "
                               "that and while draining",
            responses={503: {"description": "Starting (model loading) or draining",
                             "content": {"application/json": {"schema": {"type": "object"}}},
                             "headers": RETRY_AFTER}})
async def readyz(request: Request):
    body = request.app.state.runtime.readiness()
    if body["status"] == "ready":
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"retry-after": str(DRAINING_RETRY_S)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request):
    # Job counts come from the database at scrape time: off the event loop.
    data = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
