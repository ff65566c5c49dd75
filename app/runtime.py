"""What a running server holds: its workers, whether it is ready, and how it drains."""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

from app.config import Settings
from app.jobs.worker import Worker
from app.logs import kv

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, model_label: str | None, model_warning: str | None):
        self.settings = settings
        self.model_label = model_label
        self.model_warning = model_warning
        self.workers: list[Worker] = []
        self.draining = False
        self.fatal: BaseException | None = None
        self.request_shutdown: Callable[[], None] | None = None

    def readiness(self) -> dict:
        ready = [w for w in self.workers if w.loaded]
        if self.draining or self.fatal:
            status = "draining"
        elif self.settings.workers and not ready:
            status = "starting"           # model still loading
        else:
            status = "ready"
        body = {"status": status, "workers": len(self.workers), "workers_ready": len(ready)}
        if ready:
            body["model"] = getattr(ready[0].generator, "description", None)
        if self.model_warning:
            body["warning"] = self.model_warning
        return body

    def on_fatal(self, exc: BaseException) -> None:
        self.fatal = exc
        self._shutdown()

    def _shutdown(self) -> None:
        if self.request_shutdown:
            self.request_shutdown()
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    def drain(self, grace_s: float) -> None:
        """SIGTERM: refuse new generations (503), let running jobs finish for up to `grace_s`,
        hand what is still running back to the queue, then stop the server."""
        self.draining = True
        busy = sum(w.busy for w in self.workers)
        log.warning(kv(event="draining", running_jobs=busy, grace_s=grace_s))
        for worker in self.workers:
            worker.drain()
        deadline = time.monotonic() + grace_s
        while any(w.busy for w in self.workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        for worker in self.workers:
            worker.stop_soon()            # a job still running stops at its next step
        deadline = time.monotonic() + 5
        while any(w.busy for w in self.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.warning(kv(event="drained", left_running=sum(w.busy for w in self.workers)))
        self._shutdown()

    def stop_now(self, signum: int) -> None:
        """A second SIGTERM/SIGINT while draining: exit at once, with 128 + the signal's
        number (143 for SIGTERM, 130 for SIGINT), leaving each running job `running`, as a
        crash would."""
        busy = sum(w.busy for w in self.workers)
        log.warning(kv(event="stopped_now", signal=signal.Signals(signum).name,
                       left_running=busy))
        for handler in logging.getLogger().handlers:
            handler.flush()
        # os._exit, not sys.exit or a normal shutdown: no thread (a worker finishing its
        # step, a VAE decode, a lifespan waiting on them) may hold the process. The jobs are
        # left to their leases, as after a crash (or re-queued at once when a process with
        # the same worker names starts); the database is crash-safe.
        os._exit(128 + signum)
