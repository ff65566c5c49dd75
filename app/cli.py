"""The `svd-server` command: serve, db upgrade."""
from __future__ import annotations

import argparse
import logging
import sys


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)    # app.main logs the revision


def draining_server(config, runtime, grace_s: float):
    """uvicorn's server, except that the first SIGTERM/SIGINT drains before stopping: new
    generations get 503, /readyz says so, the running job may finish for `grace_s`, then the
    server stops. A second signal stops it at once."""
    import threading

    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if runtime.draining or not runtime.workers or not self.started:
                return super().handle_exit(sig, frame)
            threading.Thread(target=runtime.drain, args=(grace_s,), name="drain",
                             daemon=True).start()

    return _Server(config)


# Settings whose values are never echoed back, not even in an error.
SECRET_SETTINGS = {"SVD_API_KEYS", "SVD_WEBHOOK_SECRET", "SVD_DATABASE_URL"}


def load_settings(**overrides):
    """Settings from the environment, or None after saying clearly what is wrong."""
    from pydantic import ValidationError

    from app.config import Settings
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for e in exc.errors():
            name = "SVD_" + "_".join(str(p) for p in e["loc"]).upper()
            got = "" if name in SECRET_SETTINGS else f" (got {e.get('input')!r})"
            print(f"error: {name}: {e['msg']}{got}", file=sys.stderr)
        return None


def cmd_serve(args) -> int:
    from app.http_guard import uvicorn_config
    from app.main import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.no_worker:
        overrides["workers"] = 0
    settings = load_settings(**overrides)
    if settings is None:
        return 2
    _logging(settings.log_level)
    try:
        app = create_app(settings)
    except Exception as exc:            # ModelUnavailable and friends: say what to do, no trace
        logging.getLogger("svd").critical("cannot start: %s", exc)
        return 2
    config = uvicorn_config(app, settings, log_config=None, access_log=False,
                            timeout_graceful_shutdown=15)
    runtime = app.state.runtime
    server = draining_server(config, runtime, settings.drain_grace_s)
    runtime.request_shutdown = lambda: setattr(server, "should_exit", True)
    logging.getLogger("svd").info("listening on http://%s:%d", settings.host, settings.port)
    server.run()
    if runtime.fatal is not None:
        logging.getLogger("svd").critical("stopped: %s", runtime.fatal)
        return 1
    return 0 if server.started else 1


def cmd_worker(args) -> int:
    from app.worker_process import run_worker, supervise

    settings = load_settings()
    if settings is None:
        return 2
    _logging(settings.log_level)
    if args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        return supervise(gpus, args.metrics_port)
    try:
        return run_worker(settings, args.metrics_port)
    except SystemExit as exc:              # e.g. schema not current: said clearly, exit 2
        logging.getLogger("svd").critical("cannot start: %s", exc)
        return 2
    except Exception as exc:               # ModelUnavailable and friends
        logging.getLogger("svd").critical("cannot start: %s", exc)
        return 2


def cmd_db_upgrade(args) -> int:
    from app.jobs import migrate
    from app.jobs.sql import make_engine
    from app.storage import private_dir

    settings = load_settings()
    if settings is None:
        return 2
    _logging(settings.log_level)
    private_dir(settings.data_dir)
    engine = make_engine(settings.resolved_database_url)
    try:
        print(f"database schema at revision {migrate.upgrade(engine)}")
    except migrate.SchemaTooNew as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svd-server",
                                     description="Self-hosted Stability image-to-video API")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API and (unless --no-worker) a GPU worker")
    serve.add_argument("--host", help="overrides SVD_HOST")
    serve.add_argument("--port", type=int, help="overrides SVD_PORT")
    serve.add_argument("--no-worker", action="store_true", help="API only (SVD_WORKERS=0)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a worker only (no HTTP API), sharing the "
                                           "queue through SVD_DATABASE_URL")
    worker.add_argument("--gpus", help="comma-separated GPU indices: one worker process each")
    worker.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics on this port (with --gpus: port + i "
                             "for the i-th listed GPU)")
    worker.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    from app.client_cli import add_commands       # generate, doctor
    add_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
