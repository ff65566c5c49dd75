"""The app factory: create_app(settings) builds the FastAPI app; its lifespan starts the
backend (stores, webhooks, workers: app/backend.py) and the housekeeping loop."""
from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app.api import docs, generation, ops, playground
from app.api.errors import install_error_handlers
from app.api.event_hub import EventHub
from app.api.limits import RateLimiter
from app.api.middleware import RequestMiddleware
from app.backend import Backend
from app.config import Settings, private_dir
from app.jobs.content_filter import load_filter
from app.jobs.service import JobService
from app.jobs.sweeper import sweep
from app.keys import KeyRing, load_or_create_key
from app.metrics import Metrics
from app.runtime import Runtime
from app.webhooks import resend_webhooks

log = logging.getLogger(__name__)


def worker_names(settings: Settings) -> list[str]:
    """Stable across restarts, so a restarted `serve` knows which running jobs were its own."""
    host = socket.gethostname()
    return [f"{host}:{settings.port}/w{i}" for i in range(settings.workers)]


def default_generator_factory(settings: Settings):
    """Resolve SVD_MODEL now (fails fast with instructions); load it later, in the worker."""
    from inference.loader import load_generator, resolve_model

    choice = resolve_model(settings.model, unet=settings.unet)
    if choice.fallback_reason:
        log.warning("!" * 78)
        log.warning("SVD_MODEL=auto: %s", choice.fallback_reason)
        log.warning("!" * 78)

    def factory():
        return load_generator(choice, **settings.generator_options())
    return factory, choice.label, choice.fallback_reason


def create_app(settings: Settings | None = None, generator_factory: Callable[[], object] | None = None,
               model_label: str | None = None) -> FastAPI:
    """Build the app. Without `generator_factory`, the model comes from SVD_MODEL."""
    settings = settings or Settings()
    load_filter(settings.content_filter)      # a bad SVD_CONTENT_FILTER stops start-up here
    model_warning = None
    if settings.workers and generator_factory is None:
        generator_factory, model_label, model_warning = default_generator_factory(settings)
    runtime = Runtime(settings, model_label, model_warning)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(_start, app, settings, runtime, generator_factory)
        listen = settings.resolved_database_url if settings.uses_postgres else None
        app.state.event_hub = EventHub(app.state.service, settings.max_streams_per_key, listen)
        housekeeping = asyncio.create_task(_housekeeping(app, settings))
        try:
            yield
        finally:
            runtime.draining = True
            housekeeping.cancel()
            await app.state.event_hub.close()
            await run_in_threadpool(_stop, app)

    app = FastAPI(title="svd-server: Stable Video Diffusion API", version="v2beta",
                  description="A self-hosted Stability AI image-to-video API.",
                  lifespan=lifespan, docs_url=None, redoc_url=None,   # /docs: app/api/docs.py
                  openapi_url=None,                                   # so is /openapi.json
                  redirect_slashes=False)    # never a Location built from the Host header
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = metrics
    rate = settings.rate
    app.state.limiter = RateLimiter(*rate) if rate else None
    install_error_handlers(app)
    if settings.cors_origin_list:           # off unless configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type", "accept",
                                          "x-request-id", "stability-client-id",
                                          "stability-client-user-id", "stability-client-version"],
                           expose_headers=["finish-reason", "seed", "x-request-id", "retry-after",
                                           "x-svd-model"])
    app.add_middleware(RequestMiddleware, model_label=lambda: runtime.model_label, metrics=metrics)
    app.include_router(generation.router)
    app.include_router(ops.router)
    app.include_router(playground.router)
    app.include_router(docs.router)
    app.openapi = lambda: openapi_document(app)
    return app


def openapi_document(app: FastAPI) -> dict:
    """FastAPI's document, without the 422 it adds to every route with parameters: this
    server answers bad input with 400 in the Stability error shape, never 422."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


def _start(app: FastAPI, settings: Settings, runtime: Runtime, factory) -> None:
    private_dir(settings.data_dir)
    keys = list(settings.api_keys)
    if not keys:
        keys = [load_or_create_key(settings.data_dir)]
        log.warning("API key: read it from %s", (settings.data_dir / "api_key").resolve())
    app.state.keyring = KeyRing(keys)
    backend = Backend(settings, app.state.metrics, worker_names(settings), factory,
                      runtime.on_fatal)
    app.state.backend = backend
    app.state.store = backend.store
    app.state.results = backend.results
    app.state.service = JobService(backend.store, backend.results, backend.wake,
                                   settings.max_queued, settings.max_queued_per_key,
                                   settings.max_stored_bytes_per_key, backend.outcomes)
    runtime.workers = backend.workers
    backend.start()


def _stop(app: FastAPI) -> None:
    backend = getattr(app.state, "backend", None)
    if backend is not None:
        backend.stop()


async def _housekeeping(app: FastAPI, settings: Settings) -> None:
    while True:
        try:
            await asyncio.sleep(settings.sweep_interval_s)
            await run_in_threadpool(sweep, app.state.store, app.state.results, settings,
                                    app.state.metrics)
            await run_in_threadpool(resend_webhooks, app.state.store, app.state.backend.webhooks)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("housekeeping failed; will try again")
