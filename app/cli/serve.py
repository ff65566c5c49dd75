"""`svd-server serve`: the API and (unless --no-worker) its workers, draining on SIGTERM."""
from __future__ import annotations

import logging
import threading

from app.config import load_settings
from app.logs import configure_logging

log = logging.getLogger("svd")


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="run the API and (unless --no-worker) a GPU worker")
    serve.add_argument("--host", help="overrides SVD_HOST")
    serve.add_argument("--port", type=int, help="overrides SVD_PORT")
    serve.add_argument("--no-worker", action="store_true", help="API only (SVD_WORKERS=0)")
    serve.set_defaults(func=run)


def draining_server(config, runtime, grace_s: float):
    """uvicorn's server, except that the first SIGTERM/SIGINT drains before stopping: new
    generations get 503, /readyz says so, the running job may finish for `grace_s`, then the
    server stops. A signal while it drains or shuts down (`runtime.draining`) stops the
    process at once (`Runtime.stop_now`: exit 128 + the signal's number), leaving the running
    job `running` for its lease, or for this port's next start, to re-queue. Without workers,
    or before uvicorn has started, uvicorn handles the signal as usual."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if runtime.draining and runtime.workers:
                return runtime.stop_now(sig)     # second signal: now, as a crash would
            if not runtime.workers or not self.started:
                return super().handle_exit(sig, frame)
            threading.Thread(target=runtime.drain, args=(grace_s,), name="drain",
                             daemon=True).start()

    return _Server(config)


def check_database(settings) -> None:
    """PostgreSQL: open the job store once before uvicorn starts, so that a database `serve`
    cannot use (a schema not upgraded or newer than this code, no server) stops it with one
    line and exit 2, like `svd-server worker`, before the port is bound. The app's lifespan
    then opens it for good. (SQLite migrates itself there; nothing to check first.)"""
    if settings.uses_postgres:
        from app.backend import open_job_store
        open_job_store(settings).close()


def run(args) -> int:
    from app.http_guard import uvicorn_config
    from app.main import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.no_worker:
        overrides["workers"] = 0
    settings = load_settings(**overrides)
    if settings is None:
        return 2
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
        check_database(settings)
    # ModelUnavailable, SystemExit("the database schema is not current: ...") and friends:
    # say what to do, no trace
    except (SystemExit, Exception) as exc:
        log.critical("cannot start: %s", exc)
        return 2
    config = uvicorn_config(app, settings, log_config=None, access_log=False,
                            timeout_graceful_shutdown=15)
    runtime = app.state.runtime
    server = draining_server(config, runtime, settings.drain_grace_s)
    runtime.request_shutdown = lambda: setattr(server, "should_exit", True)
    log.info("listening on http://%s:%d", settings.host, settings.port)
    server.run()
    if runtime.fatal is not None:
        log.critical("stopped: %s", runtime.fatal)
        return 1
    return 0 if server.started else 1
