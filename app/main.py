"""The app factory: create_app(settings) wires the store, the service and the workers."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app.api import generation, ops, playground
from app.api.errors import install_error_handlers
from app.api.event_hub import EventHub
from app.api.limits import RateLimiter
from app.api.middleware import RequestMiddleware
from app.config import Settings
from app.content_filter import load_filter
from app.jobs.notify import Listener
from app.jobs.service import JobService
from app.jobs.sweeper import sweep
from app.jobs.worker import Worker, WorkerConfig
from app.keys import KeyRing, load_or_create_key
from app.logs import kv
from app.metrics import Metrics
from app.runtime import Runtime
from app.storage import private_dir
from app.stores import open_job_store, open_result_store
from app.webhooks import WebhookSender, load_secret, resend_webhooks

log = logging.getLogger(__name__)


def worker_names(settings: Settings) -> list[str]:
    """Stable across restarts, so a restarted `serve` knows which running jobs were its own."""
    host = socket.gethostname()
    return [f"{host}:{settings.port}/w{i}" for i in range(settings.workers)]


def default_generator_factory(settings: Settings):
    """Resolve SVD_MODEL now (fails fast with instructions); load it later, in the worker."""
    from inference.loader import load_generator, resolve_model

    choice = resolve_model(settings.model)
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
            await run_in_threadpool(_stop, app, runtime)

    app = FastAPI(title="svd-server: Stable Video Diffusion API", version="v2beta",
                  description="A self-hosted Stability AI image-to-video API.",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None,
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

    store = open_job_store(settings)
    results = open_result_store(settings, store)
    wake = threading.Event()
    metrics = app.state.metrics
    metrics.watch_store(store.count)
    app.state.store = store
    app.state.results = results
    app.state.service = JobService(store, results, wake, settings.max_queued,
                                   settings.max_queued_per_key, settings.max_stored_bytes_per_key)

    now = time.time()
    config = WorkerConfig.from_settings(settings)
    if settings.fault_crash_at:
        log.warning(kv(event="fault_hook_armed", crash_at=settings.fault_crash_at))
    app.state.webhooks = WebhookSender(
        store, load_secret(settings.webhook_secret, settings.data_dir), metrics,
        allow=settings.webhook_allow_list, base_delay_s=settings.webhook_retry_base_s).start()
    for name in worker_names(settings):
        n = store.requeue_worker(name, settings.max_attempts, now, now + settings.result_ttl_s)
        if n:
            metrics.worker_restarts.labels("restart").inc(n)
            log.warning("re-queued %d job(s) that %s held when it stopped", n, name)
        runtime.workers.append(Worker(name, store, results, factory, config, wake,
                                      runtime.on_fatal, metrics, app.state.webhooks.submit))
    for worker in runtime.workers:
        worker.start()
    if runtime.workers and settings.uses_postgres:      # wake-ups from other API processes
        app.state.listener = Listener(settings.resolved_database_url, wake).start()


def _stop(app: FastAPI, runtime: Runtime) -> None:
    listener = getattr(app.state, "listener", None)
    if listener is not None:
        listener.stop()
    webhooks = getattr(app.state, "webhooks", None)
    if webhooks is not None:
        webhooks.stop()
    for worker in runtime.workers:
        worker.stopping.set()
    for worker in runtime.workers:
        worker.stop(timeout=10.0)
    store = getattr(app.state, "store", None)
    if store is not None:
        store.close()


async def _housekeeping(app: FastAPI, settings: Settings) -> None:
    while True:
        try:
            await asyncio.sleep(settings.sweep_interval_s)
            await run_in_threadpool(sweep, app.state.store, app.state.results, settings,
                                    app.state.metrics)
            await run_in_threadpool(resend_webhooks, app.state.store, app.state.webhooks)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("housekeeping failed; will try again")
