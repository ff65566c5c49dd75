"""`svd-server worker`: a worker without an HTTP API, one process per GPU.

It shares the queue with the API processes through the database, shows it is alive through
its heartbeats there, and can serve Prometheus metrics on a port of its own. With
`--gpus 0,1,...` it starts one such process per GPU, pinned with CUDA_VISIBLE_DEVICES, and
restarts any that dies.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from app.backend import Backend
from app.child_process import popen_kwargs
from app.config import Settings, load_settings
from app.logs import configure_logging, kv
from app.metrics import Metrics
from app.runtime import Runtime

log = logging.getLogger("svd.worker")
RESTART_BACKOFF_S = 5.0


def add_parser(sub) -> None:
    worker = sub.add_parser("worker", help="run a worker only (no HTTP API), sharing the "
                                           "queue through SVD_DATABASE_URL")
    worker.add_argument("--gpus", help="comma-separated GPU indices: one worker process each")
    worker.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics on this port of SVD_HOST (with --gpus: "
                             "port + i for the i-th listed GPU)")
    worker.set_defaults(func=run)


def default_worker_name() -> str:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
    return f"{socket.gethostname()}/gpu{gpu}"


def run(args) -> int:
    settings = load_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level)
    if args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        return supervise(gpus, args.metrics_port)
    try:
        return run_worker(settings, args.metrics_port)
    except SystemExit as exc:              # e.g. schema not current: said clearly, exit 2
        log.critical("cannot start: %s", exc)
        return 2
    except Exception as exc:               # ModelUnavailable and friends
        log.critical("cannot start: %s", exc)
        return 2


def run_worker(settings: Settings, metrics_port: int | None = None) -> int:
    """One worker, in this process, until SIGTERM (drains like `serve`) or a fatal error."""
    from app.main import default_generator_factory

    name = settings.worker_name or default_worker_name()
    factory, label, warning = default_generator_factory(settings)
    done = threading.Event()
    runtime = Runtime(settings, label, warning)
    runtime.request_shutdown = done.set
    metrics = Metrics()
    backend = Backend(settings, metrics, [name], factory, runtime.on_fatal)
    runtime.workers = backend.workers
    if metrics_port:        # on SVD_HOST, like the API: never 0.0.0.0 unless asked (SECURITY.md)
        from prometheus_client import start_http_server
        start_http_server(metrics_port, addr=settings.host, registry=metrics.registry)

    def on_signal(signum, frame):
        if runtime.draining:
            runtime.stop_now(signum)            # second signal: now, as a crash would
        else:
            threading.Thread(target=runtime.drain, args=(settings.drain_grace_s,),
                             daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(kv(event="worker_started", worker=name, model=label, metrics_port=metrics_port,
                metrics_host=settings.host if metrics_port else None))
    backend.start()
    while not done.wait(0.5):
        pass
    backend.stop()
    return 1 if runtime.fatal else 0


def supervise(gpus: list[str], metrics_port: int | None = None) -> int:
    """One `svd-server worker` child per GPU; restart a child that dies; pass SIGTERM on.
    With `metrics_port` N, the worker of the i-th listed GPU serves metrics on N + i, on the
    SVD_HOST that every child reads from the same environment."""
    host = socket.gethostname()
    children: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def spawn(gpu: str) -> subprocess.Popen:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu,
               "SVD_WORKER_NAME": f"{host}/gpu{gpu}"}
        argv = ["--metrics-port", str(metrics_port + gpus.index(gpu))] if metrics_port else []
        log.info(kv(event="worker_spawn", gpu=gpu, metrics_port=argv[-1] if argv else None))
        # Its own session: a terminal's Ctrl-C (or a kill of our group) reaches the child once,
        # passed on by on_signal, not twice (a second signal stops a worker at once). It gets
        # SIGTERM, and drains, if this process dies.
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", *argv], env=env,
                                **popen_kwargs(death_signal=signal.SIGTERM))

    def on_signal(signum, frame):
        stopping.set()
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for gpu in gpus:
        children[gpu] = spawn(gpu)
    while not stopping.is_set():
        for gpu, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            if code == 2:                       # configuration error: restarting won't help
                log.critical(kv(event="worker_config_error", gpu=gpu))
                on_signal(signal.SIGTERM, None)
                break
            log.error(kv(event="worker_died", gpu=gpu, exit_code=code,
                         restart_in_s=RESTART_BACKOFF_S))
            stopping.wait(RESTART_BACKOFF_S)
            if not stopping.is_set():
                children[gpu] = spawn(gpu)
        stopping.wait(0.5)
    codes = [child.wait() for child in children.values()]
    return max((c for c in codes if c and c > 0), default=0)
