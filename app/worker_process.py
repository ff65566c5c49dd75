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
import time

from app.config import Settings
from app.jobs.notify import Listener
from app.jobs.worker import Worker, WorkerConfig
from app.logs import kv
from app.metrics import Metrics
from app.runtime import Runtime
from app.stores import open_job_store, open_result_store
from app.webhooks import WebhookSender, load_secret

log = logging.getLogger("svd.worker")
RESTART_BACKOFF_S = 5.0


def default_worker_name() -> str:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
    return f"{socket.gethostname()}/gpu{gpu}"


def run_worker(settings: Settings, metrics_port: int | None = None) -> int:
    """One worker, in this process, until SIGTERM (drains like `serve`) or a fatal error."""
    from app.main import default_generator_factory

    name = settings.worker_name or default_worker_name()
    factory, label, warning = default_generator_factory(settings)
    store = open_job_store(settings)
    results = open_result_store(settings, store)
    metrics = Metrics()
    metrics.watch_store(store.count)
    if metrics_port:
        from prometheus_client import start_http_server
        start_http_server(metrics_port, registry=metrics.registry)
    now = time.time()
    requeued = store.requeue_worker(name, settings.max_attempts, now, now + settings.result_ttl_s)
    if requeued:
        metrics.worker_restarts.labels("restart").inc(requeued)
        log.warning(kv(event="requeued_own_jobs", worker=name, jobs=requeued))

    wake, done = threading.Event(), threading.Event()
    runtime = Runtime(settings, label, warning)
    runtime.request_shutdown = done.set
    webhooks = WebhookSender(store, load_secret(settings.webhook_secret, settings.data_dir),
                             metrics, allow=settings.webhook_allow_list,
                             base_delay_s=settings.webhook_retry_base_s).start()
    worker = Worker(name, store, results, factory, WorkerConfig.from_settings(settings), wake,
                    runtime.on_fatal, metrics, webhooks.submit)
    runtime.workers.append(worker)
    listener = Listener(settings.resolved_database_url, wake).start() if settings.uses_postgres else None

    def on_signal(signum, frame):
        if runtime.draining:
            done.set()                          # second signal: now
        else:
            threading.Thread(target=runtime.drain, args=(settings.drain_grace_s,),
                             daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(kv(event="worker_started", worker=name, model=label, metrics_port=metrics_port))
    worker.start()
    while not done.wait(0.5):
        pass
    worker.stop(timeout=10)
    webhooks.stop()
    if listener:
        listener.stop()
    store.close()
    return 1 if runtime.fatal else 0


def supervise(gpus: list[str], metrics_port: int | None = None) -> int:
    """One `svd-server worker` child per GPU; restart a child that dies; pass SIGTERM on.
    With `metrics_port` N, the worker of the i-th listed GPU serves metrics on N + i."""
    host = socket.gethostname()
    children: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def spawn(gpu: str) -> subprocess.Popen:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu,
               "SVD_WORKER_NAME": f"{host}/gpu{gpu}"}
        argv = ["--metrics-port", str(metrics_port + gpus.index(gpu))] if metrics_port else []
        log.info(kv(event="worker_spawn", gpu=gpu, metrics_port=argv[-1] if argv else None))
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", *argv], env=env)

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
