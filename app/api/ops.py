"""Operations endpoints: liveness and readiness."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="200 while the process lives")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="200 once the model is loaded and a worker runs")
async def readyz(request: Request):
    runtime = request.app.state.runtime
    body = runtime.readiness()
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)
