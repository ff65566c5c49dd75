"""The one error type of the API and the one place that turns errors into Stability bodies.

Body: {"id": "<32 hex>", "name": "...", "errors": ["field: what is wrong"], "message": "..."}
Routers raise ApiError; nothing else builds error JSON. FastAPI's own {"detail"} bodies and
422s never reach a client.
"""
from __future__ import annotations

import logging
import math
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.logs import kv, request_id

log = logging.getLogger(__name__)

NOT_FOUND_ERROR = "id: the generation either does not exist or has expired."


class ApiError(Exception):
    def __init__(self, status: int, name: str, errors: list[str], message: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(errors[0] if errors else name)
        self.status = status
        self.name = name
        self.errors = errors
        self.message = message or (errors[0] if errors else name)
        self.headers = headers or {}

    @classmethod
    def bad_request(cls, *errors: str) -> "ApiError":
        return cls(400, "bad_request", list(errors), "The request is invalid: " + "; ".join(errors))

    @classmethod
    def unauthorized(cls) -> "ApiError":
        return cls(401, "unauthorized", ["authorization: invalid or missing header value"],
                   "Pass your API key as 'Authorization: Bearer <key>'.")

    @classmethod
    def generation_not_found(cls) -> "ApiError":
        return cls(404, "generation_not_found", [NOT_FOUND_ERROR],
                   "No generation with that id exists for this API key, or it has expired.")

    @classmethod
    def generation_cancelled(cls) -> "ApiError":
        return cls(404, "generation_not_found", ["id: the generation was cancelled"],
                   "This generation was cancelled by its owner.")

    @classmethod
    def payload_too_large(cls, limit_bytes: int) -> "ApiError":
        mib = limit_bytes / (1024 * 1024)
        size = f"{mib:g}MiB" if mib >= 1 else f"{limit_bytes} bytes"
        return cls(413, "payload_too_large", [f"body: payloads cannot be larger than {size} in size"],
                   f"The request body is larger than {size}.")

    @classmethod
    def rate_limited(cls, retry_after: float, what: str) -> "ApiError":
        return cls(429, "rate_limit_exceeded", [f"rate_limit: {what}"],
                   f"Too many requests: {what}. Retry after {math.ceil(retry_after)} s.",
                   headers={"retry-after": str(max(1, math.ceil(retry_after)))})

    @classmethod
    def unavailable(cls, retry_after: float, what: str) -> "ApiError":
        return cls(503, "service_unavailable", [f"server: {what}"],
                   f"The server cannot take new generations now: {what}.",
                   headers={"retry-after": str(max(1, math.ceil(retry_after)))})

    @classmethod
    def internal(cls, detail: str = "an unexpected server error occurred") -> "ApiError":
        return cls(500, "internal_error", [f"server: {detail}"], "The server could not complete the request.")


_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def error_response(err: ApiError) -> JSONResponse:
    # The error id is the request id when that has the hosted API's shape (32 hex, the ids
    # this server makes), so a client's error report leads straight to the server's log line.
    rid = request_id.get()
    body = {"id": rid if _HEX32.match(rid) else uuid.uuid4().hex, "name": err.name,
            "errors": err.errors, "message": err.message}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    log.info(kv(request_id=request_id.get(), event="refused", method=request.method,
                path=request.url.path[:200], status=exc.status, error=exc.name,
                detail="; ".join(exc.errors)[:300]))
    return error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        err = ApiError(404, "not_found", [f"path: no endpoint at {request.url.path[:200]}"])
    elif exc.status_code == 405:
        err = ApiError(405, "method_not_allowed",
                       [f"method: {request.method} is not allowed on {request.url.path[:200]}"],
                       headers=dict(exc.headers or {}))
    elif exc.status_code >= 500:
        err = ApiError.internal()
    else:
        err = ApiError(exc.status_code, "bad_request", [f"request: {exc.detail}"])
    return await _api_error(request, err)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                for e in exc.errors()][:10]
    return await _api_error(request, ApiError.bad_request(*problems))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception(kv(request_id=request_id.get(), event="unhandled_error", method=request.method,
                     path=request.url.path[:200]))
    return error_response(ApiError.internal())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
