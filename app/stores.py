"""Opening the job store and the result store from the settings; shared by `serve` and
`worker` so that every process sees the same data the same way."""
from __future__ import annotations

import logging

from app.config import Settings
from app.jobs import migrate
from app.jobs.sql import SqlJobStore
from app.storage import FileResultStore, ResultStore, private_dir

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


def open_result_store(settings: Settings, store: SqlJobStore) -> ResultStore:
    if settings.results_in_database:
        from app.storage_db import DatabaseResultStore
        results: ResultStore = DatabaseResultStore(store.engine, settings.data_dir / "tmp")
    else:
        results = FileResultStore(settings.results_dir)
    results.remove_stale_temps()
    return results
