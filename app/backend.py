"""What one process runs behind the API, built in one place for `serve` and for
`svd-server worker`: the job store and the result store (opened the same way everywhere,
so every process sees the same data), the webhook sender, the workers (each first re-queues
the jobs it held when its process last stopped) and, on PostgreSQL, the listener that wakes
them when another process queues a job."""
from __future__ import annotations

import logging
import threading
import time

from app.config import Settings, private_dir
from app.jobs import migrate
from app.jobs.notify import Listener
from app.jobs.outcomes import Outcomes
from app.jobs.sql import SqlJobStore
from app.jobs.worker import Worker, WorkerConfig
from app.logs import kv
from app.results.base import ResultStore
from app.results.database import DatabaseResultStore
from app.results.files import FileResultStore
from app.webhooks import WebhookSender, load_secret

log = logging.getLogger(__name__)


def open_job_store(settings: Settings) -> SqlJobStore:
    """SQLite is migrated on the spot (one machine, one owner). PostgreSQL must already be at
    this code's schema: `svd-server db upgrade` once, then start the processes."""
    private_dir(settings.data_dir)
    store = SqlJobStore.from_url(settings.resolved_database_url)
    if store.engine.dialect.name == "sqlite":
        log.info("database %s at schema revision %s", store.engine.url.database,
                 migrate.upgrade(store.engine))
    else:
        migrate.check_not_newer(store.engine)
        if not migrate.is_current(store.engine):
            store.close()
            raise SystemExit("the database schema is not current: run `svd-server db upgrade`")
    return store


def open_result_store(settings: Settings, engine) -> ResultStore:
    """Files under the data directory, or rows in the jobs' database (`engine`) with
    SVD_RESULT_STORE=database (the default on PostgreSQL); temp files of dead writers go."""
    if settings.results_in_database:
        results: ResultStore = DatabaseResultStore(engine, settings.data_dir / "tmp")
    else:
        results = FileResultStore(settings.results_dir)
    results.remove_stale_temps()
    return results


class Backend:
    """Stores, webhooks and workers of one process. `worker_names` may be empty (an API-only
    process); `generator_factory` loads the model, in each worker's own thread."""

    def __init__(self, settings: Settings, metrics, worker_names: list[str] = (),
                 generator_factory=None, on_fatal=None):
        self.settings = settings
        self.store = open_job_store(settings)
        self.results = open_result_store(settings, self.store.engine)
        self.wake = threading.Event()             # set on submit: idle workers claim at once
        metrics.watch_store(self.store.count)
        self.webhooks = WebhookSender(
            self.store, load_secret(settings.webhook_secret, settings.data_dir), metrics,
            allow=settings.webhook_allow_list, base_delay_s=settings.webhook_retry_base_s)
        self.outcomes = Outcomes(metrics, self.webhooks.submit)
        if settings.fault_crash_at and worker_names:
            log.warning(kv(event="fault_hook_armed", crash_at=settings.fault_crash_at))
        config = WorkerConfig.from_settings(settings)
        now = time.time()
        self.workers: list[Worker] = []
        for name in worker_names:
            n = self.store.requeue_worker(name, settings.max_attempts, now,
                                          now + settings.result_ttl_s)
            if n:
                metrics.worker_restarts.labels("restart").inc(n)
                log.warning(kv(event="requeued_own_jobs", worker=name, jobs=n))
            self.workers.append(Worker(
                name, store=self.store, results=self.results, generator_factory=generator_factory,
                config=config, wake=self.wake, on_fatal=on_fatal, metrics=metrics,
                outcomes=self.outcomes))
        self.listener: Listener | None = None

    def start(self) -> "Backend":
        self.webhooks.start()
        for worker in self.workers:
            worker.start()
        if self.workers and self.settings.uses_postgres:    # wake-ups from other processes
            self.listener = Listener(self.settings.resolved_database_url, self.wake).start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Workers first (a job generating goes back to the queue, videos being finished
        are finished and announced), then the webhook sender, the listener, the store."""
        for worker in self.workers:
            worker.stop_soon()
        for worker in self.workers:
            worker.stop(timeout)
        self.webhooks.stop()
        if self.listener is not None:
            self.listener.stop()
        self.store.close()
