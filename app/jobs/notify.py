"""Wake-ups across processes: PostgreSQL LISTEN/NOTIFY.

Submits send `NOTIFY svd_jobs` in the transaction that inserts the job (app/jobs/sql.py). A
listener thread in each worker process holds one dedicated connection, LISTENs, and sets the
workers' wake event, so an idle worker claims a new job within milliseconds. If the connection
drops, it reconnects with backoff; meanwhile the workers' 1 s polling covers the gap.

Job changes (claimed, progress, finished, cancelled) are sent on a second channel with the
job's id; the event streams' hub (app/api/events.py) listens to that one the same way.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from app.jobs.sql import NOTIFY_CHANNEL
from app.logs import kv

log = logging.getLogger(__name__)


def libpq_url(url: str) -> str:
    """psycopg takes plain libpq URLs, not SQLAlchemy's dialect+driver form."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


class Listener:
    def __init__(self, url: str, wake: threading.Event | None = None,
                 channel: str = NOTIFY_CHANNEL,
                 on_notify: Callable[[str | None], None] | None = None):
        """Sets `wake` and calls `on_notify(payload)` for each notification on `channel`, and
        both (with payload None: anything may have changed) on each (re)connection."""
        self.url = libpq_url(url)
        self.wake = wake
        self.channel = channel
        self.on_notify = on_notify
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)

    def start(self) -> "Listener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        backoff = 0.5
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.connected.set()
                    backoff = 0.5
                    self._poke(None)           # anything that happened while we were away
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._poke(note.payload)
            except Exception as exc:           # noqa: BLE001 - the database went away: retry
                self.connected.clear()
                if self.stopping.is_set():
                    return
                log.warning(kv(event="listen_failed", error=type(exc).__name__, retry_s=backoff))
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _poke(self, payload: str | None) -> None:
        if self.wake is not None:
            self.wake.set()
        if self.on_notify is not None:
            self.on_notify(payload)
